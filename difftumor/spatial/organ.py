"""Where an organ's own intensity is measured: its core, away from its border and from any lesion."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

#: Core: deeper than this inside the organ (partial volume with neighbours stays out) ...
CORE_INSIDE_MM = 3.0
#: ... and farther than this from any lesion (the lesion's own halo stays out).
CORE_AWAY_MM = 10.0
#: Below this many voxels a core is too small for a stable standard deviation; the margins are halved once.
MIN_CORE_VOXELS = 200


def organ_core(
    organ: np.ndarray,
    lesions: np.ndarray | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    inside_mm: float = CORE_INSIDE_MM,
    away_mm: float = CORE_AWAY_MM,
) -> np.ndarray:
    """Organ voxels more than ``inside_mm`` inside ``organ`` and more than ``away_mm`` from ``lesions`` (bool
    masks on one grid). When that leaves fewer than :data:`MIN_CORE_VOXELS`, both margins are halved once."""
    spacing = np.asarray(spacing, dtype=np.float64)
    for factor in (1.0, 0.5):
        core = ndimage.distance_transform_edt(organ, sampling=spacing) > inside_mm * factor
        if lesions is not None and lesions.any():
            core &= ndimage.distance_transform_edt(~lesions, sampling=spacing) > away_mm * factor
        if core.sum() >= MIN_CORE_VOXELS:
            return core
    return core


def intensity_statistics(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """``(mean, std)`` of ``image`` inside ``mask`` (NaN when empty)."""
    if not mask.any():
        return float("nan"), float("nan")
    values = image[mask].astype(np.float64)
    return float(values.mean()), float(values.std())


def robust_statistics(image: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """``(median, 1.4826 · MAD)`` of ``image`` inside ``mask``: the mean and standard deviation of the parenchyma
    even when a thin organ's core still holds some air, fat or bone from a coarse mask (NaN when empty)."""
    if not mask.any():
        return float("nan"), float("nan")
    values = image[mask].astype(np.float64)
    median = float(np.median(values))
    return median, float(1.4826 * np.median(np.abs(values - median)))
