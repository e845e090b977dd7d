"""`difftumor train segmentation` on small real CT crops, with on-the-fly synthesis and validation."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from difftumor.cli.main import main as cli
from difftumor.segmentation import SegmentationModel
from tests.helpers.training_data import small_training_set

TINY = [
    "--set",
    "data.crop_size=[32,32,32]",
    "--set",
    "model.backbone_kwargs={channels: [8, 16], strides: [2], num_res_units: 1}",
    "--set",
    "run.log_every=1",
    "--set",
    "optim.warmup_steps=2",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory, data_dir):
    return small_training_set(tmp_path_factory.mktemp("seg_data"))


def _args(data, out, steps, every, *extra):
    return [
        "train",
        "segmentation",
        "--set",
        f"run.output_dir={out}",
        "--set",
        f"data.datalist={data['lits']}",
        "--set",
        f"data.healthy_datalist={data['healthy']}",
        "--set",
        f"run.max_steps={steps}",
        "--set",
        f"run.checkpoint_every={every}",
        *TINY,
        *extra,
    ]


def test_training_with_synthesis_and_validation(data, tmp_path):
    out = tmp_path / "run"
    assert (
        cli(
            _args(
                data,
                out,
                6,
                3,
                "--set",
                f"data.validation_datalist={data['lits']}",
                "--set",
                "validation.every=3",
                "--set",
                "synthesis.prob=1.0",
            )
        )
        == 0
    )
    rows = [line.split(",") for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    totals = [float(v) for _, name, v in rows if name == "synthetic_tumours_total"]
    assert totals == sorted(totals) and totals[-1] >= 1  # running total: healthy crops received tumours
    assert all(0 <= float(v) <= 1 for _, name, v in rows if name == "synthetic_fraction")
    assert len([1 for _, name, _ in rows if name == "val_tumor_dice"]) == 2
    best = json.loads((out / "best_model" / "validation.json").read_text())
    assert 0.0 <= best["tumor_dice"] <= 1.0 and best["step"] in (3, 6)
    model = SegmentationModel.from_pretrained(out / "model")
    assert model.config.organ == "liver" and tuple(model.config.window) == (-175.0, 250.0)
    assert json.loads((out / "model" / "training.json").read_text())["synthesizer"] == "handcrafted"


def test_resume_matches_an_uninterrupted_run(data, tmp_path):
    full, partial = tmp_path / "full", tmp_path / "partial"
    assert cli(_args(data, full, 4, 2)) == 0
    shutil.copytree(full, partial)
    shutil.rmtree(partial / "checkpoints" / "step_00000004")
    shutil.rmtree(partial / "model")
    assert cli([*_args(data, partial, 4, 2), "--resume"]) == 0
    a = load_file(str(full / "model" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(partial / "model" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_without_synthesis_and_unknown_backbone(data, tmp_path, capsys):
    assert cli(_args(data, tmp_path / "plain", 2, 2, "--set", "synthesis.synthesizer=none")) == 0
    assert cli(_args(data, tmp_path / "bad", 2, 2, "--set", "model.backbone=transformer9000")) == 2
    assert "unknown segmentation backbone" in capsys.readouterr().err
