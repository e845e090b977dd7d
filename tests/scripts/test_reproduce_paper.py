"""The paper's protocol script (scripts/reproduce_paper): tiny mode end to end, and the plan it runs at full size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "reproduce_paper" / "reproduce.py"


@pytest.mark.slow
def test_tiny_mode_runs_every_stage_for_every_organ(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    rows = [
        line for line in (tmp_path / "results.md").read_text().splitlines() if line.startswith("| ") and "unet" in line
    ]
    assert len(rows) == 6  # 3 organs x (real, synthetic)
    for organ in ("liver", "pancreas", "kidney"):
        train = {e["id"] for e in json.loads((tmp_path / "data" / f"{organ}_train.json").read_text())["data"]}
        test = {e["id"] for e in json.loads((tmp_path / "data" / f"{organ}_test.json").read_text())["data"]}
        assert train and test and not train & test  # case-level split, nothing of a test case trained on
        assert (tmp_path / f"diffusion_{organ}" / "pipeline" / "model_index.json").exists()
        metrics = json.loads((tmp_path / f"segmentation_{organ}_unet_synthetic" / "metrics.json").read_text())
        assert metrics["summary"]["positive_cases"] >= 1 and metrics["summary"]["negative_cases"] >= 1
    # a second run finds every product and trains nothing
    again = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(tmp_path)], capture_output=True, text=True
    )
    assert again.returncode == 0 and "+ difftumor train" not in again.stdout


def test_dry_run_prints_the_released_plan_under_accelerate(tmp_path):
    root = tmp_path / "data"
    for folder in ("LiTS", "KiTS", "AbdomenAtlas"):
        (root / folder).mkdir(parents=True)
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--data-root", str(root), "--out", str(tmp_path / "out"), "--gpus", "8",
         "--dry-run", "--backbones", "unet", "swinunetr"],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("+ difftumor data prepare lits") for line in lines)
    assert any("note: no tumour dataset for pancreas" in line for line in lines)
    training = [line for line in lines if " train " in line]
    # autoencoder + liver/kidney diffusion + 2 organs x 2 backbones x 2 arms, all released, all on 8 GPUs
    assert len(training) == 1 + 2 + 8
    assert all(
        "accelerate launch --multi_gpu --num_processes 8" in line and "--config released" in line for line in training
    )
