"""A Visual Turing Test as a tool: a blinded reader-study kit of real and synthetic lesions, and its scorer.

The paper's first evidence of realism (Table 1) is radiologists labelling 3-D CT volumes as real or synthetic.
:func:`make_kit` builds such a study from ``difftumor synthesize`` outputs and labelled real CTs:

- every lesion (a 26-connected tumour component of at least 10 mm³) is a candidate; synthetic and real lesions are
  **matched in size** one to one — each synthetic lesion, in a seeded random order, takes the unused real lesion of
  nearest equivalent diameter if it lies within the caliper (± 20 %, at least ± 2 mm) — so that size does not give
  the answer away; the kit holds ``count`` matched pairs (all matched pairs by default);
- each lesion is shown as a cube of ``fov_mm`` around its centre, resampled to 1 mm along the world (RAS) axes from
  its own CT (trilinear; air outside the scan), as int16 HU; no outline, no label;
- items get anonymous ids in an order shuffled by the seed; the answer key (which item is which, where it came from)
  is written to a separate file that may not lie inside the kit folder.

The kit folder holds one self-contained ``index.html`` (:mod:`difftumor.evaluation.reader_study_page`): no server,
no network. :func:`score` reads the key and the readers' exported answers.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from .. import __version__
from ..atomic import atomic_file, atomic_folder, check_output, check_output_folder
from ..data.volumes import Volume
from ..errors import DiffTumorInputError
from ..spatial import equivalent_diameter_mm, lesion_components
from ..spatial.grid import sample
from .machine_reader import roc_auc
from .metrics import wilson_interval
from .realism import LabelledCase

#: Lesions smaller than this (mm³) are noise of a label map, not lesions (as in ``difftumor realism``).
MIN_LESION_MM3 = 10.0
#: Size matching: a real lesion matches a synthetic one within this fraction of its diameter, or this many mm.
CALIPER_FRACTION, CALIPER_MM = 0.2, 2.0
#: A kit needs at least this many matched pairs.
MIN_PAIRS = 5
AIR_HU = -1024
#: Table 1 of the paper (liver): per radiologist R1-R4, sensitivity, specificity and accuracy in %.
PAPER_TABLE1 = {
    "liver": {"R1": (98.3, 31.7, 65.0), "R2": (99.2, 53.3, 76.3), "R3": (100.0, 39.2, 69.6), "R4": (100.0, 45.8, 72.9)},
    "pancreas": {
        "R1": (96.7, 22.5, 59.6),
        "R2": (100.0, 44.2, 72.1),
        "R3": (100.0, 34.2, 67.1),
        "R4": (98.3, 38.8, 68.3),
    },
    "kidney": {"R1": (95.8, 36.7, 66.3), "R2": (98.3, 55.0, 76.7), "R3": (99.2, 40.8, 70.0), "R4": (97.5, 51.7, 74.6)},
}
TRUTHS = ("real", "synthetic")


@dataclass
class Lesion:
    """One lesion as a candidate for the kit."""

    truth: str  # "real" or "synthetic"
    case: str
    ct: Volume
    center_mm: np.ndarray  # world (RAS) mm
    diameter_mm: float
    group: str  # the synthesis group (``difftumor realism``'s), or "real"
    #: the labelled CT it came from (for the machine reader's features)
    source: LabelledCase | None = None
    #: the CT's coarsest voxel edge (mm) and its organ's median HU: what makes scans look alike or not
    voxel_mm: float = float("nan")
    organ_hu: float = float("nan")
    #: the organ a synthesis painted (``tumors.json``); None for real lesions
    organ: str | None = None


def _lesions(case: LabelledCase, truth: str, group: str, organ: str | None = None) -> list[Lesion]:
    name, ct, lesions = case.name, case.ct, case.lesions
    voxel_mm3 = float(abs(np.linalg.det(ct.affine[:3, :3])))
    parenchyma = case.organ & ~lesions
    organ_hu = float(np.median(ct.array[parenchyma])) if parenchyma.any() else float("nan")
    components, count = lesion_components(lesions)
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    found = []
    for index in range(1, count + 1):
        if sizes[index] * voxel_mm3 < MIN_LESION_MM3:
            continue
        centre = np.argwhere(components == index).mean(0)
        world = (ct.affine @ np.append(centre, 1.0))[:3]
        diameter = equivalent_diameter_mm(int(sizes[index]), voxel_mm3)
        voxel = float(np.max(ct.spacing))
        found.append(Lesion(truth, name, ct, world, diameter, group, case, voxel, organ_hu, organ))
    return found


def collect_lesions(
    synthetic: Sequence[str | os.PathLike], real: Sequence[str | os.PathLike], truth_labels: str
) -> tuple[list[Lesion], list[Lesion]]:
    """Every lesion of the syntheses (``synthesize`` output folders, or folders of them) and of the labelled CTs."""
    from .evaluate import truth_scheme
    from .realism import _real_cases, _synthesis_cases

    scheme = truth_scheme(truth_labels)
    synthetic_lesions = [
        lesion
        for source in synthetic
        for case in _synthesis_cases(Path(source))
        for lesion in _lesions(case.case, "synthetic", case.group, case.organ)
    ]
    real_lesions = [
        lesion
        for source in real
        for case in _real_cases(Path(source), scheme["organ"], scheme["tumor"])
        for lesion in _lesions(case, "real", "real")
    ]
    return synthetic_lesions, real_lesions


def match_sizes(
    synthetic: Sequence[Lesion], real: Sequence[Lesion], rng: np.random.Generator
) -> list[tuple[Lesion, Lesion]]:
    """One-to-one pairs (synthetic, real) of matching size: each synthetic lesion in a random order takes the unused
    real lesion of nearest diameter within the caliper (see the module doc)."""
    unused = list(range(len(real)))
    pairs = []
    for index in rng.permutation(len(synthetic)):
        lesion = synthetic[int(index)]
        if not unused:
            break
        caliper = max(CALIPER_MM, CALIPER_FRACTION * lesion.diameter_mm)
        nearest = min(unused, key=lambda i: abs(real[i].diameter_mm - lesion.diameter_mm))
        if abs(real[nearest].diameter_mm - lesion.diameter_mm) <= caliper:
            pairs.append((lesion, real[nearest]))
            unused.remove(nearest)
    return pairs


def crop_hu(lesion: Lesion, fov_mm: int) -> np.ndarray:
    """A ``fov_mm``³ cube around the lesion's centre on a 1 mm grid along the world axes (index i along +x, j along
    +y, k along +z), int16 HU, air outside the scan."""
    affine = np.eye(4)
    affine[:3, 3] = np.round(lesion.center_mm) - fov_mm / 2 + 0.5
    values = sample(lesion.ct.array.astype(np.float32), lesion.ct.affine, affine, (fov_mm,) * 3, 1, cval=AIR_HU)
    return np.clip(np.rint(values), -32768, 32767).astype(np.int16)


def _encode(volume: np.ndarray) -> str:
    return base64.b64encode(gzip.compress(volume.tobytes(order="C"), compresslevel=6, mtime=0)).decode("ascii")


def make_kit(
    synthetic: Sequence[str | os.PathLike],
    real: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    key: str | os.PathLike,
    truth_labels: str = "internal",
    count: int | None = None,
    fov_mm: int = 48,
    seed: int = 0,
    machine_reader: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Build a blinded kit (``out/index.html``) of ``count`` real and ``count`` size-matched synthetic lesions and
    its answer key (``key``, outside ``out``). Returns the key."""
    from .reader_study_page import render_page

    out, key = Path(out), Path(key)
    if not 16 <= fov_mm <= 128:
        raise DiffTumorInputError(f"--fov-mm {fov_mm} is out of range", "use 16 to 128 mm (default 48)")
    if count is not None and count < MIN_PAIRS:
        raise DiffTumorInputError(f"--count {count} is too small for a study", f"use at least {MIN_PAIRS}")
    resolved_out, resolved_key = out.resolve(), key.resolve()
    if resolved_out == resolved_key or resolved_out in resolved_key.parents:
        raise DiffTumorInputError(
            f"the answer key {key} lies inside the kit folder {out}", "write the key outside it, e.g. --key key.json"
        )
    inputs = [*synthetic, *real]
    check_output_folder(out, overwrite, inputs, kind="reader-study kit")
    check_output(key, "file", inputs, overwrite, option="--key")
    synthetic_lesions, real_lesions = collect_lesions(synthetic, real, truth_labels)
    organs = sorted({str(lesion.organ) for lesion in synthetic_lesions})
    if len(organs) > 1:
        raise DiffTumorInputError(
            f"the syntheses painted tumours of {' and '.join(organs)}: the surrounding anatomy would tell them apart",
            "make one kit per organ, with real lesions of that organ",
        )
    rng = np.random.default_rng(seed)
    pairs = match_sizes(synthetic_lesions, real_lesions, rng)
    wanted = count if count is not None else len(pairs)
    if len(pairs) < max(wanted, MIN_PAIRS):
        raise DiffTumorInputError(
            f"only {len(pairs)} of {len(synthetic_lesions)} synthetic lesions have a real lesion of matching size "
            f"(±{CALIPER_FRACTION:.0%}, at least ±{CALIPER_MM:g} mm) among {len(real_lesions)} real ones",
            f"ask for --count {len(pairs)} or fewer (at least {MIN_PAIRS}), or add real lesions of those sizes"
            if len(pairs) >= MIN_PAIRS
            else "add lesions (more syntheses, or real CTs with lesions of the synthetic ones' sizes)",
        )
    pairs = [pairs[int(i)] for i in sorted(rng.choice(len(pairs), wanted, replace=False))]
    chosen = [lesion for pair in pairs for lesion in pair]
    order = rng.permutation(len(chosen))
    items, key_items = [], {}
    for position, index in enumerate(order):
        lesion = chosen[int(index)]
        item_id = f"case-{position + 1:03d}"
        volume = crop_hu(lesion, fov_mm)
        items.append({"id": item_id, "shape": list(volume.shape), "data": _encode(volume)})
        key_items[item_id] = {
            "truth": lesion.truth,
            "group": lesion.group,
            "case": lesion.case,
            "ct": str(lesion.ct.path),
            "center_mm": [round(float(v), 2) for v in lesion.center_mm],
            "diameter_mm": round(lesion.diameter_mm, 2),
        }
    kit_id = hashlib.sha256("".join(item["data"] for item in items).encode()).hexdigest()[:16]
    sizes = {truth: [lesion.diameter_mm for lesion in chosen if lesion.truth == truth] for truth in TRUTHS}
    test = stats.ks_2samp(sizes["real"], sizes["synthetic"])
    matching = {
        "method": f"one-to-one nearest equivalent diameter within ±{CALIPER_FRACTION:.0%} (at least ±{CALIPER_MM:g} "
        "mm), synthetic lesions taken in a seeded random order",
        "candidates": {"synthetic": len(synthetic_lesions), "real": len(real_lesions)},
        "pairs": len(pairs),
        "diameter_mm": {
            truth: {"median": float(np.median(v)), "iqr": [float(q) for q in np.percentile(v, [25, 75])]}
            for truth, v in sizes.items()
        },
        "ks_statistic": float(test.statistic),
        "ks_p": float(test.pvalue),
    }
    key_data: dict[str, Any] = {
        "difftumor_version": __version__,
        "warnings": scan_warnings(chosen),
        "kit_id": kit_id,
        "seed": seed,
        "organ": organs[0] if organs else None,
        "fov_mm": fov_mm,
        "grid": "1 mm, world RAS axes (i: +x, j: +y, k: +z), int16 HU, air outside the scan",
        "matching": matching,
        "items": key_items,
    }
    if machine_reader:
        key_data["machine_reader"] = _machine_reader_scores(chosen, order, seed)
    page = render_page({"kit_id": kit_id, "fov_mm": fov_mm, "items": items})
    with atomic_folder(out, overwrite=overwrite, inputs=inputs, kind="reader-study kit") as folder:
        (folder / "index.html").write_text(page, encoding="utf-8")
        with atomic_file(key, overwrite=overwrite, inputs=inputs) as temporary:
            Path(temporary).write_text(json.dumps(key_data, indent=1) + "\n")
    return key_data


