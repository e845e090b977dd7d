"""The README's small real-data experiment, shortened (2 steps per model, 32³ crops), end to end."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "experiment_small.sh"


@pytest.mark.slow
def test_shortened_experiment_runs_end_to_end(tmp_path, data_dir):
    environment = {**os.environ, "CROP": "32", "CHANNELS": "8, 16"}
    result = subprocess.run(["bash", str(SCRIPT), str(tmp_path), "2"], env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    for model in ("handcrafted", "diffusion", "real"):
        metrics = json.loads((tmp_path / f"metrics_{model}.json").read_text())
        assert [case["case"] for case in metrics["cases"]] == ["lits117_test"]
        assert metrics["summary"]["positive_cases"] == 1 and metrics["summary"]["lesion_counts"]["all"]["total"] > 5
        info = json.loads((tmp_path / f"model_{model}" / "model" / "training.json").read_text())
        assert info["steps"] == 2
    assert "| tumour DSC (%), global |" in result.stdout
