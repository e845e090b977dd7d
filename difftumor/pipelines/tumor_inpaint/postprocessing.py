"""Post-processing of a decoded crop before it is blended (:mod:`.blending`): the decoder's stride pattern."""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage


def suppress_stride_pattern(decoded: torch.Tensor, weights: torch.Tensor, period: tuple[int, int, int]) -> torch.Tensor:
    """:func:`remove_stride_pattern` of every crop of ``decoded`` ``(B, 1, X, Y, Z)`` where its blend ``weights``
    reach, with the decoder's up-sampling ``period`` in crop axes; on the host (SciPy), returned on the input's
    device."""
    on_host, regions = decoded.cpu().numpy(), (weights > 0).cpu().numpy()
    cleaned = [remove_stride_pattern(on_host[i, 0], regions[i, 0], period)[None] for i in range(len(on_host))]
    return torch.from_numpy(np.stack(cleaned)).to(decoded.device)


def remove_stride_pattern(decoded: np.ndarray, region: np.ndarray, period: tuple[int, int, int]) -> np.ndarray:
    """Subtract, inside ``region``, the part of ``decoded``'s high-pass residual that repeats with ``period``.

    A transposed-convolution decoder that up-samples by ``p`` along an axis leaves a pattern of period ``p`` (its
    kernel overlaps unevenly). The residual after a ``p``-voxel box filter (which passes the lattice frequencies
    k/p untouched) is averaged per phase ``(x mod p, y mod p, z mod p)`` over the region, and that mean pattern —
    exactly the residual's energy at the stride's lattice frequencies — is removed. Everything else (the lesion,
    its edges, noise at other frequencies) is kept.
    """
    if not region.any():
        return decoded
    points = np.argwhere(region)
    box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(points.min(0), points.max(0)))
    local = decoded[box].astype(np.float64)
    residual = local - ndimage.uniform_filter(local, size=period, mode="nearest")
    phase = np.zeros(local.shape, dtype=np.int64)
    for axis, (start, step) in enumerate(zip((s.start for s in box), period)):
        shape = [1, 1, 1]
        shape[axis] = local.shape[axis]
        phase = phase * step + ((start + np.arange(local.shape[axis])) % step).reshape(shape)
    inside = region[box]
    size = int(np.prod(period))
    counts = np.bincount(phase[inside], minlength=size)
    means = np.bincount(phase[inside], weights=residual[inside], minlength=size) / np.maximum(counts, 1)
    means[counts > 0] -= residual[inside].mean()
    out = decoded.copy()
    out[box] = np.where(inside, local - means[phase], local).astype(decoded.dtype)
    return out