#: Real and synthetic lesions from scans this different can be told apart by the scan alone.
VOXEL_RATIO_WARNING, ORGAN_HU_WARNING = 1.5, 30.0


def scan_warnings(lesions: Sequence[Lesion]) -> list[str]:
    """Warnings when the real lesions' scans differ from the synthetic ones' in voxel size or organ intensity (a
    reader could then answer from the scan, not the lesion)."""
    warnings = []
    by_truth = {truth: [lesion for lesion in lesions if lesion.truth == truth] for truth in TRUTHS}
    voxel = {truth: float(np.median([lesion.voxel_mm for lesion in group])) for truth, group in by_truth.items()}
    if max(voxel.values()) / min(voxel.values()) > VOXEL_RATIO_WARNING:
        warnings.append(
            f"the real lesions' CTs have {voxel['real']:.2g} mm voxels and the synthetic ones' "
            f"{voxel['synthetic']:.2g} mm (medians): a reader can tell the scans apart by their sharpness; "
            "synthesize into healthy CTs like the real ones"
        )
    organ = {
        truth: float(np.nanmedian([lesion.organ_hu for lesion in group])) if group else float("nan")
        for truth, group in by_truth.items()
    }
    if abs(organ["real"] - organ["synthetic"]) > ORGAN_HU_WARNING:
        warnings.append(
            f"the real lesions' organs are at {organ['real']:.0f} HU and the synthetic ones' at "
            f"{organ['synthetic']:.0f} HU (medians): a reader can tell the contrast phases apart; synthesize into "
            "healthy CTs of the real ones' phase"
        )
    return warnings


