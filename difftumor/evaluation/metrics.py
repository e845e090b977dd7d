"""What the paper reports — organ/tumour DSC, tumour NSD at 2 mm, lesion-wise detection by size, patient-level
sensitivity/specificity — defined so that a useless prediction cannot score well, with intervals.

Definitions (stated once, used everywhere, and written into ``metrics.json`` as :data:`DEFINITIONS`):

- **Lesions** are connected components of the tumour label (26-connectivity by default; 6 reproduces the original's
  size rule). Size = diameter of the sphere of equal volume, ``2 (3V / 4π)^(1/3)``, V in mm³.
- **Detection** is a one-to-one matching of true and predicted lesions that maximises the total IoU among pairs with
  IoU ≥ the threshold (default 0.5: Metrics Reloaded's recommended localisation criterion for instance matching,
  Maier-Hein et al., Nat. Methods 2024; above 0.5 a match is necessarily unique). A true lesion is detected only when
  matched; every unmatched predicted lesion is a false positive. Predicting the whole organ as tumour therefore
  detects at most the one lesion that fills half of it, and one voxel per lesion detects none.
- **Sensitivity** per size bin with Wilson 95 % intervals; false positives in total and per case.
- **DSC**: per case, averaged over cases with a true tumour, and *global* (LiTS "Dice global": 2 Σ|A∩B| / Σ(|A|+|B|)
  over all cases); case-level percentile-bootstrap 95 % intervals (2000 resamples, seed 0) when there are ≥ 3 cases.
- **NSD** at 2 mm: the surface-element definition of Nikolov et al. (DeepMind's surface-distance library), computed
  with MONAI ``compute_surface_dice(..., use_subvoxels=True)``.
- A case is **positive** when its truth has tumour voxels, and predicted positive when the prediction has any.
- Truth voxels labelled **ignore** (255, e.g. the other side of a lesion-wise split) are removed from prediction and
  truth before any metric: a prediction there is neither a hit nor a false positive.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..spatial import equivalent_diameter_mm, lesion_components

#: Diameter bins of the lesion sensitivity (mm): name -> [low, high).
SIZE_BINS = {"<10mm": (0.0, 10.0), "10-20mm": (10.0, 20.0), "20-50mm": (20.0, 50.0), ">=50mm": (50.0, math.inf)}
NSD_TOLERANCE_MM = 2.0
#: Lesion matching criterion (see the module docstring for the reference).
DEFAULT_IOU_THRESHOLD = 0.5
BOOTSTRAP_RESAMPLES = 2000

DEFINITIONS = {
    "lesion": "connected component of the tumour label ({connectivity}-connectivity); size = equivalent-sphere "
    "diameter 2(3V/4pi)^(1/3), V in mm^3",
    "detection": "one-to-one matching of true and predicted lesions maximising total IoU among pairs with IoU >= "
    "{iou_threshold}; a true lesion is detected only when matched; every unmatched predicted lesion is a false "
    "positive",
    "sensitivity_interval": "Wilson score interval, 95 %",
    "tumor_dsc_mean": "mean of per-case tumour Dice over cases whose truth has tumour",
    "tumor_dsc_global": "2 sum|A and B| / sum(|A| + |B|) over all cases (LiTS 'Dice global')",
    "dsc_interval": "case-level percentile bootstrap, 95 %, 2000 resamples, seed 0 (when >= 3 cases)",
    "nsd": "normalised surface Dice at 2 mm with surface elements (Nikolov et al.; DeepMind surface-distance), "
    "MONAI compute_surface_dice(use_subvoxels=True)",
    "patient": "positive = truth has tumour voxels; predicted positive = prediction has tumour voxels",
    "ignore": "truth voxels labelled 255 are removed from prediction and truth before every metric",
}


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Sørensen–Dice coefficient of two boolean masks (MONAI ``compute_dice``); ``nan`` when both are empty."""
    from monai.metrics import compute_dice

    if not prediction.any() and not truth.any():
        return math.nan
    y_pred = torch.from_numpy(np.stack([~prediction, prediction])[None].astype(np.float32))
    y = torch.from_numpy(np.stack([~truth, truth])[None].astype(np.float32))
    return float(compute_dice(y_pred, y, include_background=False)[0, 0])


def surface_dice(prediction: np.ndarray, truth: np.ndarray, spacing: np.ndarray, tolerance_mm: float) -> float:
    """Normalised surface Dice at ``tolerance_mm`` with surface elements (MONAI ``compute_surface_dice`` with
    ``use_subvoxels=True``, which equals DeepMind's surface-distance definition); ``nan`` when both are empty."""
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
            y_pred,
            y,
            class_thresholds=[tolerance_mm],
            spacing=tuple(float(s) for s in spacing),
            use_subvoxels=True,
        )
    return float(value[0, 0])


