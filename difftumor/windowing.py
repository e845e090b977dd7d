"""CT intensity windowing: HU <-> the [-1, 1] scale every DiffTumor model works in."""

from __future__ import annotations

import torch

#: HU window of every DiffTumor stage (liver/pancreas/kidney soft tissue).
DEFAULT_WINDOW: tuple[float, float] = (-175.0, 250.0)


def to_window(hu: torch.Tensor, low: float = DEFAULT_WINDOW[0], high: float = DEFAULT_WINDOW[1]) -> torch.Tensor:
    """Map HU to [-1, 1]: ``clip((hu − low) / (high − low), 0, 1) · 2 − 1`` (MONAI's ScaleIntensityRange + clip to
    [0, 1], then ``x·2 − 1`` as the original's synthesis code does)."""
    return ((hu - low) / (high - low)).clamp(0, 1) * 2 - 1


def from_window(window: torch.Tensor, low: float = DEFAULT_WINDOW[0], high: float = DEFAULT_WINDOW[1]) -> torch.Tensor:
    """Inverse of :func:`to_window` inside the window: [-1, 1] -> HU (no clipping)."""
    return (window + 1) / 2 * (high - low) + low