def _machine_reader_scores(chosen: Sequence[Lesion], order: np.ndarray, seed: int) -> dict[str, Any]:
    """Out-of-fold scores of the machine reader (:mod:`difftumor.evaluation.machine_reader`) for each kit item:
    > 0 leans synthetic. Measured with ``difftumor realism``'s features on each lesion's own CT."""
    from .machine_reader import cross_validated_auc, out_of_fold_scores

    measured: dict[int, list[dict[str, Any]]] = {}
    rows = [_reader_features(lesion, measured) for lesion in chosen]
    width = max(len(row) for row in rows if row is not None)
    features = np.vstack([row if row is not None else np.full(width, np.nan) for row in rows])
    labels = np.asarray([lesion.truth == "synthetic" for lesion in chosen], dtype=float)
    # Lesions of one CT share its organ's intensity and noise: they stay in one fold when each group has CTs enough
    # to fold; with one CT a group, folds are by lesion (and the key says so).
    keys = [(lesion.truth, str(lesion.ct.path)) for lesion in chosen]
    cases = {name: number for number, name in enumerate(sorted(set(keys)))}
    per_truth = {truth: len({k for k in cases if k[0] == truth}) for truth in TRUTHS}
    by_case = min(per_truth.values()) >= 2
    groups = np.asarray([cases[k] for k in keys]) if by_case else None
    rng = np.random.default_rng(seed)
    scores = out_of_fold_scores(features, labels, rng, groups=groups)
    auc = cross_validated_auc(features[:, np.isfinite(features).any(0)], labels, rng, groups=groups)
    return {
        "scores": {f"case-{position + 1:03d}": float(scores[int(index)]) for position, index in enumerate(order)},
        # the reader's AUC as realism reports it (mean of the held-out folds' AUCs): pooled out-of-fold scores are
        # biased below 0.5 when the groups do not differ
        "auc": auc,
        "folds": "by CT" if by_case else "by lesion (a group has one CT: its lesions share the scan)",
    }


