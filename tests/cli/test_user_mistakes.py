"""Mistakes users make that used to pass silently or mislead: each gets a clear message (or a warning)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from difftumor.assets import DEMO_CASE
from difftumor.cli.main import main as cli

CT, ORGANS = str(DEMO_CASE / "ct.nii.gz"), str(DEMO_CASE / "organs.nii.gz")
HANDCRAFTED = ["--synthesizer", "handcrafted"]


def _run(arguments, capsys):
    code = cli(arguments)
    captured = capsys.readouterr()
    return code, captured.err


def test_the_spleen_given_as_the_liver_is_warned_about(tmp_path, capsys):
    code, err = _run(["synthesize", CT, "--organ-mask", ORGANS, "--organ-label", "1", *HANDCRAFTED,
                      "--organ", "liver", "--out", str(tmp_path / "o")], capsys)  # fmt: skip
    assert code == 0 and "warning:" in err and "mL, outside" in err and "--organ-label" in err
    warnings = json.loads((tmp_path / "o" / "tumors.json").read_text())["warnings"]
    assert any("mL" in w for w in warnings)


def test_a_mask_of_another_scan_is_warned_about(tmp_path, capsys):
    image = nib.load(ORGANS)
    liver = (np.asanyarray(image.dataobj) == 5).astype(np.uint8)
    moved = image.affine.copy()
    moved[2, 3] -= 150.0  # the same liver, 15 cm lower: in the pelvis of this CT
    nib.save(nib.Nifti1Image(liver, moved), str(tmp_path / "other.nii.gz"))
    code, err = _run(["synthesize", CT, "--organ-mask", str(tmp_path / "other.nii.gz"), *HANDCRAFTED,
                      "--out", str(tmp_path / "o")], capsys)  # fmt: skip
    assert "warning:" in err and "check --organ-label and that the mask belongs to this CT" in err, err
    assert code in (0, 2)


def test_centres_imply_the_count_and_a_contradicting_count_is_refused(tmp_path, capsys):
    centres = ["--center", "60,180,380", "--center", "70,190,400"]
    code, err = _run(["synthesize", CT, "--organ-mask", ORGANS, "--organ-label", "5", *HANDCRAFTED,
                      *centres, "--out", str(tmp_path / "o")], capsys)  # fmt: skip
    assert code == 0, err
    assert len(json.loads((tmp_path / "o" / "tumors.json").read_text())["tumors"]) == 2
    code, err = _run(["synthesize", CT, "--organ-mask", ORGANS, "--organ-label", "5", *HANDCRAFTED,
                      *centres, "--count", "3", "--out", str(tmp_path / "p")], capsys)  # fmt: skip
    assert code == 2 and "pass --count 2" in err


def test_verbose_logs_each_step_and_quiet_prints_nothing(tmp_path, capsys):
    import subprocess
    import sys

    arguments = ["synthesize", CT, "--organ-mask", ORGANS, "--organ-label", "5", *HANDCRAFTED]
    command = [sys.executable, "-m", "difftumor.cli.main", "-v", *arguments, "--out", str(tmp_path / "v")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "INFO: CT " in run.stderr and "INFO: painted 1 tumour(s)" in run.stderr
    assert "DEBUG" not in run.stderr
    code = cli(["--quiet", *arguments, "--out", str(tmp_path / "q")])
    captured = capsys.readouterr()
    assert code == 0 and captured.out == "" and captured.err == "" and (tmp_path / "q" / "tumors.json").is_file()


@pytest.mark.parametrize(
    "command",
    [["synthesize"], ["segment"], ["evaluate"], ["realism"], ["demo"], ["convert"], ["push"], ["train", "autoencoder"],
     ["train", "diffusion"], ["train", "segmentation"], ["data", "prepare"], ["data", "split-lesions"],
     ["reader-study", "make"], ["reader-study", "simulate"], ["reader-study", "score"]],
)  # fmt: skip
def test_every_help_page_has_examples_and_flags_show_no_value(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert cli([*command, "--help"]) == 0
    page = capsys.readouterr().out
    assert "Examples:" in page and f"$ difftumor {' '.join(command)}" in page
    assert "<bool>" not in page


def test_size_help_says_how_a_diameter_is_drawn(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    cli(["synthesize", "--help"])
    page = " ".join(capsys.readouterr().out.split())
    assert "±15 %" in page and "12-17.5 mm" in page and "difftumor[totalsegmentator]" in page


def test_organ_label_list_says_how_many_and_elides(tmp_path, capsys):
    code, err = _run(["synthesize", CT, "--organ-mask", ORGANS, "--organ-label", "250", *HANDCRAFTED,
                      "--out", str(tmp_path / "o")], capsys)  # fmt: skip
    assert code == 2 and "labels present (61):" in err and "…" in err


def test_impossible_counts_fail_at_once_and_first_tumours_are_not_another(tmp_path, capsys):
    code, err = _run(["synthesize", CT, "--organ-mask", ORGANS, "--organ-label", "5", *HANDCRAFTED,
                      "--count", "60", "--size", "large", "--out", str(tmp_path / "o")], capsys)  # fmt: skip
    assert code == 2 and "need at least" in err and "more than half of the liver" in err
    code, err = _run(["synthesize", CT, "--organ-mask", ORGANS, "--organ-label", "7", "--organ", "pancreas",
                      *HANDCRAFTED, "--size", "60", "--out", str(tmp_path / "o")], capsys)  # fmt: skip
    assert code == 2 and ("cannot hold a 60 mm tumour" in err or "more than half of the pancreas" in err), err


def test_a_missing_pipeline_folder_is_called_a_missing_folder(tmp_path, capsys):
    code, err = _run(["synthesize", CT, "--organ-mask", ORGANS, "--organ-label", "5",
                      "--pipeline", "liver-early/", "--out", str(tmp_path / "o")], capsys)  # fmt: skip
    assert code == 2 and "folder liver-early/ does not exist" in err
    settings = ["synthesis.synthesizer=diffusion", "synthesis.pipeline=liver-early/"]
    code, err = _run(["train", "segmentation", "--set", f"data.healthy_datalist={tmp_path / 'x.json'}",
                      "--set", settings[0], "--set", settings[1]], capsys)  # fmt: skip
    assert code == 2 and "synthesis.pipeline folder liver-early/ does not exist" in err


@pytest.fixture()
def truth_with_midlate(tmp_path):
    truth = np.zeros((30, 30, 30), np.uint8)
    truth[5:25, 5:25, 5:25] = 1
    truth[8:12, 8:12, 8:12] = 2
    truth[15:22, 15:22, 15:22] = 3  # data prepare --early-max-diameter-mm: mid/late tumour
    for folder in ("truth", "pred"):
        (tmp_path / folder).mkdir()
        nib.save(
            nib.Nifti1Image(np.where(truth == 3, 2, truth).astype(np.uint8), np.eye(4)),
            str(tmp_path / folder / "c.nii.gz"),
        )
    nib.save(nib.Nifti1Image(truth, np.eye(4)), str(tmp_path / "truth" / "c.nii.gz"))
    return tmp_path


def test_evaluate_refuses_labels_its_scheme_does_not_map_and_takes_files(truth_with_midlate, capsys):
    folder = truth_with_midlate
    arguments = ["evaluate", "--pred", str(folder / "pred"), "--truth", str(folder / "truth")]
    code, err = _run([*arguments, "--truth-labels", "lits", "--out", str(folder / "m.json")], capsys)
    assert code == 2 and "holds label(s) [3]" in err and "--truth-labels internal" in err
    code, err = _run([*arguments, "--truth-labels", "internal", "--out", str(folder / "m.json")], capsys)
    assert code == 0 and json.loads((folder / "m.json").read_text())["cases"][0]["tumor_dsc"] == pytest.approx(1.0)
    code, err = _run(["evaluate", "--pred", str(folder / "pred" / "c.nii.gz"), "--truth",
                      str(folder / "truth" / "c.nii.gz"), "--out", str(folder / "one.json")], capsys)  # fmt: skip
    assert code == 0, err
