"""Evaluate folders of predictions against folders of ground truth (files paired by name)."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..atomic import atomic_file, check_output
from ..data.alignment import check_known_labels, integer_labels, label_map_on_grid
from ..data.registry import truth_label_schemes
from ..data.volumes import load_volume
from ..errors import DiffTumorInputError
from ..spatial import CONNECTIVITIES, IGNORE_LABEL
from .metrics import (
    DEFAULT_IOU_THRESHOLD,
    DEFINITIONS,
    evaluate_case,
    markdown_table,
    summarize,
)


def truth_scheme(name: str) -> dict[str, tuple[int, ...]]:
    """``{"organ": ids, "tumor": ids}`` of a truth label scheme: ``internal`` or a layout that declares its ids
    (:func:`difftumor.data.registry.truth_label_schemes`; KiTS cysts count as kidney)."""
    schemes = truth_label_schemes()
    if name not in schemes:
        raise DiffTumorInputError(f"unknown truth label scheme {name!r}", f"choose one of {', '.join(schemes)}")
    return {"organ": schemes[name].organ, "tumor": schemes[name].tumor}


def _case_name(path: Path) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", path.name)


def _nifti(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.name.endswith((".nii", ".nii.gz")) or path.name.startswith("."):
            continue
        name = _case_name(path)
        if name in found:
            raise DiffTumorInputError(
                f"{folder} holds two files for case {name} ({found[name].name}, {path.name})", "keep one of them"
            )
        found[name] = path
    return found


def _pairs(prediction_dir: Path, truth_dir: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Predictions and truths by case name (one file each, or two folders paired by file name)."""
    if prediction_dir.is_file():
        name = _case_name(truth_dir)
        return {name: prediction_dir}, {name: truth_dir}
    predictions, truths = _nifti(prediction_dir), _nifti(truth_dir)
    if not set(predictions) & set(truths):
        raise DiffTumorInputError(
            f"no prediction in {prediction_dir} has a same-named truth in {truth_dir}",
            "name prediction and truth files alike (case.nii.gz)",
        )
    return predictions, truths


def _evaluate_pair(
    prediction_path: Path,
    truth_path: Path,
    scheme: dict[str, tuple[int, ...]],
    truth_labels: str,
    iou_threshold: float,
    connectivity: int,
    resample: bool = False,
) -> dict[str, Any]:
    """One case's metrics: the prediction brought onto the truth's grid, the truth mapped to the internal scheme."""
    truth = load_volume(truth_path, "truth")
    prediction = load_volume(prediction_path, "prediction")
    truth_values = integer_labels(truth, "truth")
    predicted = label_map_on_grid(prediction, truth, "prediction", "truth", resample=resample)
    check_known_labels(
        predicted,
        {0, 1, 2},
        "prediction",
        prediction_path.name,
        "predictions use 0 background, 1 organ, 2 tumour (`difftumor segment` writes them so)",
    )
    known = {0, IGNORE_LABEL, *scheme["organ"], *scheme["tumor"]}
    check_known_labels(
        truth_values,
        known,
        "truth",
        truth_path.name,
        "labels from `difftumor data prepare` (3 = mid/late tumour) need --truth-labels internal; "
        "or say which ids are what with --organ-label / --tumor-label",
        meaning=f"that the {truth_labels!r} scheme does not map "
        f"(organ {list(scheme['organ'])}, tumour {list(scheme['tumor'])})",
    )
    internal = np.zeros(truth.shape, np.uint8)
    internal[np.isin(truth_values, scheme["organ"])] = 1
    internal[np.isin(truth_values, scheme["tumor"])] = 2
    return evaluate_case(
        np.asarray(predicted).astype(np.int32),
        internal,
        truth.spacing,
        iou_threshold=iou_threshold,
        connectivity=connectivity,
        ignore=truth_values == IGNORE_LABEL,
    )


# Argument checks (one-line errors) and the metrics file; the per-case work is _pairs and _evaluate_pair.
def evaluate_folders(
    prediction_dir: str | os.PathLike,
    truth_dir: str | os.PathLike,
    out: str | os.PathLike,
    truth_labels: str = "internal",
    organ_label: int | None = None,
    tumor_label: int | None = None,
    organ: str | None = None,
    overwrite: bool = False,
    iou_threshold: float = DEFAULT_IOU_THRESHOLD,
    connectivity: int = 26,
    resample: bool = False,
) -> dict[str, Any]:
    """Evaluate every prediction that has a same-named truth file; write ``metrics.json`` (``cases`` + ``summary``).

    Predictions use the internal scheme (1 organ, 2 tumour). Truth ids follow ``truth_labels`` (``internal``,
    ``lits``, ``msd``, ``kits``) unless ``organ_label`` / ``tumor_label`` are given. Predictions and truths must be
    integer label maps; a prediction on another grid covering the truth's world box is resampled onto it by affine
    (nearest neighbour), one elsewhere only with ``resample`` (:func:`difftumor.data.alignment.label_map_on_grid`).
    Lesions are matched one to one at IoU ≥
    ``iou_threshold`` as ``connectivity``-connected components (the definitions are written into the file). Truth
    voxels labelled 255 are ignored by every metric.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise DiffTumorInputError(f"--iou-threshold {iou_threshold} is not in (0, 1]", "e.g. 0.5 (the default)")
    if connectivity not in CONNECTIVITIES:
        raise DiffTumorInputError(f"--connectivity {connectivity}", "use 26 (default) or 6 (the original's rule)")
    prediction_dir, truth_dir = Path(prediction_dir), Path(truth_dir)
    for folder, what in ((prediction_dir, "prediction"), (truth_dir, "truth")):
        if not folder.exists():
            raise DiffTumorInputError(f"{what} {folder} does not exist", "check the path")
    if prediction_dir.is_file() != truth_dir.is_file():
        raise DiffTumorInputError(
            "--pred and --truth must both be folders (paired by file name) or both be files",
            "pass two folders, or one prediction file and its truth file",
        )
    check_output(out, "file", (prediction_dir, truth_dir), overwrite, kind="metrics")
    scheme = truth_scheme(truth_labels)
    if organ_label is not None:
        scheme["organ"] = (organ_label,)
    if tumor_label is not None:
        scheme["tumor"] = (tumor_label,)
    predictions, truths = _pairs(prediction_dir, truth_dir)
    cases = [
        {
            "case": name,
            **_evaluate_pair(
                predictions[name], truths[name], scheme, truth_labels, iou_threshold, connectivity, resample
            ),
        }
        for name in sorted(set(predictions) & set(truths))
    ]
    data = {
        "difftumor_output": "metrics",
        "difftumor_version": __version__,
        "organ": organ,
        "truth_labels": truth_labels,
        "iou_threshold": iou_threshold,
        "connectivity": connectivity,
        "definitions": {
            key: text.format(iou_threshold=iou_threshold, connectivity=connectivity)
            for key, text in DEFINITIONS.items()
        },
        "summary": summarize(cases),
        "cases": cases,
        "unpaired_predictions": sorted(set(predictions) - set(truths)),
        "unpaired_truths": sorted(set(truths) - set(predictions)),
    }
    data = _json_safe(data)
    with atomic_file(out, overwrite, (prediction_dir, truth_dir), kind="metrics") as temporary:
        temporary.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    return data


def _json_safe(value: Any) -> Any:
    """NaN (a metric without cases, e.g. DSC of two empty masks) becomes ``null``: metrics.json stays valid JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


__all__ = ["evaluate_folders", "markdown_table"]