def _reader_features(lesion: Lesion, measured: dict[int, list[dict[str, Any]]]) -> np.ndarray | None:
    """The machine reader's features of one lesion: ``difftumor realism``'s measurement of its case (once per case,
    kept in ``measured``), the record whose centre is nearest the lesion's."""
    from .realism import measure_case

    assert lesion.source is not None
    if id(lesion.source) not in measured:
        measured[id(lesion.source)] = measure_case(lesion.source)
    records = measured[id(lesion.source)]
    if not records:  # under realism's 10 mm³ on its 1 mm grid: nothing the reader can measure
        return None
    nearest = min(records, key=lambda r: float(np.linalg.norm(np.asarray(r["center_mm"]) - lesion.center_mm)))
    return np.asarray(nearest["_reader"], dtype=float)


def known_answers(key_path: str | os.PathLike, reader: str, seed: int = 0) -> dict[str, Any]:
    """Answers (the page's export format) of a reader whose scores are known: ``always-real``, ``random`` (answers
    and confidences drawn with ``seed``) or ``key`` (every answer right, confidence 5)."""
    key = _read_key(key_path)
    rng = np.random.default_rng(seed)
    answers = {}
    for item, entry in key["items"].items():
        if reader == "always-real":
            answers[item] = {"answer": "real", "confidence": 3}
        elif reader == "random":
            answers[item] = {"answer": TRUTHS[int(rng.integers(2))], "confidence": int(rng.integers(1, 6))}
        elif reader == "key":
            answers[item] = {"answer": entry["truth"], "confidence": 5}
        else:
            raise DiffTumorInputError(f"unknown known-answer reader {reader!r}", "choose always-real, random or key")
    return {"kit_id": key["kit_id"], "reader": f"{reader} (known answers)", "items": len(answers), "answers": answers}


