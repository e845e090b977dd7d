"""A strided transposed convolution as one forward convolution per output phase (sub-pixel form).

``conv_transpose3d`` with stride ``s`` writes output voxel ``s·m + r`` from the kernel taps ``j ≡ r + p (mod s)``
only, so each of the ``∏s`` output phases is an ordinary correlation of the input with those taps, flipped — the same
multiplications as the transposed convolution. On a GPU this matters for reproducibility: cuDNN computes transposed
convolutions with its backward-data kernels, whose fast algorithms accumulate with atomics (two decodes with one seed
differed in 4 % of voxels on an H200), and its deterministic one is slow; the phases run cuDNN's deterministic
forward kernels instead (``bench/bench_gpu.py``). On a CPU oneDNN's own transposed convolution is faster than the
phase form, so only CUDA uses it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: Device types on which :class:`~.autoencoder_blocks_3d.SamePadConvTranspose3d` uses the phase form in inference
#: (``bench/bench_gpu.py`` empties it to time cuDNN's own; tests add ``"cpu"`` to check the dispatch).
DEVICE_TYPES = {"cuda"}


def conv_transpose3d_by_phases(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
) -> torch.Tensor:
    """``F.conv_transpose3d(x, weight, bias, stride, padding)`` (no output padding, dilation or groups), for kernels at
    least as long as the stride (every phase has taps) and outputs at least one stride long.

    The result is contiguous (``NCDHW``) whatever ``x``'s layout: the GPU figures in BENCHMARKS.md were measured so.

    Args:
        x: ``(B, C_in, D, H, W)``.
        weight: ``(C_in, C_out, kD, kH, kW)``, the transposed convolution's layout.
        bias: ``(C_out,)`` or ``None``.
        stride, padding: per axis.

    Returns:
        ``(B, C_out, (D − 1)·s − 2p + k, …)``, like the transposed convolution.
    """
    kernel = weight.shape[2:]
    sizes = [(n - 1) * s - 2 * p + k for n, s, p, k in zip(x.shape[2:], stride, padding, kernel)]
    if any(k < s or size < s for k, s, size in zip(kernel, stride, sizes)):
        raise ValueError(
            f"phase form needs kernel >= stride and output >= stride per axis (kernel {tuple(kernel)}, stride "
            f"{tuple(stride)}, output {tuple(sizes)}): use F.conv_transpose3d"
        )
    out = None
    for phase in itertools.product(*(range(s) for s in stride)):
        taps, windows, outputs = [], [], []
        for r, s, p, k, size in zip(phase, stride, padding, kernel, sizes):
            first = (r + p) % s
            axis_taps = list(range(first, k, s))[::-1]  # flipped: a correlation over increasing input positions
            count = len(range(r, size, s))
            start = (r + p - first) // s - (len(axis_taps) - 1)  # input position of output m = 0's first tap
            taps.append(axis_taps)
            windows.append((start, start + count + len(axis_taps) - 1))
            outputs.append(slice(r, size, s))
        phase_weight = weight[:, :, taps[0]][:, :, :, taps[1]][:, :, :, :, taps[2]].transpose(0, 1)
        phase_out = F.conv3d(_window(x, windows), phase_weight, bias)
        if out is None:  # the convolution's dtype (bfloat16 under autocast)
            out = phase_out.new_empty((x.shape[0], weight.shape[1], *sizes))
        out[(slice(None), slice(None), *outputs)] = phase_out
    return out


def _window(x: torch.Tensor, windows: list[tuple[int, int]]) -> torch.Tensor:
    """``x[..., a:b, c:d, e:f]`` with zeros where a range leaves the tensor (the transposed convolution's border)."""
    pads: list[int] = []
    slices = []
    for (low, high), n in zip(windows, x.shape[2:]):
        slices.append(slice(max(low, 0), min(high, n)))
        pads = [max(-low, 0), max(high - n, 0), *pads]
    inside = x[(slice(None), slice(None), *slices)]
    return F.pad(inside, pads) if any(pads) else inside
