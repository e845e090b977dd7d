"""The pipeline's fast mode: a window that holds every blended voxel, the input kept outside, a tumour close to the
exact path's, bfloat16 only where it is native."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from difftumor import TumorInpaintPipeline
from difftumor.assets import BUNDLED_PIPELINE
from difftumor.pipelines.tumor_inpaint import fast_mode
from difftumor.pipelines.tumor_inpaint.blending import blend_weights, blur_radius, tumor_boxes
from difftumor.pipelines.tumor_inpaint.fast_mode import MIN_WINDOW, STRONG_WEIGHT, WINDOW_MARGIN
from difftumor.windowing import to_window
from tests.conftest import DEVICE


class _Autoencoder:
    """What :meth:`TumorInpaintPipeline._fast_windows` reads of a pipeline: the down-sampling in model axis order."""

    def __init__(self, stride: tuple[int, int, int]):  # crop axes (X, Y, Z) -> model axes (Z, X, Y)
        self.latent_factor = (stride[2], stride[0], stride[1])


def _windows(masks: np.ndarray, sigma: float | list[float], stride: tuple[int, int, int]):
    """The pipeline's windows for ``masks`` ``(B, X, Y, Z)`` blended with blur ``sigma`` (one, or one per crop), and
    the blend weights ``(B, X, Y, Z)``."""
    sigmas = sigma if isinstance(sigma, list) else [sigma] * len(masks)
    weights = blend_weights(torch.from_numpy(masks[:, None]), sigmas)
    return (*TumorInpaintPipeline._fast_windows(_Autoencoder(stride), weights), weights[:, 0].numpy())


def _inside(shape: tuple[int, ...], start: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Bool ``shape`` volume, True on the window."""
    inside = np.zeros(shape, dtype=bool)
    inside[tuple(slice(int(a), int(a + n)) for a, n in zip(start, size))] = True
    return inside


@pytest.mark.parametrize("stride", [(4, 4, 4), (8, 8, 2), (16, 16, 16)])
def test_windows_hold_every_blended_voxel_and_a_margin_on_the_latent_grid(stride):
    rng = np.random.default_rng(0)
    shape = (96, 96, 48)
    for _ in range(60):
        masks = np.zeros((3, *shape), dtype=bool)
        for mask in masks:
            low = rng.integers(0, np.array(shape) - 4)
            extent = rng.integers(1, 24, size=3)
            mask[tuple(slice(int(a), int(a + e)) for a, e in zip(low, extent))] = True
        size, starts, weights = _windows(masks, float(rng.uniform(0, 4)), stride)
        assert all(s % f == 0 and s <= n for s, f, n in zip(size, stride, shape))
        assert all(s >= min(MIN_WINDOW, n) for s, n in zip(size, shape))
        assert (starts % np.array(stride) == 0).all()
        for weight, start in zip(weights, starts):
            assert (start >= 0).all() and (start + np.array(size) <= shape).all()
            inside = _inside(shape, start, size)
            assert not ((weight > 0) & ~inside).any()  # every blended voxel is decoded
            # ... and every voxel of weight >= 1 % is WINDOW_MARGIN voxels from the window's edge (or at the crop's).
            strong = np.argwhere(weight >= STRONG_WEIGHT)
            if not len(strong):  # a tiny tumour under a wide blur: every weight below 1 %, no margin needed
                continue
            need_low = np.maximum(strong.min(0) - WINDOW_MARGIN, 0)
            need_high = np.minimum(strong.max(0) + 1 + WINDOW_MARGIN, shape)
            assert (start <= need_low).all() and (start + np.array(size) >= need_high).all()


def test_the_faint_tail_of_a_wide_blur_may_lie_in_the_margin():
    masks = np.zeros((1, 96, 96, 96), dtype=bool)
    masks[0, 40:52, 42:54, 44:54] = True  # a 12 mm early tumour
    # σ = 4 reaches 16 voxels (weights > 0 on [24, 68) along x) but is >= 1 % only on [31, 61): 8 voxels beyond
    # that, [23, 69) widened to the grid, is 52; y and z fit in the floor. (The margin beyond the whole reach, as
    # before, needed 60 x 64 x 60.)
    size, starts, _ = _windows(masks, 4.0, stride=(4, 4, 4))
    assert size == (52, 48, 48) and starts[0].tolist() == [20, 24, 24]
    # Without blur the weights are the mask: the margin is kept around the tumour itself.
    size, starts, _ = _windows(masks, 0.0, stride=(4, 4, 4))
    assert size == (48, 48, 48) and starts[0].tolist() == [24, 24, 28]


def test_a_thin_tumour_gets_every_blended_voxel_in_its_window():
    """Across a thin tumour the weights stay small (at most 0.039 here) and fall below 1 % within 6 voxels of it, so
    the blend's reach (16 voxels), not the margin beyond the weights >= 1 %, sets the window there."""
    masks = np.zeros((1, 96, 96, 96), dtype=bool)
    masks[0, 48:50, 48:50, 20:70] = True
    size, starts, weights = _windows(masks, 4.0, stride=(4, 4, 4))
    inside = _inside(masks.shape[1:], starts[0], size)
    # x, y: blended on [32, 66) -> [32, 68) = 36 on the grid, within the floor; z: [4, 86) -> [4, 88) = 84.
    assert size == (48, 48, 84) and not ((weights[0] > 0) & ~inside).any()


