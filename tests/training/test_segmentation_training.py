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


def test_resume_with_a_synthesis_bank_and_the_experiment_augmentations_matches_an_uninterrupted_run(data, tmp_path):
    extra = [
        "--set", "synthesis.prob=1.0", "--set", "synthesis.bank_size=2", "--set", "synthesis.bank_reuse=2",
        "--set", "data.tumor_crop_fraction=0.5", "--set", "data.affine_prob=0.5", "--set", "data.phase_shift_prob=0.5",
    ]  # fmt: skip
    full, partial = tmp_path / "full", tmp_path / "partial"
    assert cli(_args(data, full, 6, 3, *extra)) == 0
    rows = [line.split(",") for line in (full / "metrics.csv").read_text().splitlines()[1:]]
    assert any(name == "painted_fraction" and float(v) < 1 for _, name, v in rows)  # the bank served some crops
    assert (full / "checkpoints" / "step_00000003" / "state_synthesis_bank.safetensors").is_file()
    shutil.copytree(full, partial)
    shutil.rmtree(partial / "checkpoints" / "step_00000006")
    shutil.rmtree(partial / "model")
    assert cli([*_args(data, partial, 6, 3, *extra), "--resume"]) == 0
    a = load_file(str(full / "model" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(partial / "model" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_synthesis_on_a_grid_other_than_1_mm_is_refused(data, tmp_path, capsys):
    assert cli(_args(data, tmp_path / "coarse", 2, 2, "--set", "data.spacing=1.5")) == 2
    err = capsys.readouterr().err
    assert "paints tumours sized on a 1 mm grid" in err and "set data.spacing 1.0" in err
    assert not (tmp_path / "coarse").exists()


def test_tumour_centred_crops_follow_the_stated_fraction(data):
    """positive 0.5 x tumour 0.5: a quarter of the crops of a case with tumours are centred on a tumour voxel (their
    central 4³ holds tumour whatever the flips; other crops by chance); a case without tumours centres half of its
    crops on the organ."""
    import numpy as np

    from difftumor.training.data import read_cases
    from difftumor.training.segmentation import SegmentationConfig, _augment, _preprocess

    def tumour_share(fraction: float, label_max: int = 2) -> tuple[float, float]:
        config = SegmentationConfig()
        config.data.crop_size = (16, 16, 16)
        config.data.tumor_crop_fraction = fraction
        case = read_cases(data["lits"], require_label=True)[0]
        prepared = _preprocess(config)({"image": case["image"], "label": case["label"]})
        if label_max == 1:  # the same CT as a healthy case: its own class indices, no tumour class
            prepared = _preprocess(config).transforms[-1](dict(prepared, label=torch.clamp(prepared["label"], max=1)))
        prepared["healthy"] = False
        transform, rng = _augment(config), np.random.default_rng(0)
        crops = [transform(prepared, rng)["label"] for _ in range(400)]
        centres = [c[0, 6:10, 6:10, 6:10] for c in crops]
        return sum(bool((c == 2).any()) for c in centres) / 400, sum(bool((c == 1).any()) for c in centres) / 400

    with_tumour_crops, _ = tumour_share(0.5)
    by_chance, _ = tumour_share(0.0)
    # 0.25 expected less the tumours within 8 voxels of the volume edge, whose crops MONAI shifts inwards
    assert with_tumour_crops - by_chance >= 0.15 and with_tumour_crops >= 0.18, (with_tumour_crops, by_chance)
    _, organ = tumour_share(0.5, label_max=1)
    assert organ >= 0.45  # half centred on the organ, some more by chance
