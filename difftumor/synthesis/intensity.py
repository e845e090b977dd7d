"""How dark a synthetic tumour is, relative to the organ it is painted into — one rule for every synthesizer.

Calibration (``difftumor realism`` on the real lesions < 20 mm of LiTS volume 117's upper half, 1 mm grid; the
figures are in docs/realism.md): the contrast of an early liver lesion (organ ring mean − lesion mean) is
0.35 [0.29–0.38] of the organ core's mean HU and 2.7 [2.3–3.0] of its standard deviation. One contrast-enhanced
liver cannot say whether contrast follows the organ's mean or its noise; on a non-contrast liver (≈ 45 HU, std
≈ 13) the two rules differ by 2×. The rule here is their geometric mean, ``κ √(mean · std)``, which keeps both
ratios within ≈ 1.5× of the real ones on livers from ≈ 40 to ≈ 160 HU; κ reproduces the real median on LiTS.
"""

from __future__ import annotations

import math

#: Scale of the contrast rule; κ √(119 · 15.2) = 41 HU, the real median contrast on LiTS (1 mm grid).
CONTRAST_KAPPA = 0.965
#: Spread of real early-lesion contrast around the rule (their interquartile range is ≈ ±13 %).
CONTRAST_SPREAD = (0.8, 1.2)
#: Floor of the organ mean in the rule: a fatty liver (mean near or below 0 HU) still gets a visible lesion.
MIN_ORGAN_MEAN_HU = 20.0
MIN_ORGAN_STD_HU = 5.0
#: Organ core (mean, std) HU assumed for a diffusion model that does not record its training organ's (converted
#: checkpoints): portal-venous parenchyma as in LiTS volume 117 on a 1 mm grid.
DEFAULT_REFERENCE_HU = (119.0, 15.2)


def expected_contrast_hu(organ_mean_hu: float, organ_std_hu: float) -> float:
    """Median contrast (HU, positive = darker than the organ) of a real early lesion in an organ whose core has
    this mean and standard deviation."""
    mean = max(float(organ_mean_hu), MIN_ORGAN_MEAN_HU) if math.isfinite(organ_mean_hu) else MIN_ORGAN_MEAN_HU
    std = max(float(organ_std_hu), MIN_ORGAN_STD_HU) if math.isfinite(organ_std_hu) else MIN_ORGAN_STD_HU
    return CONTRAST_KAPPA * math.sqrt(mean * std)
