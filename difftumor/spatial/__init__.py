"""The low spatial layer every stage shares (NumPy/SciPy only, no torch): the 1 mm working grid and sampling by
affine (:mod:`.grid`), lesion components and sizes, organ cores and their intensity.

See ``docs/ARCHITECTURE.md``: data, synthesis, segmentation and evaluation import from here, never from each other,
for these helpers.
"""

from .lesions import CONNECTIVITIES, IGNORE_LABEL, equivalent_diameter_mm, lesion_components
from .organ import intensity_statistics, organ_core, robust_statistics

__all__ = [
    "CONNECTIVITIES",
    "IGNORE_LABEL",
    "equivalent_diameter_mm",
    "intensity_statistics",
    "lesion_components",
    "organ_core",
    "robust_statistics",
]
