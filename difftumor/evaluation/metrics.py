"""What the paper reports: organ/tumour DSC, tumour NSD at 2 mm, lesion-wise detection by size, and patient-level
sensitivity/specificity.

Lesion rule (stated once, used everywhere): lesions are 26-connected components of the tumour label. A true lesion
is **detected** when at least one predicted tumour voxel lies inside it; a predicted component that touches no true
lesion is a **false positive**. Sizes are the diameter of the sphere of equal volume, ``2 (3V / 4π)^(1/3)`` with
``V`` in mm³ from the label's voxel spacing. A case is **positive** when its truth has tumour voxels and is
predicted positive when the prediction has any.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ..synthesis.geometry import equivalent_diameter_mm

#: Diameter bins of the lesion sensitivity (mm): name -> [low, high).
SIZE_BINS = {"<10mm": (0.0, 10.0), "10-20mm": (10.0, 20.0), "20-50mm": (20.0, 50.0), ">=50mm": (50.0, math.inf)}
NSD_TOLERANCE_MM = 2.0
_STRUCTURE = np.ones((3, 3, 3), dtype=bool)


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Sørensen–Dice coefficient of two boolean masks (MONAI ``compute_dice``); ``nan`` when both are empty."""
    from monai.metrics import compute_dice

    if not prediction.any() and not truth.any():
        return math.nan
    y_pred = torch.from_numpy(np.stack([~prediction, prediction])[None].astype(np.float32))
    y = torch.from_numpy(np.stack([~truth, truth])[None].astype(np.float32))
    return float(compute_dice(y_pred, y, include_background=False)[0, 0])