@dataclass
class LesionMatch:
    """Lesion-wise detection of one case (the module's rule)."""

    true_diameters_mm: list[float] = field(default_factory=list)
    detected: list[bool] = field(default_factory=list)
    #: IoU of each true lesion with its matched predicted lesion (``None`` when missed)
    matched_iou: list[float | None] = field(default_factory=list)
    false_positives: int = 0
    predicted_lesions: int = 0


def match_lesions(
    prediction: np.ndarray,
    truth: np.ndarray,
    spacing: np.ndarray,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    connectivity: int = 26,
) -> LesionMatch:
    """One-to-one matching of true and predicted lesions (maximum total IoU among pairs with IoU ≥ threshold)."""
    from scipy.optimize import linear_sum_assignment

    voxel_volume = float(np.prod(spacing))
    true_components, true_count = lesion_components(truth, connectivity)
    predicted_components, predicted_count = lesion_components(prediction, connectivity)
    result = LesionMatch(predicted_lesions=predicted_count)
    true_sizes = np.bincount(true_components.ravel(), minlength=true_count + 1)
    predicted_sizes = np.bincount(predicted_components.ravel(), minlength=predicted_count + 1)
    both = (true_components > 0) & (predicted_components > 0)
    pairs, overlap = np.unique(
        true_components[both].astype(np.int64) * (predicted_count + 1) + predicted_components[both],
        return_counts=True,
    )
    rows, columns = pairs // (predicted_count + 1), pairs % (predicted_count + 1)
    iou = overlap / (true_sizes[rows] + predicted_sizes[columns] - overlap)
    keep = iou >= iou_threshold
    rows, columns, iou = rows[keep], columns[keep], iou[keep]
    matched: dict[int, float] = {}
    if len(rows):
        # Only lesions with an eligible partner enter the assignment; the matrix stays small.
        true_ids, row_index = np.unique(rows, return_inverse=True)
        predicted_ids, column_index = np.unique(columns, return_inverse=True)
        gain = np.zeros((len(true_ids), len(predicted_ids)))
        gain[row_index, column_index] = iou
        chosen_rows, chosen_columns = linear_sum_assignment(gain, maximize=True)
        for r, c in zip(chosen_rows, chosen_columns):
            if gain[r, c] > 0:
                matched[int(true_ids[r])] = float(gain[r, c])
    for index in range(1, true_count + 1):
        result.true_diameters_mm.append(equivalent_diameter_mm(int(true_sizes[index]), voxel_volume))
        result.detected.append(index in matched)
        result.matched_iou.append(matched.get(index))
    result.false_positives = int(predicted_count - len(matched))
    return result


def wilson_interval(successes: int, total: int, z: float = 1.959963984540054) -> tuple[float, float] | None:
    """Wilson score interval of a proportion (95 % by default); ``None`` without trials."""
    if total == 0:
        return None
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(
    statistic: Callable[[np.ndarray], float], count: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float] | None:
    """Case-level percentile-bootstrap 95 % interval of ``statistic(indices)``; ``None`` below 3 cases."""
    if count < 3:
        return None
    rng = np.random.default_rng(seed)
    values = [statistic(rng.integers(0, count, count)) for _ in range(resamples)]
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


def size_bin(diameter_mm: float) -> str:
    return next(name for name, (low, high) in SIZE_BINS.items() if low <= diameter_mm < high)


def evaluate_case(
    prediction: np.ndarray,
    truth: np.ndarray,
    spacing: np.ndarray,
    organ_label: int = 1,
    tumor_label: int = 2,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    connectivity: int = 26,
    ignore: np.ndarray | None = None,
) -> dict[str, Any]:
    """Metrics of one case from integer label maps on the same grid (internal scheme unless labels are given);
    ``ignore`` (boolean, same grid) removes voxels from both before every metric."""
    if ignore is not None and ignore.any():
        prediction, truth = np.where(ignore, 0, prediction), np.where(ignore, 0, truth)
    predicted_tumor, true_tumor = prediction == 2, truth == tumor_label
    predicted_organ = (prediction == 1) | predicted_tumor
    true_organ = (truth == organ_label) | true_tumor
    lesions = match_lesions(predicted_tumor, true_tumor, spacing, iou_threshold, connectivity)
    return {
        "tumor_overlap_voxels": int((predicted_tumor & true_tumor).sum()),
        "tumor_predicted_voxels": int(predicted_tumor.sum()),
        "tumor_true_voxels": int(true_tumor.sum()),
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
            {
                "diameter_mm": round(d, 2),
                "size_bin": size_bin(d),
                "detected": hit,
                "iou": None if iou is None else round(iou, 4),
            }
            for d, hit, iou in zip(lesions.true_diameters_mm, lesions.detected, lesions.matched_iou)
        ],
    }


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else None


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _global_dice(cases: list[dict[str, Any]]) -> float | None:
    denominator = sum(c["tumor_predicted_voxels"] + c["tumor_true_voxels"] for c in cases)
    return 2 * sum(c["tumor_overlap_voxels"] for c in cases) / denominator if denominator else None


