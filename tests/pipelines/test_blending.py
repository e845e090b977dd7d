"""The blend weights are SciPy's Gaussian filter of the mask, computed in torch on the tumour's box."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from difftumor.pipelines.tumor_inpaint.blending import blend_weights, blur_radius, gaussian_blur_mask, tumor_boxes
from tests.conftest import DEVICE


def _random_mask(rng: np.random.Generator) -> np.ndarray:
    shape = tuple(int(n) for n in rng.integers(3, 40, 3))
    mask = np.zeros(shape, dtype=bool)
    low = [int(rng.integers(0, n)) for n in shape]
    high = [min(n, lo + int(rng.integers(1, 9))) for lo, n in zip(low, shape)]
    mask[low[0] : high[0], low[1] : high[1], low[2] : high[2]] = True
    return mask & (rng.random(shape) < 0.7) if rng.random() < 0.3 else mask


@pytest.mark.parametrize("seed", range(4))
def test_equals_scipy_gaussian_filter_with_its_reflect_boundary_and_truncation(seed):
    """Masks at and away from the edges, σ from 0 to 4 (radii up to 16, longer than some axes: repeated reflection)."""
    rng = np.random.default_rng(seed)
    for _ in range(40):
        mask = _random_mask(rng)
        sigma = float(rng.choice([0.0, 0.3, 1.0, 2.5, 4.0, rng.uniform(0, 4)]))
        expected = ndimage.gaussian_filter(mask.astype(np.float64), sigma) if sigma > 0 else mask.astype(np.float64)
        ours = gaussian_blur_mask(torch.from_numpy(mask).to(DEVICE), sigma).cpu().numpy()
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-15)
        # Exactly zero where SciPy's is: the blend keeps those voxels' input bit for bit.
        np.testing.assert_array_equal(ours > 0, expected > 0)


def test_reach_is_the_radius_and_weights_are_batched_per_sigma():
    masks = torch.zeros(2, 1, 48, 48, 48, dtype=torch.bool, device=DEVICE)
    masks[:, :, 20:24, 20:24, 20:24] = True
    weights = blend_weights(masks, [1.0, 3.0])
    assert weights.shape == masks.shape and weights.dtype == torch.float64 and weights.device == masks.device
    for index, sigma in enumerate((1.0, 3.0)):
        support = (weights[index, 0] > 0).nonzero()
        assert support.min().item() == 20 - blur_radius(sigma) and support.max().item() == 23 + blur_radius(sigma)
    assert torch.equal(blend_weights(masks, [0.0, 0.0]), masks.double())


def test_boxes_are_the_masks_bounding_boxes_and_empty_masks_are_marked():
    masks = torch.zeros(3, 20, 30, 40, dtype=torch.bool, device=DEVICE)
    masks[0, 3:7, 0:30, 39] = True
    masks[1, 19, 5, 6] = True
    boxes = tumor_boxes(masks)
    assert boxes.tolist() == [[[3, 0, 39], [7, 30, 40]], [[19, 5, 6], [20, 6, 7]], [[0, 0, 0], [0, 0, 0]]]


def test_the_callers_mask_is_left_as_it_was():
    mask = torch.zeros(16, 16, 16, dtype=torch.float64, device=DEVICE)
    mask[6:9, 6:9, 6:9] = 1
    before = mask.clone()
    assert not torch.equal(gaussian_blur_mask(mask, 2.0), before)
    assert torch.equal(mask, before)
    assert torch.equal(gaussian_blur_mask(mask, 1e-16), before)  # SciPy leaves σ ≤ 1e-15 unfiltered
