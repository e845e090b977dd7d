"""GroupNorm that stays accurate in the channels-last layout the 3-D models run in on CPU.

PyTorch's CPU GroupNorm kernel for channels-last tensors accumulates Σx and Σx² naively in float32 over every voxel
of a group: at 96³ its output is 1e-3 to 4e-3 away from a float64 reference, while the contiguous kernel stays within
2e-6 (measured on torch 2.13, AVX2 and AVX-512). The decoder stacks several such layers, so the released-size
decode drifted 6.6e-4 from the original. Here the statistics come from PyTorch's cascade-summed reductions over the
``(voxels, channels)`` view of the same memory, combined per group in float64, and the normalisation is one fused
multiply-add that keeps the layout: about 2× the native channels-last kernel's time, without the transposes that
running it contiguous would cost (4–6×; see BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


def uses_accurate_group_norm(x: torch.Tensor) -> bool:
    """Whether :class:`GroupNorm` takes the accurate path for ``x`` (channels-last float32 on CPU)."""
    channels_last = x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    return _ACCURATE and channels_last and x.device.type == "cpu" and x.dtype == torch.float32


def group_norm_scale_shift(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    modulation: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` of shape ``(B, C, 1, 1, 1)`` with which GroupNorm of a channels-last ``x`` ``(B, C, D, H, W)``
    is ``x · scale + shift``; the statistics are computed accurately (see the module docstring).

    ``modulation``: ``(m_scale, m_shift)`` with ``B`` or 1 rows of ``C`` values each (any shape of that size per row,
    e.g. ``(B, 1, 1, 1, C)``), folded in so that ``x · scale + shift`` is ``GroupNorm(x) · (m_scale + 1) + m_shift``.
    """
    batch, channels = x.shape[:2]
    per_group = channels // num_groups
    tokens = x.permute(0, 2, 3, 4, 1).reshape(batch, -1, channels)  # a view of the same memory
    # Σx and Σx² per slab (each slab read once while in cache, no 96³ temporary), combined in float64.
    total = torch.zeros(batch, channels, dtype=torch.float64, device=x.device)
    square = torch.zeros_like(total)
    for slab in tokens.split(_STATISTICS_SLAB, dim=1):
        total += slab.sum(1)
        square += (slab * slab).sum(1)
    count = tokens.shape[1] * per_group
    group_mean = total.view(batch, num_groups, per_group).sum(-1, keepdim=True) / count
    group_square = square.view(batch, num_groups, per_group).sum(-1, keepdim=True) / count
    rstd = torch.rsqrt((group_square - group_mean.square()).clamp_min(0.0) + eps)
    scale = rstd.expand(batch, num_groups, per_group)
    shift = -group_mean * rstd
    if weight is not None:
        scale = scale * weight.double().view(1, num_groups, per_group)
        shift = shift * weight.double().view(1, num_groups, per_group)
    if bias is not None:
        shift = shift + bias.double().view(1, num_groups, per_group)
    view = (batch, channels, 1, 1, 1)
    scale, shift = scale.reshape(view).to(x.dtype), shift.expand(batch, num_groups, per_group).reshape(view).to(x.dtype)
    if modulation is not None:
        factor = (modulation[0] + 1).reshape(-1, channels, 1, 1, 1)  # B or 1 rows: broadcasts either way
        scale, shift = scale * factor, torch.addcmul(modulation[1].reshape(-1, channels, 1, 1, 1), shift, factor)
    return scale, shift


def accurate_group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    modulation: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``F.group_norm`` for ``(B, C, *spatial)``, then ``· (m_scale + 1) + m_shift`` when a ``modulation`` is given
    (shapes as in :func:`group_norm_scale_shift`); channels-last float32 CPU tensors take the accurate path, where the
    modulation is folded into its one fused multiply-add."""
    if not uses_accurate_group_norm(x):
        normalised = F.group_norm(x, num_groups, weight, bias, eps)
        if modulation is None:
            return normalised
        view = (-1, x.shape[1], *(1,) * (x.dim() - 2))
        return normalised * (modulation[0].reshape(view) + 1) + modulation[1].reshape(view)
    scale, shift = group_norm_scale_shift(x, num_groups, weight, bias, eps, modulation)
    return torch.addcmul(shift, x, scale)


_ACCURATE = True
_STATISTICS_SLAB = 1 << 15  # voxels per slab: 4 MiB at 32 channels, in L2/L3


@contextlib.contextmanager
def native_group_norm() -> Iterator[None]:
    """Use PyTorch's own channels-last kernel inside the block (for benchmarks that show what accuracy costs)."""
    global _ACCURATE
    previous, _ACCURATE = _ACCURATE, False
    try:
        yield
    finally:
        _ACCURATE = previous


class GroupNorm(nn.GroupNorm):
    """:class:`torch.nn.GroupNorm` (same parameters and state dict) with :func:`accurate_group_norm`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return accurate_group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
