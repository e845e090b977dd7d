"""Batch mode: a datalist of cases, split across Accelerate processes, finished cases skipped on re-runs."""

from __future__ import annotations

import json
import shutil

import pytest

from difftumor.cli.main import main as cli
from tests.helpers.launch import launch_two_cpu_processes
from tests.helpers.volumes import LIVER, PATIENT_A_CT, PATIENT_A_ORGANS, PATIENT_A_SMALL_CT, PATIENT_A_SMALL_ORGANS


@pytest.fixture()
def datalist(tmp_path, data_dir):
    # Relative paths are resolved against the datalist's folder.
    for source in (PATIENT_A_CT, PATIENT_A_ORGANS, PATIENT_A_SMALL_CT, PATIENT_A_SMALL_ORGANS):
        shutil.copy(source, tmp_path / source.name)
    cases = [
        {"id": "full", "image": PATIENT_A_CT.name, "organ_mask": PATIENT_A_ORGANS.name, "organ_label": LIVER},
        {
            "image": PATIENT_A_SMALL_CT.name,
            "organ_mask": PATIENT_A_SMALL_ORGANS.name,
            "organ_label": LIVER,
            "size": "tiny",
            "count": 2,
        },
    ]
    path = tmp_path / "cases.json"
    path.write_text(json.dumps({"data": cases}))
    return path


def test_datalist_runs_every_case_and_skips_finished_ones(datalist, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["synthesize", "--datalist", str(datalist), "--synthesizer", "handcrafted", "--out", str(out)]
    assert cli(args) == 0
    assert sorted(p.name for p in out.iterdir()) == [".difftumor", "example_ct_sm", "full"]
    assert len(json.loads((out / "example_ct_sm" / "tumors.json").read_text())["tumors"]) == 2
    stamp = (out / "full" / "ct.nii.gz").stat().st_mtime_ns
    capsys.readouterr()
    assert cli(args) == 0
    printed = capsys.readouterr().out
    assert "0 case(s) written" in printed and "2 already finished" in printed
    assert (out / "full" / "ct.nii.gz").stat().st_mtime_ns == stamp
    shutil.rmtree(out / "full")  # an interrupted case leaves no folder: only it is redone
    assert cli(args) == 0
    assert (out / "full" / "tumors.json").exists()


def test_a_rerun_redoes_only_what_its_request_still_matches(datalist, tmp_path, capsys):
    """A finished case is one made from the same inputs and options: an entry that now names another CT, count or
    synthesizer setting is refused (nothing written), or redone with --overwrite."""
    out = tmp_path / "out"
    args = ["synthesize", "--datalist", str(datalist), "--synthesizer", "handcrafted", "--out", str(out)]
    assert cli(args) == 0
    stamp = (out / "full" / "ct.nii.gz").stat().st_mtime_ns
    content = json.loads(datalist.read_text())
    content["data"][1] = {
        **content["data"][1],
        "id": "example_ct_sm",  # the same case name, now another CT
        "image": PATIENT_A_CT.name,
        "organ_mask": PATIENT_A_ORGANS.name,
    }
    content["data"][1]["count"] = 1
    datalist.write_text(json.dumps(content))
    capsys.readouterr()
    assert cli(args) == 2
    error = capsys.readouterr().err
    assert "made from other inputs or options (count, ct, ct_sha256, organ_mask differ)" in error, error
    assert error.strip().count("\n") == 0 and (out / "full" / "ct.nii.gz").stat().st_mtime_ns == stamp
    assert cli([*args, "--overwrite"]) == 0
    assert len(json.loads((out / "example_ct_sm" / "tumors.json").read_text())["tumors"]) == 1
    capsys.readouterr()
    # the same request again: skipped; another synthesizer option: refused
    assert cli(args) == 0 and "2 already finished" in capsys.readouterr().out
    assert cli([*args, "--option", "recipe=hu2023"]) == 2 and "synthesizer differ" in capsys.readouterr().err


def test_every_case_is_checked_before_the_first_is_written(datalist, tmp_path, capsys):
    import nibabel as nib
    import numpy as np

    image = nib.load(str(PATIENT_A_CT))
    four_d = tmp_path / "four_d.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([np.asanyarray(image.dataobj)] * 2, -1), image.affine), str(four_d))
    content = json.loads(datalist.read_text())
    content["data"][1]["image"] = four_d.name
    datalist.write_text(json.dumps(content))
    out = tmp_path / "out"
    args = ["synthesize", "--datalist", str(datalist), "--synthesizer", "handcrafted", "--out", str(out)]
    assert cli(args) == 2
    assert "not a 3-D volume" in capsys.readouterr().err and not out.exists()


@pytest.mark.slow
def test_accelerate_launch_splits_the_cases_across_two_processes(datalist, tmp_path):
    out = tmp_path / "out"
    result = launch_two_cpu_processes(
        [
            "synthesize",
            "--datalist",
            str(datalist),
            "--synthesizer",
            "handcrafted",
            "--out",
            str(out),
        ],
        29561,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "process 0: 1 case(s) written" in result.stdout and "process 1: 1 case(s) written" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == [".difftumor", "example_ct_sm", "full"]


def test_bad_datalists(tmp_path, capsys):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    for path, message in (
        (empty, "has no cases"),
        (broken, "not valid JSON"),
        (tmp_path / "none.json", "does not exist"),
    ):
        assert (
            cli(["synthesize", "--datalist", str(path), "--synthesizer", "handcrafted", "--out", str(tmp_path / "o")])
            == 2
        )
        assert message in capsys.readouterr().err