def surface_dice(prediction: np.ndarray, truth: np.ndarray, spacing: np.ndarray, tolerance_mm: float) -> float:
    """Normalised surface Dice at ``tolerance_mm`` (MONAI ``compute_surface_dice``); ``nan`` when both are empty."""
    from monai.metrics import compute_surface_dice

    if not prediction.any() and not truth.any():
        return math.nan
    if not prediction.any() or not truth.any():
        return 0.0
    y_pred = torch.from_numpy(np.stack([~prediction, prediction])[None].astype(np.float32))
    y = torch.from_numpy(np.stack([~truth, truth])[None].astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # raised inside MONAI's own get_mask_edges call
        value = compute_surface_dice(
            y_pred, y, class_thresholds=[tolerance_mm], spacing=tuple(float(s) for s in spacing)
        )
    return float(value[0, 0])


@dataclass
class LesionMatch:
    """Lesion-wise detection of one case."""

    true_diameters_mm: list[float] = field(default_factory=list)
    detected: list[bool] = field(default_factory=list)
    false_positives: int = 0
    predicted_lesions: int = 0


def match_lesions(prediction: np.ndarray, truth: np.ndarray, spacing: np.ndarray) -> LesionMatch:
    """Detected / missed true lesions and false-positive predicted lesions (the module's rule)."""
    voxel_volume = float(np.prod(spacing))
    true_components, true_count = ndimage.label(truth, structure=_STRUCTURE)
    predicted_components, predicted_count = ndimage.label(prediction, structure=_STRUCTURE)
    result = LesionMatch(predicted_lesions=predicted_count)
    if true_count:
        sizes = np.bincount(true_components.ravel(), minlength=true_count + 1)
        hit = np.bincount(true_components[prediction].ravel(), minlength=true_count + 1) > 0
        for index in range(1, true_count + 1):
            result.true_diameters_mm.append(equivalent_diameter_mm(int(sizes[index]), voxel_volume))
            result.detected.append(bool(hit[index]))
    if predicted_count:
        touches = np.bincount(predicted_components[truth].ravel(), minlength=predicted_count + 1) > 0
        result.false_positives = int(predicted_count - touches[1:].sum())
    return result


def size_bin(diameter_mm: float) -> str:
    return next(name for name, (low, high) in SIZE_BINS.items() if low <= diameter_mm < high)


def evaluate_case(
    prediction: np.ndarray, truth: np.ndarray, spacing: np.ndarray, organ_label: int = 1, tumor_label: int = 2
) -> dict[str, Any]:
    """Metrics of one case from integer label maps on the same grid (internal scheme unless labels are given)."""
    predicted_tumor, true_tumor = prediction == 2, truth == tumor_label
    predicted_organ = (prediction == 1) | predicted_tumor
    true_organ = (truth == organ_label) | true_tumor
    lesions = match_lesions(predicted_tumor, true_tumor, spacing)
    return {
        "organ_dsc": dice(predicted_organ, true_organ),
        "organ_nsd": surface_dice(predicted_organ, true_organ, spacing, NSD_TOLERANCE_MM),
        "tumor_dsc": dice(predicted_tumor, true_tumor),
        "tumor_nsd": surface_dice(predicted_tumor, true_tumor, spacing, NSD_TOLERANCE_MM),
        "has_tumor": bool(true_tumor.any()),
        "predicted_tumor": bool(predicted_tumor.any()),
        "true_lesions": len(lesions.detected),
        "detected_lesions": int(sum(lesions.detected)),
        "false_positive_lesions": lesions.false_positives,
        "lesions": [
            {"diameter_mm": round(d, 2), "size_bin": size_bin(d), "detected": hit}
            for d, hit in zip(lesions.true_diameters_mm, lesions.detected)
        ],
    }


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else None


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def summarize(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary over cases: mean DSC/NSD (tumour metrics over cases with a true tumour), lesion sensitivity overall
    and by size bin (with counts), patient-level sensitivity and specificity."""
    positives = [c for c in cases if c["has_tumor"]]
    negatives = [c for c in cases if not c["has_tumor"]]
    lesions = [lesion for c in cases for lesion in c["lesions"]]
    by_bin = {}
    counts = {}
    for name in SIZE_BINS:
        members = [lesion for lesion in lesions if lesion["size_bin"] == name]
        by_bin[name] = _ratio(sum(lesion["detected"] for lesion in members), len(members))
        counts[name] = {"detected": sum(lesion["detected"] for lesion in members), "total": len(members)}
    early = [lesion for lesion in lesions if lesion["diameter_mm"] < 20.0]
    return {
        "cases": len(cases),
        "positive_cases": len(positives),
        "negative_cases": len(negatives),
        "organ_dsc_mean": _mean([c["organ_dsc"] for c in cases]),
        "organ_nsd_mean": _mean([c["organ_nsd"] for c in cases]),
        "tumor_dsc_mean": _mean([c["tumor_dsc"] for c in positives]),
        "tumor_nsd_mean": _mean([c["tumor_nsd"] for c in positives]),
        "lesion_sensitivity": {"all": _ratio(sum(lesion["detected"] for lesion in lesions), len(lesions)), **by_bin},
        "lesion_counts": {
            "all": {"detected": sum(lesion["detected"] for lesion in lesions), "total": len(lesions)},
            **counts,
        },
        "early_lesion_sensitivity": _ratio(sum(lesion["detected"] for lesion in early), len(early)),
        "false_positive_lesions": sum(c["false_positive_lesions"] for c in cases),
        "patient_sensitivity": _ratio(sum(c["predicted_tumor"] for c in positives), len(positives)),
        "patient_specificity": _ratio(sum(not c["predicted_tumor"] for c in negatives), len(negatives)),
    }


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table (``—`` where a metric has no cases)."""

    def show(value: float | None) -> str:
        return "—" if value is None else f"{100 * value:.1f}"

    sensitivity = summary["lesion_sensitivity"]
    counts = summary["lesion_counts"]
    rows = [
        ("organ DSC (%)", show(summary["organ_dsc_mean"])),
        ("tumour DSC (%)", show(summary["tumor_dsc_mean"])),
        (f"tumour NSD @ {NSD_TOLERANCE_MM:g} mm (%)", show(summary["tumor_nsd_mean"])),
        *[
            (
                f"lesion sensitivity {name} (%)",
                f"{show(sensitivity[name])} ({counts[name]['detected']}/{counts[name]['total']})",
            )
            for name in ("all", *SIZE_BINS)
        ],
        ("false-positive lesions", str(summary["false_positive_lesions"])),
        ("patient sensitivity (%)", show(summary["patient_sensitivity"])),
        ("patient specificity (%)", show(summary["patient_specificity"])),
    ]
    lines = ["| metric | value |", "|---|---|", *[f"| {name} | {value} |" for name, value in rows]]
    return "\n".join(lines)
