"""Lesions as connected components, and their size as the diameter of the sphere of equal volume."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

#: Neighbourhoods of a voxel: 26 (faces, edges, corners; the default) or 6 (faces; the original's size rule).
#: Label value meaning "ignore": voxels a split or an annotator excludes from training targets and from every metric.
IGNORE_LABEL = 255
CONNECTIVITIES = {26: np.ones((3, 3, 3), dtype=bool), 6: ndimage.generate_binary_structure(3, 1)}


def equivalent_diameter_mm(voxels: int, voxel_volume_mm3: float = 1.0) -> float:
    """Diameter of the sphere of the same volume: ``2 (3V / 4π)^(1/3)``."""
    return 2.0 * (3.0 * voxels * voxel_volume_mm3 / (4.0 * math.pi)) ** (1.0 / 3.0)


def lesion_components(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Connected components of a boolean mask with 26 (default) or 6 connectivity: ``(labels, count)``."""
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be 26 or 6, got {connectivity}")
    return ndimage.label(mask, structure=CONNECTIVITIES[connectivity])
