"""Organ masks from other tools: label schemes (`--mask-labels`) on TotalSegmentator's real output, and
`--organ-mask auto` (TotalSegmentator run for the user) with its refusals."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from difftumor.cli.main import main as cli
from tests.helpers.volumes import PATIENT_A_CT, PATIENT_A_ORGANS

# TotalSegmentator's own public test files (tests/data/README.md): a CT and the multi-label map it predicted.
TOTALSEG = Path(__file__).resolve().parents[1] / "data" / "totalseg_example"
CT, SEG = str(TOTALSEG / "example_ct_sm.nii.gz"), str(TOTALSEG / "example_seg.nii.gz")
HANDCRAFTED = ["--synthesizer", "handcrafted", "--size", "small", "--count", "1"]


def _tumour_labels_in_mask(out, mask=SEG):
    label = np.asarray(nib.load(str(out / "label.nii.gz")).dataobj)
    manifest = json.loads((out / "tumors.json").read_text())
    tumour = label == manifest["tumor_label"]
    return np.unique(np.asarray(nib.load(mask).dataobj)[tumour]).tolist(), manifest


def test_a_scheme_finds_the_organ_by_name_in_a_totalsegmentator_map(tmp_path, capsys):
    code = cli(["synthesize", CT, "--organ-mask", SEG, "--mask-labels", "totalsegmentator", "--organ", "liver",
                *HANDCRAFTED, "--out", str(tmp_path / "liver")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    inside, manifest = _tumour_labels_in_mask(tmp_path / "liver")
    assert manifest["input"]["organ_label"] == 5 and inside == [5]  # TotalSegmentator's liver

    code = cli(["synthesize", CT, "--organ-mask", SEG, "--mask-labels", "totalsegmentator", "--organ", "kidney",
                *HANDCRAFTED, "--out", str(tmp_path / "k")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "2 (kidney_right), 3 (kidney_left)" in err and "--organ-label" in err
    assert err.strip().count("\n") == 0 and not (tmp_path / "k").exists()
    code = cli(["synthesize", CT, "--organ-mask", SEG, "--mask-labels", "totalsegmentator", "--organ", "kidney",
                "--organ-label", "3", *HANDCRAFTED, "--out", str(tmp_path / "left")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    assert _tumour_labels_in_mask(tmp_path / "left")[0] == [3]

    code = cli(["synthesize", CT, "--organ-mask", SEG, "--mask-labels", "totalsegmentator", "--organ", "liver",
                "--organ-label", "7", *HANDCRAFTED, "--out", str(tmp_path / "x")])  # fmt: skip
    assert code == 2 and "--organ-label 7 is not the liver" in capsys.readouterr().err
    code = cli(["synthesize", CT, "--organ-mask", SEG, "--mask-labels", "nnunet", *HANDCRAFTED,
                "--out", str(tmp_path / "x")])  # fmt: skip
    assert code == 2 and "unknown mask label scheme 'nnunet'" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("totalsegmentator") is not None, reason="TotalSegmentator is installed")
def test_auto_masks_without_totalsegmentator_say_how_to_get_it(tmp_path, capsys):
    code = cli(["synthesize", CT, "--organ-mask", "auto", *HANDCRAFTED, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'difftumor[totalsegmentator]'" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "o").exists()


def test_auto_masks_without_weights_are_refused_before_any_download(tmp_path, capsys, monkeypatch):
    """TotalSegmentator installed, its weights absent (a machine without network): refused, naming the download."""
    import difftumor.data.totalsegmentator as totalseg

    (tmp_path / "weights" / "Dataset298_TotalSegmentator_total_6mm_1559subj").mkdir(parents=True)
    monkeypatch.setattr(totalseg, "installed_version", lambda: "2.18.0")
    monkeypatch.setattr(totalseg, "weights_folder", lambda: tmp_path / "weights")
    code = cli(["synthesize", CT, "--organ-mask", "auto", *HANDCRAFTED, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "weights for task 297 are not in" in err and "totalseg_download_weights -t total_fast" in err
    assert not (tmp_path / "o").exists()
    assert totalseg.missing_tasks(tmp_path / "weights") == [297]


def _weights_present() -> bool:
    if importlib.util.find_spec("totalsegmentator") is None:
        return False
    from difftumor.data.totalsegmentator import missing_tasks, weights_folder

    return not missing_tasks(weights_folder())


@pytest.mark.skipif(not _weights_present(), reason="TotalSegmentator or its fast weights are not on this machine")
def test_auto_masks_segment_the_liver_and_record_the_model(tmp_path, capsys):
    code = cli(["synthesize", CT, "--organ-mask", "auto", *HANDCRAFTED, "--out", str(tmp_path / "o")])
    assert code == 0, capsys.readouterr().err
    mask = tmp_path / "o" / "organ_mask.nii.gz"
    inside, manifest = _tumour_labels_in_mask(tmp_path / "o", str(mask))
    assert inside == [5] and manifest["input"]["organ_mask_model"]["model"] == "TotalSegmentator"
    liver = np.asarray(nib.load(str(mask)).dataobj) == 5
    reference = np.asarray(nib.load(SEG).dataobj) == 5
    assert 2 * (liver & reference).sum() / (liver.sum() + reference.sum()) > 0.8  # agrees with its 1.5 mm model


def test_a_pipeline_trained_on_the_liver_warns_when_asked_for_another_organ(tmp_path, capsys):
    code = cli(["synthesize", str(PATIENT_A_CT), "--organ-mask", str(PATIENT_A_ORGANS), "--mask-labels",
                "totalsegmentator", "--organ", "pancreas", "--size", "tiny", "--out", str(tmp_path / "p")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and "trained on liver tumours; pancreas tumours" in err
    assert any("trained on liver" in w for w in json.loads((tmp_path / "p" / "tumors.json").read_text())["warnings"])