def test_the_pipeline_places_each_crop_of_a_batch_by_its_own_weights():
    masks = np.zeros((2, 96, 96, 96), dtype=bool)
    masks[1, 5:15, 5:15, 5:15] = True  # crop 0 empty (a centred window), crop 1 in a corner
    size, starts, weights = _windows(masks, [1.0, 3.0], stride=(4, 4, 4))
    assert size == (48, 48, 48) and starts.tolist() == [[24, 24, 24], [0, 0, 0]]
    assert not ((weights[1] > 0) & ~_inside(masks.shape[1:], starts[1], size)).any()


def test_a_large_tumour_gets_a_larger_window():
    masks = np.zeros((1, 96, 96, 96), dtype=bool)
    masks[0, 30:70, 30:50, 40:50] = True
    size, _, _ = _windows(masks, 4.0, stride=(4, 4, 4))
    # Blended [14, 86) x [14, 66) x [24, 66); >= 1 % on [21, 79) x [21, 59) x [31, 59), 8 more voxels beyond each:
    # x [13, 87) -> [12, 88) = 76 on the grid; y [13, 67) -> [12, 68) = 56; z [23, 67) -> [20, 68) = 48.
    assert size == (76, 56, 48)


def test_an_empty_mask_and_a_small_crop_are_handled():
    masks = np.zeros((2, 96, 40, 96), dtype=bool)
    masks[1, 0:5, 0:5, 90:96] = True
    size, starts, _ = _windows(masks, 2.0, stride=(4, 4, 4))
    # The floor (48) on x and z, the whole 40 on y; the second window is pushed inside the crop at its corner.
    assert size == (48, 40, 48) and starts[1].tolist() == [0, 0, 48]
    # A lone voxel under the widest blur: every weight is below 1 % (0.1 %), so the window only holds the blend.
    masks = np.zeros((1, 96, 96, 96), dtype=bool)
    masks[0, 60, 60, 60] = True
    size, starts, weights = _windows(masks, 4.0, stride=(4, 4, 4))
    assert weights.max() < STRONG_WEIGHT and size == (48, 48, 48) and starts[0].tolist() == [40, 40, 40]


def test_bfloat16_only_where_native(monkeypatch):
    assert not fast_mode.native_bfloat16(torch.device("meta"))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert not fast_mode.native_bfloat16(torch.device("cpu"))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not fast_mode.native_bfloat16(torch.device("cpu"))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert fast_mode.native_bfloat16(torch.device("cpu"))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN held to AVX2 kernels: no native bfloat16
    assert not fast_mode.native_bfloat16(torch.device("cpu"))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core_amx")
    assert fast_mode.native_bfloat16(torch.device("cpu"))


def test_bad_fast_settings_are_refused(pipe):
    from difftumor.errors import DiffTumorInputError
    from difftumor.synthesis.synthesizers import DiffusionSynthesizer

    with pytest.raises(DiffTumorInputError, match="fast must be true or false"):
        DiffusionSynthesizer(pipeline=pipe, fast="False")
    crop = np.zeros((32, 32, 32), dtype=np.float32)
    with pytest.raises(DiffTumorInputError, match="blur_sigma must be >= 0"):
        pipe(crop, crop > 0, blur_sigma=-1.0, fast=True)
    with pytest.raises(DiffTumorInputError, match="blur_sigma has 2 values for 1 crops"):  # before sampling
        pipe(crop, crop > 0, blur_sigma=[1.0, 2.0], callback_on_step_end=lambda *_: pytest.fail("sampled"))
    # One σ as a float, a NumPy scalar, a 0-d array or a one-element list: the same blur.
    mask = np.zeros_like(crop, dtype=bool)
    mask[12:18, 12:18, 12:18] = True
    weights = [
        pipe(crop, mask, blur_sigma=sigma).blend_weights for sigma in (1.5, np.float32(1.5), np.array(1.5), [1.5])
    ]
    assert all(torch.equal(weights[0], other) for other in weights[1:]) and (weights[0] > 0).sum() > mask.sum()


@pytest.fixture(scope="module")
def pipe():
    pipeline = TumorInpaintPipeline.from_pretrained(BUNDLED_PIPELINE).to(DEVICE)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _liver_crop(data_dir):
    folder = data_dir / "lits117_upper"
    ct = np.asarray(nib.load(str(folder / "lits117_upper_ct.nii.gz")).dataobj, dtype=np.float32)
    crop = ct[16:112, 16:112, 16:48]
    grid = np.indices(crop.shape)
    mask = ((grid - np.array([48, 50, 16])[:, None, None, None]) ** 2).sum(0) <= 25
    return crop, mask