def _read_key(key_path: str | os.PathLike) -> dict[str, Any]:
    try:
        key = json.loads(Path(key_path).read_text())
        if not isinstance(key["items"], dict) or not isinstance(key["kit_id"], str):
            raise TypeError("items or kit_id of the wrong type")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DiffTumorInputError(
            f"cannot read the key {key_path} ({error})", "pass the key `reader-study make` wrote"
        ) from None
    return key


# -- scoring --------------------------------------------------------------------------------------------------


def fleiss_kappa(ratings: np.ndarray) -> float:
    """Fleiss' κ of ``ratings`` ``(items, readers)`` in {0, 1} (every reader rated every item)."""
    items, readers = ratings.shape
    if items == 0 or readers < 2:
        return float("nan")
    counts = np.stack([(ratings == value).sum(1) for value in (0, 1)], axis=1).astype(float)
    per_item = ((counts**2).sum(1) - readers) / (readers * (readers - 1))
    shares = counts.sum(0) / (items * readers)
    expected = float((shares**2).sum())
    observed = float(per_item.mean())
    return float("nan") if math.isclose(expected, 1.0) else (observed - expected) / (1 - expected)


def _read_answers(path: Path, key: dict[str, Any]) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise DiffTumorInputError(
            f"cannot read answers {path} ({error})", "pass the JSON the kit page exported"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("answers"), dict):
        raise DiffTumorInputError(f"{path} is not a reader's answers", "pass the JSON the kit page exported")
    if data.get("kit_id") != key["kit_id"]:
        raise DiffTumorInputError(
            f"{path} answers kit {data.get('kit_id')!r}, the key is for kit {key['kit_id']!r}",
            "score each kit with its own key",
        )
    unknown = sorted(set(data["answers"]) - set(key["items"]))
    if unknown:
        raise DiffTumorInputError(f"{path} answers items the key does not hold: {unknown[:5]}", "check the files")
    for item, answer in data["answers"].items():
        confidence = answer.get("confidence") if isinstance(answer, dict) else None
        if (
            not isinstance(answer, dict)
            or answer.get("answer") not in TRUTHS
            or isinstance(confidence, bool)
            or confidence not in (1, 2, 3, 4, 5)
        ):
            raise DiffTumorInputError(
                f"{path}: item {item} has answer {answer!r}", "answers are real/synthetic with confidence 1-5"
            )
    return data


def _reader_row(reader: str, answers: dict[str, dict[str, Any]], key: dict[str, Any]) -> dict[str, Any]:
    truths = {item: entry["truth"] for item, entry in key["items"].items()}
    answered = [item for item in truths if item in answers]
    real = [item for item in answered if truths[item] == "real"]
    synthetic = [item for item in answered if truths[item] == "synthetic"]
    true_real = sum(answers[item]["answer"] == "real" for item in real)
    true_synthetic = sum(answers[item]["answer"] == "synthetic" for item in synthetic)

    def share(successes: int, total: int) -> dict[str, Any]:
        low, high = wilson_interval(successes, total) or (float("nan"), float("nan"))
        return {"value": successes / total if total else float("nan"), "ci95": [low, high], "n": total}

    # A 10-point scale from "synthetic, sure" (1) to "real, sure" (10): the ROC of calling an item real.
    scale = np.asarray(
        [
            5 + answers[i]["confidence"] if answers[i]["answer"] == "real" else 6 - answers[i]["confidence"]
            for i in answered
        ],
        dtype=float,
    )
    labels = np.asarray([truths[i] == "real" for i in answered], dtype=float)
    # Per synthesis group (a kit may hold several synthesizers' tumours): which of them pass for real.
    groups = sorted({key["items"][item].get("group", "synthetic") for item in synthetic})
    by_group = {}
    for group in groups:
        members = [item for item in synthetic if key["items"][item].get("group", "synthetic") == group]
        by_group[group] = share(sum(answers[item]["answer"] == "synthetic" for item in members), len(members))
    return {
        "reader": reader,
        "answered": len(answered),
        "of": len(truths),
        "sensitivity": share(true_real, len(real)),
        "specificity": share(true_synthetic, len(synthetic)),
        "specificity_by_group": by_group,
        "accuracy": share(true_real + true_synthetic, len(answered)),
        "auc": roc_auc(scale, labels),
    }