def _proportion(successes: int, total: int) -> dict[str, Any]:
    interval = wilson_interval(successes, total)
    return {"value": _ratio(successes, total), "ci95": list(interval) if interval else None}


def summarize(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary over cases: DSC (mean over positive cases and global) and NSD with bootstrap intervals, lesion
    sensitivity overall and by size bin with Wilson intervals and counts, false positives, patient-level
    sensitivity and specificity."""
    positives = [c for c in cases if c["has_tumor"]]
    negatives = [c for c in cases if not c["has_tumor"]]
    lesions = [lesion for c in cases for lesion in c["lesions"]]
    by_bin, counts, intervals = {}, {}, {}
    for name, members in (("all", lesions), *((n, [x for x in lesions if x["size_bin"] == n]) for n in SIZE_BINS)):
        detected = sum(lesion["detected"] for lesion in members)
        by_bin[name] = _ratio(detected, len(members))
        counts[name] = {"detected": detected, "total": len(members)}
        intervals[name] = _proportion(detected, len(members))["ci95"]
    early = [lesion for lesion in lesions if lesion["diameter_mm"] < 20.0]
    early_detected = sum(lesion["detected"] for lesion in early)

    def mean_of(key: str, over: list[dict[str, Any]]) -> Callable[[np.ndarray], float | None]:
        return lambda picks: _mean([over[i][key] for i in picks])

    false_positives = sum(c["false_positive_lesions"] for c in cases)
    return {
        "cases": len(cases),
        "positive_cases": len(positives),
        "negative_cases": len(negatives),
        "organ_dsc_mean": _mean([c["organ_dsc"] for c in cases]),
        "organ_nsd_mean": _mean([c["organ_nsd"] for c in cases]),
        "tumor_dsc_mean": _mean([c["tumor_dsc"] for c in positives]),
        "tumor_dsc_mean_ci95": bootstrap_interval(mean_of("tumor_dsc", positives), len(positives)),
        "tumor_dsc_global": _global_dice(cases),
        "tumor_dsc_global_ci95": bootstrap_interval(lambda picks: _global_dice([cases[i] for i in picks]), len(cases)),
        "tumor_nsd_mean": _mean([c["tumor_nsd"] for c in positives]),
        "tumor_nsd_mean_ci95": bootstrap_interval(mean_of("tumor_nsd", positives), len(positives)),
        "lesion_sensitivity": by_bin,
        "lesion_sensitivity_ci95": intervals,
        "lesion_counts": counts,
        "early_lesion_sensitivity": _ratio(early_detected, len(early)),
        "early_lesion_sensitivity_ci95": _proportion(early_detected, len(early))["ci95"],
        "false_positive_lesions": false_positives,
        "false_positives_per_case": _ratio(false_positives, len(cases)),
        "patient_sensitivity": _ratio(sum(c["predicted_tumor"] for c in positives), len(positives)),
        "patient_sensitivity_ci95": _proportion(sum(c["predicted_tumor"] for c in positives), len(positives))["ci95"],
        "patient_specificity": _ratio(sum(not c["predicted_tumor"] for c in negatives), len(negatives)),
        "patient_specificity_ci95": _proportion(sum(not c["predicted_tumor"] for c in negatives), len(negatives))[
            "ci95"
        ],
    }


def markdown_table(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table (``—`` where a metric has no cases)."""

    def show(value: float | None, interval: Any = None) -> str:
        if value is None:
            return "—"
        text = f"{100 * value:.1f}"
        return text if not interval else f"{text} [{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"

    sensitivity = summary["lesion_sensitivity"]
    counts = summary["lesion_counts"]
    intervals = summary.get("lesion_sensitivity_ci95", {})
    rows = [
        ("organ DSC (%)", show(summary["organ_dsc_mean"])),
        ("tumour DSC (%), mean over positive cases", show(summary["tumor_dsc_mean"], summary["tumor_dsc_mean_ci95"])),
        ("tumour DSC (%), global", show(summary["tumor_dsc_global"], summary["tumor_dsc_global_ci95"])),
        (f"tumour NSD @ {NSD_TOLERANCE_MM:g} mm (%)", show(summary["tumor_nsd_mean"], summary["tumor_nsd_mean_ci95"])),
        *[
            (
                f"lesion sensitivity {name} (%)",
                f"{show(sensitivity[name], intervals.get(name))} ({counts[name]['detected']}/{counts[name]['total']})",
            )
            for name in ("all", *SIZE_BINS)
        ],
        (
            "false-positive lesions (per case)",
            f"{summary['false_positive_lesions']} ({summary['false_positives_per_case'] or 0:.2f})",
        ),
        ("patient sensitivity (%)", show(summary["patient_sensitivity"], summary["patient_sensitivity_ci95"])),
        ("patient specificity (%)", show(summary["patient_specificity"], summary["patient_specificity_ci95"])),
    ]
    lines = ["| metric | value [95 % CI] |", "|---|---|", *[f"| {name} | {value} |" for name, value in rows]]
    return "\n".join(lines)
