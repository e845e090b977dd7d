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
from ..data.volumes import load_volume
from ..errors import DiffTumorInputError
from ..spatial import CONNECTIVITIES, IGNORE_LABEL
from ..spatial.grid import sample
from .metrics import (
    DEFAULT_IOU_THRESHOLD,
    DEFINITIONS,
    evaluate_case,
    markdown_table,
    summarize,
)

#: Ground-truth label ids (organ, tumour) of common datasets; KiTS cysts (3) count as kidney.
TRUTH_LABELS = {
    "internal": {"organ": (1,), "tumor": (2, 3)},
    "lits": {"organ": (1,), "tumor": (2,)},
    "msd": {"organ": (1,), "tumor": (2,)},
    "kits": {"organ": (1, 3), "tumor": (2,)},
}


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
) -> dict[str, Any]:
    """Evaluate every prediction that has a same-named truth file; write ``metrics.json`` (``cases`` + ``summary``).

    Predictions use the internal scheme (1 organ, 2 tumour). Truth ids follow ``truth_labels`` (``internal``,
    ``lits``, ``msd``, ``kits``) unless ``organ_label`` / ``tumor_label`` are given. A prediction on another grid
    than its truth is resampled onto it by affine (nearest neighbour). Lesions are matched one to one at IoU ≥
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
    if truth_labels not in TRUTH_LABELS:
        raise DiffTumorInputError(
            f"unknown truth label scheme {truth_labels!r}", f"choose one of {', '.join(TRUTH_LABELS)}"
        )
    scheme = dict(TRUTH_LABELS[truth_labels])
    if organ_label is not None:
        scheme["organ"] = (organ_label,)
    if tumor_label is not None:
        scheme["tumor"] = (tumor_label,)
    if prediction_dir.is_file():
        name = _case_name(truth_dir)
        predictions, truths = {name: prediction_dir}, {name: truth_dir}
    else:
        predictions, truths = _nifti(prediction_dir), _nifti(truth_dir)
    names = sorted(set(predictions) & set(truths))
    if not names:
        raise DiffTumorInputError(
            f"no prediction in {prediction_dir} has a same-named truth in {truth_dir}",
            "name prediction and truth files alike (case.nii.gz)",
        )
    cases = []
    for name in names:
        truth = load_volume(truths[name], "truth")
        prediction = load_volume(predictions[name], "prediction")
        predicted = prediction.array
        if predicted.shape != truth.shape or not np.allclose(prediction.affine, truth.affine, atol=1e-3):
            predicted = sample(predicted, prediction.affine, truth.affine, truth.shape, order=0)
        known = {0, IGNORE_LABEL, *scheme["organ"], *scheme["tumor"]}
        unknown = sorted({int(v) for v in np.unique(truth.array)} - known)
        if unknown:
            raise DiffTumorInputError(
                f"truth {truths[name].name} holds label(s) {unknown} that the {truth_labels!r} scheme does not map "
                f"(organ {list(scheme['organ'])}, tumour {list(scheme['tumor'])})",
                "labels from `difftumor data prepare` (3 = mid/late tumour) need --truth-labels internal; "
                "or say which ids are what with --organ-label / --tumor-label",
            )
        internal = np.zeros(truth.shape, np.uint8)
        internal[np.isin(truth.array, scheme["organ"])] = 1
        internal[np.isin(truth.array, scheme["tumor"])] = 2
        result = evaluate_case(
            np.asarray(predicted).astype(np.int32),
            internal,
            truth.spacing,
            iou_threshold=iou_threshold,
            connectivity=connectivity,
            ignore=truth.array == IGNORE_LABEL,
        )
        cases.append({"case": name, **result})
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