@pytest.mark.parametrize("bfloat16", [False, True])
def test_fast_mode_keeps_the_input_outside_and_the_tumour_close(pipe, data_dir, monkeypatch, bfloat16):
    monkeypatch.setattr(fast_mode, "native_bfloat16", lambda device: bfloat16)
    crop, mask = _liver_crop(data_dir)
    exact = pipe(crop, mask, generator=torch.Generator().manual_seed(1), blur_sigma=2.0)
    fast = pipe(crop, mask, generator=torch.Generator().manual_seed(1), blur_sigma=2.0, fast=True)
    blended = exact.blend_weights[0, 0] > 0
    assert torch.equal(fast.blend_weights, exact.blend_weights)
    assert torch.equal(fast.images[0, 0][~blended], torch.from_numpy(crop)[~blended])
    # Same noise and model: the latents are identical, only the decode differs (window statistics, bfloat16).
    assert torch.equal(fast.latents, exact.latents)
    tumour = torch.from_numpy(mask)
    healthy = torch.from_numpy(crop)[tumour].mean()
    exact_contrast = float(healthy - exact.images[0, 0][tumour].mean())
    fast_contrast = float(healthy - fast.images[0, 0][tumour].mean())
    assert exact_contrast > 30  # a real tumour to compare
    # The window's GroupNorm statistics make this crop's tumour 3 HU darker (of ~96 HU contrast; six exact draws
    # spread over 19 HU): the contrast is kept within 15 %.
    assert 0.85 < fast_contrast / exact_contrast < 1.15
    assert float((fast.images - exact.images).abs()[0, 0][blended].max()) < 25.0
    # The decoded crop is a decode on a 48 × 48 × 32 window around the tumour (the floor; covering the blend) and the
    # input (window scale) elsewhere.
    decoded_here = fast.decoded[0, 0] != to_window(torch.from_numpy(crop), *pipe.config.window)
    points = decoded_here.nonzero()
    assert (points.max(0).values - points.min(0).values + 1).tolist() == [48, 48, 32]
    assert int(decoded_here.sum()) > 0.99 * 48 * 48 * 32 and not (blended & ~decoded_here).any()


def test_fast_mode_sizes_its_window_for_the_drawn_sigma(pipe, data_dir, monkeypatch):
    """With the blur's σ left to the pipeline, it is drawn before decoding (the same σ as the exact path: equal blend
    weights) and the window reaches as far as that σ's blur, not the bound's."""
    from difftumor.pipelines.tumor_inpaint import pipeline_tumor_inpaint as module

    drawn, placed = [], []
    draw, windows = module.TumorInpaintPipeline._blur_sigmas, module.neighbourhood_windows
    recorded = staticmethod(lambda *a: drawn.append(draw(*a)) or drawn[-1])
    monkeypatch.setattr(module.TumorInpaintPipeline, "_blur_sigmas", recorded)
    monkeypatch.setattr(module, "neighbourhood_windows", lambda *a, **k: placed.append(a[0]) or windows(*a, **k))
    crop, mask = _liver_crop(data_dir)
    exact = pipe(crop, mask, generator=torch.Generator().manual_seed(3))
    generator, after_sampler = torch.Generator().manual_seed(3), []

    def record(pipeline, step, timestep, tensors):  # runs after each sampler step
        after_sampler[:] = [generator.get_state()]
        return tensors

    fast = pipe(crop, mask, generator=generator, fast=True, callback_on_step_end=record)
    assert drawn[0] == drawn[1] and torch.equal(fast.blend_weights, exact.blend_weights)
    # Drawn where the original draws it: the first draw after the last sampler step.
    replay = torch.Generator().set_state(after_sampler[0])
    assert drawn[1][0] == float(torch.rand(1, generator=replay).item() * 4.0)
    # The window is placed around what that σ's blur reaches: the tumour's box widened by its radius.
    box = tumor_boxes(torch.from_numpy(mask)[None])[0]
    radius = blur_radius(drawn[1][0])
    assert len(placed) == 1 and radius < blur_radius(4.0)
    assert np.array_equal(placed[0][0], [np.maximum(box[0] - radius, 0), np.minimum(box[1] + radius, mask.shape)])


def test_reproducible_float32_sets_cuda_flags_only_and_restores_them():
    from difftumor.pipelines.tumor_inpaint.pipeline_tumor_inpaint import reproducible_float32

    cudnn = torch.backends.cudnn
    before = (torch.backends.cuda.matmul.allow_tf32, cudnn.allow_tf32, cudnn.deterministic)
    try:
        torch.backends.cuda.matmul.allow_tf32, cudnn.allow_tf32, cudnn.deterministic = True, True, False
        with reproducible_float32(torch.device("cpu")):
            assert cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32 and not cudnn.deterministic
        with reproducible_float32(torch.device("cuda")):  # flags only: no GPU needed
            assert not cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32 and cudnn.deterministic
        assert cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32 and not cudnn.deterministic
    finally:
        torch.backends.cuda.matmul.allow_tf32, cudnn.allow_tf32, cudnn.deterministic = before
