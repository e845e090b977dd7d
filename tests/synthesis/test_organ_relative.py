"""Tumour intensity follows the organ it is painted into; Hu et al.'s recipe stays theirs; settings pass through."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from difftumor.errors import DiffTumorInputError
from difftumor.pipelines.tumor_inpaint.pipeline_tumor_inpaint import remove_stride_pattern
from difftumor.synthesis import get_synthesizer
from difftumor.synthesis.intensity import expected_contrast_hu
from difftumor.synthesis.synthesizers import CropBatch
from difftumor.synthesis.transforms import TumorSynthesisOnBatch


def _crop(organ_hu: float, organ_std: float, seed: int = 0) -> CropBatch:
    rng = np.random.default_rng(seed)
    grid = np.indices((64, 64, 64)) - 31.5
    distance = np.sqrt((grid**2).sum(0))
    organ, tumor = distance <= 30, distance <= 6
    image = np.where(organ, organ_hu, -100.0) + rng.normal(0, organ_std, organ.shape) * organ
    return CropBatch(
        images=torch.from_numpy(image[None, None].astype(np.float32)),
        tumor_masks=torch.from_numpy(tumor[None, None]),
        organ_masks=torch.from_numpy(organ[None, None]),
        organ="liver",
        size_classes=["small"],
        seeds=[seed],
    )


def _drop(synthesizer, batch: CropBatch) -> float:
    out = synthesizer.synthesize(batch).images[0, 0].numpy()
    tumor = batch.tumor_masks[0, 0].numpy()
    return float((batch.images[0, 0].numpy() - out)[tumor].mean())


def test_the_relative_drop_follows_the_organ_and_hu2023_does_not():
    relative, hu2023 = get_synthesizer("handcrafted"), get_synthesizer("handcrafted", recipe="hu2023")
    for organ_hu, organ_std in ((45.0, 12.8), (119.0, 15.2)):
        drops = [_drop(relative, _crop(organ_hu, organ_std, seed)) for seed in range(6)]
        expected = expected_contrast_hu(organ_hu, organ_std)
        assert 0.8 * expected <= np.median(drops) <= 1.2 * expected
    # Hu et al.'s absolute drop: the same on both livers (seeded), and far stronger than a non-contrast lesion.
    dark = [_drop(hu2023, _crop(45.0, 12.8, seed)) for seed in range(6)]
    bright = [_drop(hu2023, _crop(119.0, 15.2, seed)) for seed in range(6)]
    assert np.allclose(dark, bright, atol=1.0) and np.median(dark) > 1.5 * expected_contrast_hu(45.0, 12.8)


def test_the_contrast_rule_reproduces_real_lits_lesions():
    # LiTS 117 upper half, lesions < 20 mm, 1 mm grid: core 119 / 15.2 HU, contrast 41 HU (0.35 of the mean).
    assert expected_contrast_hu(119.0, 15.2) == pytest.approx(41.0, abs=1.0)
    assert expected_contrast_hu(-30.0, 10.0) > 0  # a fatty liver still gets a visible, hypodense lesion


def test_unknown_settings_name_the_accepted_ones():
    with pytest.raises(DiffTumorInputError, match="no setting colour.*recipe"):
        get_synthesizer("handcrafted", colour="red")
    with pytest.raises(DiffTumorInputError, match="recipe"):
        get_synthesizer("handcrafted", recipe="hu2024")


def test_stride_pattern_is_removed_where_blended_and_nothing_else_changes():
    rng = np.random.default_rng(0)
    smooth = np.linspace(-0.5, 0.5, 48)[:, None, None] * np.ones((48, 48, 48))
    dots = np.where(np.indices((48, 48, 48)) % 4 < 2, 1.0, -1.0).prod(0) * 0.05
    decoded = (smooth + dots + rng.normal(0, 0.01, smooth.shape)).astype(np.float32)
    region = np.zeros(decoded.shape, bool)
    region[8:40, 8:40, 8:40] = True
    cleaned = remove_stride_pattern(decoded, region, (4, 4, 4))
    assert np.array_equal(cleaned[~region], decoded[~region])
    residual = cleaned[region] - smooth[region]
    assert np.abs(residual).mean() < 0.2 * np.abs(dots).mean() + 0.01  # the dots are gone, the ramp is kept


def test_segmentation_synthesis_places_one_to_three_tumours_in_candidate_crops():
    grid = np.indices((48, 48, 48)) - 23.5
    organ = (np.sqrt((grid**2).sum(0)) <= 22).astype(np.float32)
    labels = torch.from_numpy(np.stack([organ, organ, np.zeros_like(organ), organ])[:, None])
    images = torch.full(labels.shape, 0.5) * (labels > 0)
    hook = TumorSynthesisOnBatch(synthesizer="handcrafted", organ="liver", prob=1.0, size_mix={"tiny": 1.0})
    from scipy import ndimage

    counts = []
    for step in range(4):
        _, out, _ = hook(images, labels, [10 * step + i for i in range(4)], [True, True, True, True])
        for index in (0, 1, 3):
            counts.append(ndimage.label(out[index, 0].numpy() == 2, np.ones((3, 3, 3)))[1])
        assert not (out[2, 0] == 2).any()  # no organ: not a candidate
    assert set(counts) <= {1, 2, 3} and len(set(counts)) > 1
    assert hook.candidates == 12 and hook.synthesised == 12 and hook.effective_rate == 1.0


def test_medium_tumours_from_an_early_only_pipeline_are_warned_about(tmp_path, capsys):
    import json

    from difftumor.assets import DEMO_CASE
    from difftumor.cli.main import main as cli

    out = tmp_path / "medium"
    code = cli(
        [
            "synthesize",
            str(DEMO_CASE / "ct.nii.gz"),
            "--organ-mask",
            str(DEMO_CASE / "organs.nii.gz"),
            "--organ-label",
            "5",
            "--size",
            "medium",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert "trained on early" in capsys.readouterr().err
    assert any("trained on early" in w for w in json.loads((out / "tumors.json").read_text())["warnings"])
