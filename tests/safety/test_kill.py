"""kill -9 at spread-out moments of `synthesize --overwrite`: the output folder always holds the complete old or the
complete new result, never a mix, and what a killed process leaves hidden beside it is removed by the next run."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from difftumor.atomic import MARKER
from difftumor.synthesis.outputs import OUTPUT_FILES
from tests.safety.test_user_data import _liver_crop, _save, snapshot

#: End to end and minutes long: the slow tier (`python -m pytest -m slow`, run by CI too).
pytestmark = pytest.mark.slow

TRIALS = 10


def _command(case: Path, out: Path, seed: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "difftumor.cli.main",
        "synthesize",
        str(case / "ct.nii.gz"),
        "--organ-mask",
        str(case / "liver.nii.gz"),
        "--synthesizer",
        "handcrafted",
        "--count",
        "2",
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--overwrite",
    ]


def _run(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def test_kill_during_overwrite_leaves_old_or_new_never_a_mix(tmp_path):
    case = tmp_path / "case"
    case.mkdir()
    ct, liver, affine = _liver_crop()
    _save(ct, affine, case / "ct.nii.gz")
    _save(liver, affine, case / "liver.nii.gz")
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"

    _run(_command(case, tmp_path / "new", seed=1))
    new = snapshot(tmp_path / "new")
    duration = _run(_command(case, tmp_path / "old", seed=0))
    old = snapshot(tmp_path / "old")
    assert old != new and set(old) == set(new) == {MARKER, *OUTPUT_FILES}

    rng = random.Random(0)
    outcomes = []
    for trial in range(TRIALS):
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(tmp_path / "old", out)
        process = subprocess.Popen(_command(case, out, seed=1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(duration * (trial + rng.random()) / TRIALS)  # one moment in each tenth of a run
        process.kill()
        process.wait()
        state = snapshot(out)
        assert state in (old, new), f"trial {trial}: a mix of old and new"
        outcomes.append("new" if state == new else "old")
        leftovers = [p.name for p in work.iterdir() if p.name != "out"]
        assert all(f"difftumor-{process.pid}-" in name for name in leftovers), leftovers

    # The next run removes whatever the killed processes left beside the output.
    _run(_command(case, out, seed=1))
    assert snapshot(out) == new
    assert [p.name for p in work.iterdir()] == ["out"]
    assert "old" in outcomes, outcomes  # the kills did land while the old result was still in place
