"""The leak-free experiment (docs/experiment.md), shortened (2 steps per model, 32³ crops, one seed), end to end."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.mark.slow
def test_shortened_experiment_runs_every_arm_keeps_its_results_and_resumes(tmp_path):
    results = tmp_path / "results"
    environment = {
        **os.environ, "CROP": "32", "CHANNELS": "8, 16", "OVERLAP": "0", "BANK_SIZE": "2", "RESULTS": str(results)
    }
    command = ["bash", str(SCRIPTS / "experiment_small.sh"), str(tmp_path / "work"), "2", "0"]
    result = subprocess.run(command, env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    split = json.loads((tmp_path / "work" / "split" / "split.json").read_text())
    # the split the bundled pipeline was trained on (its model card: 24 training lesions, seed 0, 10 mm margin)
    assert split["lesions"] == {"train": 24, "test": 26, "dropped": 1}
    for arm in ("real", "hu2023", "relative", "diffusion", "none"):
        kept = results / f"{arm}_seed0"
        for iou in ("0.1", "0.5"):
            metrics = json.loads((kept / f"metrics_iou{iou}.json").read_text())
            assert metrics["iou_threshold"] == float(iou)
            cases = {case["case"]: case for case in metrics["cases"]}
            assert set(cases) == {"lits117", "patient_a"}
            # the test case holds exactly the test side's lesions; patient A none
            assert cases["lits117"]["true_lesions"] == split["lesions"]["test"] and not cases["patient_a"]["has_tumor"]
        run = json.loads((kept / "run.json").read_text())
        assert run["arm"] == arm and "steps=2 " in run["settings"] and run["seconds_per_step_mean"] > 0
        info = json.loads((tmp_path / "work" / "runs" / f"{arm}_seed0" / "model" / "training.json").read_text())
        assert info["steps"] == 2
    summary = json.loads((results / "results.json").read_text())
    assert set(summary) == {"real", "hu2023", "relative", "diffusion", "none"}
    assert summary["real"]["sensitivity"]["0.1"]["all"]["lesions"] == split["lesions"]["test"]
    table = (results / "results.md").read_text()
    assert "| real tumours (training side) |" in table and "| 75.6 | 62.3±28.3 |" in table  # the paper beside

    # A later sitting keeps every finished run (no training, no segmentation) and rebuilds the table.
    again = subprocess.run(command, env=environment, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("kept: ") == 5 and "train segmentation" not in again.stderr


def test_experiment_table_pools_seeds_over_lesions_not_runs():
    import sys

    sys.path.insert(0, str(SCRIPTS))
    from experiment_table import mcnemar_p, pooled_sensitivity

    # 3 seeds x 10 lesions, 5 detections each: 50 %, and the interval is that of 5/10, not of 15/30
    seeds = [[True] * 5 + [False] * 5] * 3
    pooled = pooled_sensitivity(seeds, [True] * 10)
    assert pooled["value"] == 0.5 and pooled["per_seed"] == [5, 5, 5]
    assert pooled["ci95"][0] == pytest.approx(0.2366, abs=1e-3) and pooled["ci95"][1] == pytest.approx(0.7634, abs=1e-3)
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(6, 0) == pytest.approx(2 / 64)
