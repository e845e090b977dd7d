"""CT intensity windowing: HU <-> the scales the models work in — one definition for every stage.

Works on NumPy arrays and torch tensors alike (the arithmetic is the same; only the clip is spelled differently),
so the diffusion models' [-1, 1], the segmentation models' [0, 1] and the previews' grey levels all come from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: HU window of every DiffTumor stage (liver/pancreas/kidney soft tissue).
DEFAULT_WINDOW: tuple[float, float] = (-175.0, 250.0)


def _clip(values: Any, low: float, high: float) -> Any:
    clamp = getattr(values, "clamp", None)
    if clamp is not None:
        return clamp(low, high)
    import numpy as np

    return np.clip(values, low, high)


def scale_window(
    hu: Any, window: Sequence[float] = DEFAULT_WINDOW, out_range: Sequence[float] = (-1.0, 1.0), clip: bool = True
) -> Any:
    """HU -> ``out_range``: ``clip((hu − low) / (high − low), 0, 1) · (b − a) + a`` (MONAI's ScaleIntensityRange with
    ``clip=True``)."""
    (low, high), (a, b) = window, out_range
    fraction = (hu - low) / (high - low)
    return (_clip(fraction, 0.0, 1.0) if clip else fraction) * (b - a) + a


def unscale_window(
    values: Any, window: Sequence[float] = DEFAULT_WINDOW, out_range: Sequence[float] = (-1.0, 1.0)
) -> Any:
    """Inverse of :func:`scale_window` inside the window: ``out_range`` -> HU (no clipping)."""
    (low, high), (a, b) = window, out_range
    return (values - a) / (b - a) * (high - low) + low


def to_window(hu: Any, low: float = DEFAULT_WINDOW[0], high: float = DEFAULT_WINDOW[1]) -> Any:
    """Map HU to [-1, 1]: ``clip((hu − low) / (high − low), 0, 1) · 2 − 1`` (the original's synthesis scale)."""
    return scale_window(hu, (low, high))


def from_window(window: Any, low: float = DEFAULT_WINDOW[0], high: float = DEFAULT_WINDOW[1]) -> Any:
    """Inverse of :func:`to_window` inside the window: [-1, 1] -> HU (no clipping)."""
    return unscale_window(window, (low, high))