def score(
    key_path: str | os.PathLike,
    answer_paths: Sequence[str | os.PathLike],
    organ: str | None = None,
    machine_reader: bool = False,
) -> dict[str, Any]:
    """Per reader sensitivity (real called real), specificity (synthetic called synthetic) and accuracy with Wilson
    intervals and the ROC AUC of the confidences; Fleiss' κ over the items every reader answered; the paper's
    Table 1 figures for ``organ``; the machine reader as one more row when the key holds its scores."""
    key = _read_key(key_path)
    organ = organ or key.get("organ") or "liver"
    if organ not in PAPER_TABLE1:
        raise DiffTumorInputError(f"unknown organ {organ!r}", f"choose one of {', '.join(PAPER_TABLE1)}")
    if not answer_paths:
        raise DiffTumorInputError("no answers given", "pass --answers A1.json [A2.json ...]")
    readers = []
    for path in answer_paths:
        data = _read_answers(Path(path), key)
        readers.append((str(data.get("reader") or Path(path).stem), data["answers"]))
    names = [name for name, _ in readers]
    if len(set(names)) != len(names):
        raise DiffTumorInputError(f"reader ids repeat: {names}", "each reader exports with their own id")
    rows = [_reader_row(name, answers, key) for name, answers in readers]
    if machine_reader:
        if "machine_reader" not in key:
            raise DiffTumorInputError(
                "the key holds no machine-reader scores", "make the kit with --machine-reader to add them"
            )
        machine = {
            item: {"answer": "synthetic" if value > 0 else "real", "confidence": min(5, 1 + int(abs(value) * 4))}
            for item, value in key["machine_reader"]["scores"].items()
        }
        row = _reader_row("machine reader", machine, key)
        row["auc"] = key["machine_reader"]["auc"]
        rows.append(row)
    common = [item for item in key["items"] if all(item in answers for _, answers in readers)]
    ratings = np.asarray([[answers[item]["answer"] == "real" for _, answers in readers] for item in common], dtype=int)
    return {
        "kit_id": key["kit_id"],
        "readers": rows,
        "fleiss_kappa": fleiss_kappa(ratings) if len(readers) > 1 else float("nan"),
        "kappa_items": len(common),
        "paper": {"organ": organ, "table1": PAPER_TABLE1[organ]},
        "matching": key.get("matching"),
    }


def score_markdown(result: dict[str, Any]) -> str:
    """The scores in Table 1's layout (readers as columns), the paper's readers beside."""

    def cell(entry: dict[str, Any]) -> str:
        value, (low, high) = entry["value"], entry["ci95"]
        return "–" if not entry["n"] else f"{100 * value:.1f} [{100 * low:.0f}–{100 * high:.0f}]"

    rows, paper = result["readers"], result["paper"]
    names = [row["reader"] for row in rows]
    paper_names = list(paper["table1"])
    header = "| | " + " | ".join(names) + " | " + " | ".join(f"paper {n}" for n in paper_names) + " |"
    lines = [header, "|---|" + "---|" * (len(names) + len(paper_names))]
    for position, measure in enumerate(("sensitivity", "specificity", "accuracy")):
        values = [cell(row[measure]) for row in rows] + [f"{paper['table1'][n][position]:.1f}" for n in paper_names]
        lines.append(f"| {measure} (%) | " + " | ".join(values) + " |")
        groups = sorted({g for row in rows for g in row["specificity_by_group"]}) if measure == "specificity" else []
        for group in groups if len(groups) > 1 else []:
            values = [cell(row["specificity_by_group"].get(group, {"n": 0})) for row in rows]
            lines.append(f"| specificity, {group} (%) | " + " | ".join(values) + " |" + " |" * len(paper_names))
    lines.append("| ROC AUC | " + " | ".join(f"{row['auc']:.2f}" for row in rows) + " |" + " – |" * len(paper_names))
    lines.append(
        "| answered | " + " | ".join(f"{row['answered']}/{row['of']}" for row in rows) + " |" + " |" * len(paper_names)
    )
    kappa = result["fleiss_kappa"]
    lines += [
        "",
        "Sensitivity: real lesions called real; specificity: synthetic lesions called synthetic (lower: more "
        "synthetic lesions taken for real); 95 % Wilson intervals in brackets. "
        f"Paper: Table 1, {paper['organ']}, 120 real and 120 synthetic volumes per reader.",
        f"Fleiss' κ over the {result['kappa_items']} items every reader answered: "
        + (
            f"{kappa:.2f}"
            if not math.isnan(kappa)
            else "– (one reader)"
            if len(rows) - ("machine reader" in names) < 2
            else "– (no item answered by every reader, or all answers alike)"
        ),
    ]
    return "\n".join(lines)
