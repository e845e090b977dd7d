"""The pipeline's opt-in fast mode: decode the tumour's neighbourhood only, in bfloat16 where the hardware has it.

Only voxels within the blending blur of the tumour reach the output (the blend weight is exactly 0 farther away), yet
the exact path decodes the whole crop — the decoder is more than half of the time. The fast mode decodes the latent
cells under a window that holds every blended voxel, with a margin beyond those of weight ≥ 1 % (at least 48 voxels a
side: 12.5 % of a 96³ decode). Its GroupNorm layers then take their statistics over the window instead of the crop,
which is all that moves the tumour in a float32 window (`bench/bench_fast_mode_sources.py` replays the crop's
statistics to show it); bfloat16, where native, adds its rounding. How far that moves a tumour's mean against
re-drawing the sampler's noise, per blur, is `bench/bench_fast_mode.py`'s measurement (BENCHMARKS.md); the realism
figures do not move.

Encoding and denoising are left as they are (whole crop, float32). Run on a 48³ window they paint a different
tumour altogether (tumour mean 10 HU → 50–110 HU with the bundled pipeline: the UNet's normalisation and attention
span the crop), and in bfloat16 the 4-step sampler carries the rounding into other codes (tumour means up to 6 HU
apart); the decoder's bfloat16 error stays a pointwise few HU, so only the decode uses it.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch

#: Voxels kept between the window's edge and every voxel whose blend weight is at least :data:`STRONG_WEIGHT`: the
#: decoder pads by replication at the window's border, which changes the decoded values there (with the crop's own
#: GroupNorm statistics, by up to 230 HU at the edge and 2.6 HU eight voxels in: `bench/bench_fast_mode_sources.py`);
#: two latent cells keep that out of the part of the blend that weighs.
WINDOW_MARGIN = 8
#: Blend weight below which the margin is not kept: the blur's faint tail (for a 12 mm tumour at σ = 4, the outer 7 of
#: its 16 voxels) may lie in the margin, where the border's error reaches the output scaled by its weight (≤ 0.021 HU
#: over 12 LiTS tumours at σ = 4). The stride-pattern removal averages its residual over every blended voxel
#: unweighted, so there the border moves voxels by up to 0.86 HU (tumour means by 0.003 HU). The window still holds
#: every voxel of weight > 0.
STRONG_WEIGHT = 0.01
#: Smallest window side (voxels): the smaller the window, the farther its GroupNorm statistics from the crop's (see
#: above); 48 decodes 0.42 of a 64-voxel floor's volume (an early tumour at σ = 2 with AVX2 kernels, float32 window:
#: 6.1x -> 8.1x the original, `bench/bench_fast_window.py`) for a median change at the level of the sampler's noise.
MIN_WINDOW = 48


def neighbourhood_windows(
    blended: np.ndarray, strong: np.ndarray, shape: tuple[int, int, int], stride: tuple[int, int, int]
) -> tuple[tuple[int, int, int], np.ndarray]:
    """One window size for the batch and each crop's window start.

    Every window holds its crop's blended voxels (weight > 0) and :data:`WINDOW_MARGIN` voxels beyond those of weight
    ≥ :data:`STRONG_WEIGHT` (clipped at the crop's edges), with its start and end on the latent grid.

    Args:
        blended: ``(B, 2, 3)`` ``[low, high)`` voxel boxes of the voxels of blend weight > 0
            (:func:`~.blending.tumor_boxes` of ``weights > 0``; an empty box has ``low = high`` and gets a centred
            window).
        strong: ``(B, 2, 3)`` boxes of the voxels of weight ≥ :data:`STRONG_WEIGHT` (empty when a tiny tumour's
            widest blur keeps every weight below it: then no margin is needed).
        shape: the crops' size ``(X, Y, Z)``.
        stride: the autoencoder's down-sampling per axis: window sizes and starts are multiples of it, so that the
            window is a block of the crop's latent cells (crop sizes are multiples of it too).

    Returns:
        ``(size, starts)``: window size ``(X, Y, Z)`` (at most the crop's) and ``(B, 3)`` int starts.
    """
    shape = np.array(shape)
    step = np.array(stride)
    needed = []  # per crop: the [low, high) voxels that must be decoded, widened to the latent grid
    for (low, high), (strong_low, strong_high) in zip(blended, strong):
        if not (high > low).all():
            low, high = shape // 2, shape // 2
        elif (strong_high > strong_low).all():
            low = np.minimum(low, strong_low - WINDOW_MARGIN)
            high = np.maximum(high, strong_high + WINDOW_MARGIN)
        low = np.maximum(low, 0) // step * step
        high = np.minimum(-(-np.minimum(high, shape) // step) * step, shape)
        needed.append((low, high))
    extent = np.max([high - low for low, high in needed], axis=0)
    floor = -(-MIN_WINDOW // step) * step
    size = np.minimum(np.maximum(extent, floor), shape)
    starts = np.zeros((len(blended), 3), dtype=np.int64)
    for index, (low, high) in enumerate(needed):
        # Centre the window's spare room around what is needed, on the grid, inside the crop.
        spare = (size - (high - low)) // 2 // step * step
        starts[index] = np.clip(low - spare, 0, shape - size)
    return tuple(int(v) for v in size), starts


#: oneDNN ISA limits (``ONEDNN_MAX_CPU_ISA``) that still include native bfloat16 instructions.
_ONEDNN_BF16_ISAS = {
    "ALL",
    "DEFAULT",
    "AVX512_CORE_BF16",
    "AVX512_CORE_AMX",
    "AVX512_CORE_AMX_FP16",
    "AVX10_1_512",
    "AVX10_1_512_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX10_2_512",
    "AVX10_2_512_AMX_2",
}


def native_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 is fast here: a CUDA device of compute capability ≥ 8, or a CPU with AVX512-BF16 or AMX.

    Without native instructions CPUs emulate bfloat16, many times slower than float32, so it is never used there.
    """
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8  # Ampere and later; older GPUs emulate it
    # A CPU limited to AVX2 kernels (``ATEN_CPU_CAPABILITY=avx2`` or ``ONEDNN_MAX_CPU_ISA``) is treated as the
    # machine it stands for.
    if device.type != "cpu" or not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    if isa and isa not in _ONEDNN_BF16_ISAS:
        return False
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check is not None and bool(check()) for check in checks)


def fast_precision(device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast where it is native (:func:`native_bfloat16`), float32 otherwise."""
    if native_bfloat16(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
