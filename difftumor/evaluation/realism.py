"""Do synthetic lesions look like real ones? Measure both the same way and compare their distributions.

Every lesion (a 26-connected tumour component of at least :data:`MIN_LESION_MM3`) is measured on a 1 mm grid
resampled from its own CT (linear for HU, nearest for labels; axes as stored), so real lesions of a 1.5 mm scan
and synthetic lesions of a 3 mm scan are measured alike:

- ``diameter_mm``: equivalent-sphere diameter;
- ``lesion_hu``: mean HU inside the lesion;
- ``contrast_hu``: mean of the organ ring 2–5 mm outside the lesion (voxels within 2 mm of another lesion left
  out) minus the lesion mean (positive: darker than the organ);
- ``contrast_to_organ_mean`` and ``contrast_to_organ_std``: contrast ÷ the organ core's mean and ÷ its standard
  deviation (core: > 3 mm inside the organ, > 10 mm from any lesion; :func:`difftumor.spatial.organ_core`);
- ``internal_std_to_organ_std``: standard deviation inside the lesion ÷ the core's;
- ``edge_to_contrast_per_mm``: mean gradient magnitude on the one-voxel boundary shell ÷ contrast;
- ``stride_artifact``: the share of the lesion's high-pass energy that repeats with the 4 mm period of the
  autoencoder's decoder (4× up-sampling on the 1 mm working grid): the residual after a 4-voxel box filter is
  averaged per phase (x mod 4, y mod 4, z mod 4) over the lesion grown by 2 mm, and the phase means' variance in
  excess of what noise alone gives (var / n per phase) is divided by the residual's variance. ≈ 0 for real
  tissue; a regular dot grid pushes it towards 1. (This is the energy at the stride's lattice frequencies.)
- ``sphericity`` (``π^⅓ (6V)^⅔ / A``, the area from the co-area formula on the mask smoothed by σ = 0.7 mm) and
  ``elongation`` (√(λ_minor / λ_major) of the voxel coordinates' covariance, as pyradiomics defines it) of the label;
- ``drop_sphericity`` and ``drop_elongation``: the same of the intensity drop as the image shows it (voxels within
  3 mm of the lesion more than half the contrast below the ring, after a σ = 1 mm blur; :func:`intensity_drop`) —
  the shape a painter gives a lesion, which the label of a synthetic lesion does not show.

pyradiomics is not used: it has no wheel for current Python versions and its source releases do not build in a
clean environment (3.1.0's metadata is inconsistent, 3.0.1 needs NumPy before its own build requirements).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage, stats

from .. import __version__
from ..atomic import atomic_folder
from ..data.alignment import label_map_on_grid
from ..data.volumes import Volume, load_volume
from ..errors import DiffTumorInputError
from ..limits import check_volume_size
from ..spatial import equivalent_diameter_mm, intensity_statistics, lesion_components, organ_core
from ..spatial.grid import sample
from .machine_reader import ReaderResult, machine_reader, reader_features, reader_markdown

#: Lesions smaller than this (mm³) are noise of a label map, not lesions.
MIN_LESION_MM3 = 10.0
RING_MM = (2.0, 5.0)
OTHER_LESION_GAP_MM = 2.0
STRIDE = 4
FEATURES = (
    "diameter_mm",
    "lesion_hu",
    "contrast_hu",
    "contrast_to_organ_mean",
    "contrast_to_organ_std",
    "internal_std_to_organ_std",
    "edge_to_contrast_per_mm",
    "stride_artifact",
    "sphericity",
    "elongation",
    "drop_sphericity",
    "drop_elongation",
)
#: Size bins by equivalent diameter (mm): name -> [low, high).
SIZE_BINS = {
    "<10mm": (0.0, 10.0),
    "10-20mm": (10.0, 20.0),
    "early <20mm": (0.0, 20.0),
    "20-50mm": (20.0, 50.0),
    ">=50mm": (50.0, math.inf),
}
#: What the acceptance of synthetic lesions looks at (docs/realism.md).
KEY_FEATURES = ("contrast_to_organ_mean", "contrast_to_organ_std", "internal_std_to_organ_std", "stride_artifact")


@dataclass
class LabelledCase:
    """A CT with its organ and lesion masks, as one group of the comparison sees it."""

    name: str
    ct: Volume
    organ: np.ndarray  # bool, organ including its lesions, on the CT grid
    lesions: np.ndarray  # bool, on the CT grid


# -- measuring ------------------------------------------------------------------------------------------------


def _one_mm_box(case: LabelledCase, margin_mm: float = 8.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The organ's bounding box resampled to 1 mm along the stored axes: ``(hu, organ, lesions, affine)``."""
    spacing = case.ct.spacing
    points = np.argwhere(case.organ)
    low = np.maximum(points.min(0) - np.ceil(margin_mm / spacing), 0)
    high = np.minimum(points.max(0) + np.ceil(margin_mm / spacing), np.asarray(case.ct.shape) - 1)
    shape = tuple(int(v) for v in np.floor((high - low) * spacing) + 1)
    check_volume_size(shape, f"the organ region of {case.name} on a 1 mm grid", case.ct.path)
    affine = case.ct.affine.copy()
    affine[:3, :3] = case.ct.affine[:3, :3] / spacing  # unit columns: 1 mm along each stored axis
    affine[:3, 3] = (case.ct.affine @ np.append(low, 1.0))[:3]
    hu = sample(case.ct.array.astype(np.float32), case.ct.affine, affine, shape, order=1)
    organ = sample(case.organ.astype(np.uint8), case.ct.affine, affine, shape, order=0).astype(bool)
    lesions = sample(case.lesions.astype(np.uint8), case.ct.affine, affine, shape, order=0).astype(bool)
    return hu, organ | lesions, lesions, affine


def _box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    points = np.argwhere(mask)
    return tuple(
        slice(max(int(lo) - margin, 0), min(int(hi) + margin + 1, n))
        for lo, hi, n in zip(points.min(0), points.max(0), mask.shape)
    )


def stride_artifact(hu: np.ndarray, region: np.ndarray, period: int = STRIDE) -> float:
    """Share of the high-pass energy in ``region`` that repeats with ``period`` voxels (see the module doc)."""
    residual = hu - ndimage.uniform_filter(hu.astype(np.float64), period, mode="nearest")
    values = residual[region]
    variance = float(values.var())
    if variance <= 0 or values.size < 8 * period**3:
        return float("nan")
    phase = np.zeros(hu.shape, dtype=np.int64)
    for axis in range(3):
        shape = [1, 1, 1]
        shape[axis] = hu.shape[axis]
        phase = phase * period + (np.arange(hu.shape[axis]) % period).reshape(shape)
    phases = phase[region]
    counts = np.bincount(phases, minlength=period**3)
    sums = np.bincount(phases, weights=values, minlength=period**3)
    present = counts > 0
    means = sums[present] / counts[present]
    weights = counts[present] / counts[present].sum()
    spread = float((weights * (means - values.mean()) ** 2).sum())
    noise = variance * float((weights / counts[present]).sum())
    return (spread - noise) / variance


def sphericity(mask: np.ndarray) -> float:
    """``π^⅓ (6V)^⅔ / A`` of a 1 mm mask, the area by the co-area formula on the mask smoothed by σ = 0.7 mm."""
    padded = np.pad(mask.astype(np.float64), 3)
    smooth = ndimage.gaussian_filter(padded, 0.7)
    area = float(np.sqrt(sum(g**2 for g in np.gradient(smooth))).sum())
    volume = float(mask.sum())
    return float(math.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / area) if area > 0 else float("nan")


def elongation(mask: np.ndarray) -> float:
    """√(λ_minor / λ_major) of the voxel coordinates' covariance (1 = round in its two largest directions)."""
    points = np.argwhere(mask).astype(np.float64)
    if len(points) < 4:
        return float("nan")
    eigen = np.sort(np.linalg.eigvalsh(np.cov(points.T)))
    return float(math.sqrt(max(eigen[1], 0.0) / eigen[2])) if eigen[2] > 0 else float("nan")


def intensity_drop(local: np.ndarray, lesion: np.ndarray, ring_mean: float, contrast: float) -> np.ndarray:
    """Where the lesion is dark, as the image shows it rather than the label: voxels within 3 mm of the lesion whose HU
    (smoothed by σ = 1 mm) lies more than half the contrast below the ring, the component overlapping the lesion most.
    Empty when the lesion is not darker than its ring."""
    if not contrast > 0:
        return np.zeros(lesion.shape, bool)
    near = ndimage.distance_transform_edt(~lesion) <= 3.0
    dark = (ndimage.gaussian_filter(local.astype(np.float64), 1.0) < ring_mean - 0.5 * contrast) & near
    components, count = ndimage.label(dark, np.ones((3, 3, 3)))
    if count == 0:
        return dark
    overlap = np.bincount(components[lesion], minlength=count + 1)
    overlap[0] = 0
    return components == int(overlap.argmax()) if overlap.max() > 0 else np.zeros(lesion.shape, bool)


def measure_case(case: LabelledCase) -> list[dict[str, Any]]:
    """Features of every lesion of ``case`` (see the module doc), one dict per lesion."""
    return measure_case_counted(case)[0]


def measure_case_counted(case: LabelledCase) -> tuple[list[dict[str, Any]], int]:
    """:func:`measure_case` and the number of tumour components left out as smaller than :data:`MIN_LESION_MM3`."""
    if not case.lesions.any():
        return [], 0
    hu, organ, lesions, affine = _one_mm_box(case)
    components, count = lesion_components(lesions)
    core = organ_core(organ & ~lesions, lesions)
    core_mean, core_std = intensity_statistics(hu, core)
    gradient = np.sqrt(sum(g**2 for g in np.gradient(hu.astype(np.float64))))
    sizes = np.bincount(components.ravel(), minlength=count + 1)
    native_voxel_mm = float(np.max(case.ct.spacing))
    records = []
    for index in range(1, count + 1):
        if sizes[index] < MIN_LESION_MM3:
            continue
        box = _box(components == index, int(RING_MM[1] + OTHER_LESION_GAP_MM + 3))
        lesion = components[box] == index
        others = lesions[box] & ~lesion
        outside = ndimage.distance_transform_edt(~lesion)
        near_others = ndimage.distance_transform_edt(~others) <= OTHER_LESION_GAP_MM if others.any() else others
        ring = (outside > RING_MM[0]) & (outside <= RING_MM[1]) & organ[box] & ~lesions[box] & ~near_others
        local = hu[box]
        lesion_mean, lesion_std = intensity_statistics(local, lesion)
        ring_mean, _ = intensity_statistics(local, ring)
        contrast = ring_mean - lesion_mean
        shell = lesion & ~ndimage.binary_erosion(lesion, np.ones((3, 3, 3)))
        edge = float(gradient[box][shell].mean())
        grown = ndimage.distance_transform_edt(~lesion) <= 2.0
        center = ndimage.center_of_mass(components == index)
        artifact = stride_artifact(local, grown)
        drop = intensity_drop(local, lesion, ring_mean, contrast)
        drop_measurable = drop.sum() >= MIN_LESION_MM3
        records.append(
            {
                "case": case.name,
                "center_mm": [round(float(v), 1) for v in (affine @ np.append(center, 1.0))[:3]],
                "diameter_mm": equivalent_diameter_mm(int(sizes[index])),
                # across the CT's own (coarsest) voxels: a lesion a few voxels wide is partial-volume diluted
                "native_voxels_across": equivalent_diameter_mm(int(sizes[index])) / native_voxel_mm,
                "lesion_hu": lesion_mean,
                "organ_core_hu": core_mean,
                "organ_core_std_hu": core_std,
                "contrast_hu": contrast,
                "contrast_to_organ_mean": contrast / core_mean if core_mean else float("nan"),
                "contrast_to_organ_std": contrast / core_std if core_std else float("nan"),
                "internal_std_to_organ_std": lesion_std / core_std if core_std else float("nan"),
                "edge_to_contrast_per_mm": edge / contrast if contrast > 0 else float("nan"),
                "stride_artifact": artifact,
                "sphericity": sphericity(lesion),
                "elongation": elongation(lesion),
                "drop_sphericity": sphericity(drop) if drop_measurable else float("nan"),
                "drop_elongation": elongation(drop) if drop_measurable else float("nan"),
                # for the picture: an axial patch through the centre, relative to the organ mean
                "_patch": _axial_patch(hu, center, core_mean),
                # for the machine reader (difftumor.evaluation.machine_reader)
                "_reader": reader_features(local, organ[box], lesion, others, core_mean, core_std, artifact),
            }
        )
    return records, int(np.count_nonzero(sizes[1:] < MIN_LESION_MM3))


def _axial_patch(hu: np.ndarray, center: Sequence[float], organ_mean: float, size: int = 48) -> np.ndarray:
    x, y, z = (int(round(v)) for v in center)
    half = size // 2
    plane = np.full((size, size), organ_mean - 150.0, dtype=np.float32)
    xs, ys = slice(max(x - half, 0), min(x + half, hu.shape[0])), slice(max(y - half, 0), min(y + half, hu.shape[1]))
    plane[xs.start - (x - half) : xs.stop - (x - half), ys.start - (y - half) : ys.stop - (y - half)] = hu[xs, ys, z]
    return plane - organ_mean


# -- reading the groups ---------------------------------------------------------------------------------------


def synthesis_manifests(folder: Path) -> list[Path]:
    """The ``tumors.json`` of a ``difftumor synthesize`` output folder, or of every such folder below it (a batch,
    or folders of batches; hidden folders — temporaries of a run in progress — are left out)."""
    if (folder / "tumors.json").is_file():
        return [folder / "tumors.json"]
    manifests = sorted(
        path
        for path in folder.rglob("tumors.json")
        if not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    if not manifests:
        raise DiffTumorInputError(
            f"{folder} holds no tumors.json", "pass a folder written by `difftumor synthesize` (or a batch of them)"
        )
    return manifests


def synthesis_group(manifest: dict[str, Any]) -> str:
    """The group a synthesis is measured in: its synthesizer and variant, and whether the diffusion synthesizer's
    contrast cap was off (e.g. ``diffusion (relative)``, ``diffusion (relative, cap off)``)."""
    group = str(manifest.get("synthesizer", "synthetic"))
    details = [str(manifest["variant"])] if manifest.get("variant") else []
    if group == "diffusion" and "max_contrast" in manifest and manifest["max_contrast"] is None:
        details.append("cap off")
    return f"{group} ({', '.join(details)})" if details else group


#: What :func:`synthesis_organ` says of an output that does not record its organ.
UNKNOWN_ORGAN = "unknown organ"


def synthesis_organ(manifest: dict[str, Any]) -> str:
    """The organ a synthesis painted (``input.organ`` of its ``tumors.json``)."""
    return str(manifest.get("input", {}).get("organ") or UNKNOWN_ORGAN)


@dataclass
class SyntheticCase:
    """One ``difftumor synthesize`` output as the comparison reads it."""

    group: str
    organ: str
    case: LabelledCase
    #: the synthesis's own plausibility warnings (``tumors.json``), repeated in the report
    warnings: list[str]


def _synthesis_cases(folder: Path) -> Iterable[SyntheticCase]:
    """Cases of a ``difftumor synthesize`` output folder, or of every such folder below it."""
    for manifest_path in synthesis_manifests(folder):
        manifest = json.loads(manifest_path.read_text())
        ct = load_volume(manifest_path.parent / "ct.nii.gz", "CT")
        labels = np.rint(load_volume(manifest_path.parent / "label.nii.gz", "label map").array).astype(np.int64)
        tumor_label = int(manifest["tumor_label"])
        organ_label = manifest.get("input", {}).get("organ_label") or 1
        organ = (labels == organ_label) | (labels == tumor_label)
        name = str(manifest_path.parent.relative_to(folder)) if manifest_path.parent != folder else folder.name
        yield SyntheticCase(
            synthesis_group(manifest),
            synthesis_organ(manifest),
            LabelledCase(name, ct, organ, labels == tumor_label),
            [str(w) for w in manifest.get("warnings", [])],
        )


def _real_cases(source: Path, organ_values: Sequence[int], tumor_values: Sequence[int]) -> Iterable[LabelledCase]:
    """Labelled CTs: a datalist (``image``/``label``) or a folder with ``images/`` and ``labels/`` (by name)."""
    if source.is_file():
        from ..data.datalists import read_cases

        pairs = [(Path(c["image"]), Path(c["label"])) for c in read_cases(source, require_label=True)]
    elif (source / "images").is_dir() and (source / "labels").is_dir():
        from .evaluate import _nifti

        images, labels = _nifti(source / "images"), _nifti(source / "labels")
        pairs = [(images[name], labels[name]) for name in sorted(images) if name in labels]
    else:
        raise DiffTumorInputError(
            f"{source} is neither a datalist nor a folder with images/ and labels/",
            "pass labelled CTs as a datalist JSON or as images/ + labels/ folders",
        )
    if not pairs:
        raise DiffTumorInputError(f"{source} has no labelled CT", "pair images and labels by file name")
    for image, label in pairs:
        ct = load_volume(image, "CT")
        label_volume = load_volume(label, "label map")
        if label_volume.shape != ct.shape:
            raise DiffTumorInputError(f"label {label} is not on the grid of {image}", "pass each CT's own label map")
        # the one label check of the project: integer values, not transposed, in the CT's world box
        values = label_map_on_grid(label_volume, ct, "label map", "CT")
        tumor = np.isin(values, tumor_values)
        name = image.name.removesuffix(".gz").removesuffix(".nii")
        yield LabelledCase(name, ct, np.isin(values, organ_values) | tumor, tumor)


# -- comparing ------------------------------------------------------------------------------------------------


def _summary(values: list[float]) -> dict[str, Any]:
    finite = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return {"n": 0}
    q1, median, q3 = np.percentile(finite, [25, 50, 75])
    return {
        "n": int(finite.size),
        "median": float(median),
        "iqr": [float(q1), float(q3)],
        "range": [float(finite.min()), float(finite.max())],
    }


def compare(groups: dict[str, list[dict[str, Any]]], reference: str) -> dict[str, Any]:
    """Per size bin and feature: median [IQR] per group, and for every other group the ratio of medians to
    ``reference``'s, the Wasserstein distance and the two-sample Kolmogorov–Smirnov statistic and p-value."""
    table: dict[str, Any] = {}
    for bin_name, (low, high) in SIZE_BINS.items():
        in_bin = {g: [r for r in records if low <= r["diameter_mm"] < high] for g, records in groups.items()}
        if not any(in_bin.values()):
            continue
        rows: dict[str, Any] = {}
        for feature in FEATURES:
            row: dict[str, Any] = {g: _summary([r[feature] for r in in_bin[g]]) for g in groups}
            real = np.asarray([r[feature] for r in in_bin.get(reference, []) if np.isfinite(r[feature])])
            for group in groups:
                if group == reference:
                    continue
                other = np.asarray([r[feature] for r in in_bin[group] if np.isfinite(r[feature])])
                if real.size and other.size:
                    test = stats.ks_2samp(other, real)
                    ratio = float(np.median(other) / np.median(real)) if np.median(real) else float("nan")
                    row[group].update(
                        ratio_to_real=ratio,
                        wasserstein=float(stats.wasserstein_distance(other, real)),
                        ks=float(test.statistic),
                        ks_p=float(test.pvalue),
                    )
            rows[feature] = row
        table[bin_name] = rows
    return table


def markdown(table: dict[str, Any], groups: Sequence[str], reference: str) -> str:
    """The comparison as Markdown: one table per size bin, median [IQR] and (for synthetic groups) the ratio of
    medians to the real lesions' and the KS statistic."""

    def show(cell: dict[str, Any], digits: int) -> str:
        if not cell.get("n"):
            return "–"
        low, high = cell["iqr"]
        text = f"{cell['median']:.{digits}f} [{low:.{digits}f}–{high:.{digits}f}]"
        if "ratio_to_real" in cell:
            text += f" ×{cell['ratio_to_real']:.2f}, KS {cell['ks']:.2f}"
        return text

    lines = []
    for bin_name, rows in table.items():
        counts = ", ".join(f"{g} n={rows['diameter_mm'][g].get('n', 0)}" for g in groups)
        lines += [
            f"**{bin_name}** ({counts})",
            "",
            "| feature | " + " | ".join(groups) + " |",
            "|---|" + "---|" * len(groups),
        ]
        for feature, row in rows.items():
            digits = {"stride_artifact": 3, "diameter_mm": 1, "lesion_hu": 1, "contrast_hu": 1}.get(feature, 2)
            lines.append(f"| {feature} | " + " | ".join(show(row[g], digits) for g in groups) + " |")
        lines.append("")
    lines.append(f"Ratios (×) and KS are against the {reference!r} group: the median of the group ÷ the real median.")
    return "\n".join(lines)


#: Lesions the machine reader compares: early ones (equivalent diameter < 20 mm), what synthesis here is for.
READER_MAX_DIAMETER_MM = 20.0
#: Features compared between a model and its rule-only ablation: the relative contrasts the rule sets, and what the
#: rule does not set (:data:`MODEL_FEATURES`), where a model has to show itself. Both share the tumour masks, so the
#: label's own size and shape are not compared.
RULE_FEATURES = ("contrast_to_organ_mean", "contrast_to_organ_std")
MODEL_FEATURES = (
    "internal_std_to_organ_std",
    "edge_to_contrast_per_mm",
    "drop_sphericity",
    "drop_elongation",
    "stride_artifact",
)
ABLATION_GROUP = "rule-only"


def run_readers(groups: dict[str, list[dict[str, Any]]], reference: str, seed: int = 0) -> list[ReaderResult]:
    """A machine reader (:func:`difftumor.evaluation.machine_reader.machine_reader`) for every group against
    ``reference``, on lesions < :data:`READER_MAX_DIAMETER_MM`."""
    early = {
        group: [r for r in records if r["diameter_mm"] < READER_MAX_DIAMETER_MM and "_reader" in r]
        for group, records in groups.items()
    }
    real = early.get(reference, [])
    return [
        machine_reader(
            [r["_reader"] for r in real],
            [r["_reader"] for r in records],
            group=group,
            real_sizes=[r["diameter_mm"] for r in real],
            synthetic_sizes=[r["diameter_mm"] for r in records],
            seed=seed,
        )
        for group, records in early.items()
        if group != reference
    ]


def model_against_rule(
    table: dict[str, Any], readers: Sequence[ReaderResult], model_group: str, rule_group: str = ABLATION_GROUP
) -> dict[str, Any]:
    """Per feature (early lesions): the Wasserstein distance of the model's and the rule-only ablation's lesions to
    the real ones, and which is closer; and the same for the machine reader's AUC (distance to 0.5)."""
    rows = table.get("early <20mm", {})
    features = {}
    for feature in (*RULE_FEATURES, *MODEL_FEATURES):
        model, rule = rows.get(feature, {}).get(model_group, {}), rows.get(feature, {}).get(rule_group, {})
        if "wasserstein" not in model or "wasserstein" not in rule:
            continue
        a, b = model["wasserstein"], rule["wasserstein"]
        features[feature] = {
            "model": a,
            "rule_only": b,
            "closer": "tie" if math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) else "model" if a < b else "rule-only",
            "set_by_rule": feature in RULE_FEATURES,
        }
    by_group = {r.group: r for r in readers}
    reader = {}
    if model_group in by_group and rule_group in by_group:
        a, b = by_group[model_group].auc, by_group[rule_group].auc
        if np.isfinite(a) and np.isfinite(b):
            reader = {"model": a, "rule_only": b, "closer": "model" if abs(a - 0.5) < abs(b - 0.5) else "rule-only"}
    return {"model_group": model_group, "rule_group": rule_group, "features": features, "reader_auc": reader}


def model_against_rule_markdown(result: dict[str, Any]) -> str:
    model, rule = result["model_group"], result["rule_group"]
    lines = [
        f"**{model} against its ablation {rule}** (lesions < 20 mm; Wasserstein distance to the real lesions, "
        "smaller is closer)",
        "",
        f"| feature | set by the rule | {model} | {rule} | closer to real |",
        "|---|---|---|---|---|",
    ]
    for feature, row in result["features"].items():
        lines.append(
            f"| {feature} | {'yes' if row['set_by_rule'] else 'no'} | {row['model']:.3g} | {row['rule_only']:.3g} | "
            f"{row['closer']} |"
        )
    if result["reader_auc"]:
        auc = result["reader_auc"]
        lines.append(
            f"| machine reader AUC (distance to 0.5) | no | {auc['model']:.2f} | {auc['rule_only']:.2f} | "
            f"{auc['closer']} |"
        )
    free = [row for row in result["features"].values() if not row["set_by_rule"]]
    won = sum(row["closer"] == "model" for row in free)
    lines += [
        "",
        f"The model is closer to real than the rule alone on {won} of {len(free)} features the rule does not set.",
    ]
    return "\n".join(lines)


@dataclass
class RealismReport:
    groups: dict[str, list[dict[str, Any]]]
    table: dict[str, Any]
    markdown: str
    reference: str
    readers: list[ReaderResult] = field(default_factory=list)
    ablations: list[dict[str, Any]] = field(default_factory=list)
    #: what was read: per input folder, the cases, the lesions measured and the components too small to measure
    found: list[dict[str, Any]] = field(default_factory=list)
    #: what may make a comparison misleading: organs pooled or compared across, lesions a few voxels wide, the
    #: syntheses' own plausibility warnings
    warnings: list[str] = field(default_factory=list)


#: A lesion narrower than this many of its CT's own voxels is mostly partial volume there: its measured contrast
#: is diluted (on a 3 mm CT, tiny lesions showed ×0.25 of real contrast), whatever painted it.
FEW_VOXELS_ACROSS = 3.0


def realism(
    synthetic: Sequence[str | os.PathLike],
    real: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    truth_labels: str = "internal",
    overwrite: bool = False,
    extra_groups: dict[str, Sequence[LabelledCase]] | None = None,
    readers: bool = True,
    organ: str | None = None,
) -> RealismReport:
    """Measure the lesions of ``real`` (labelled CTs) and ``synthetic`` (``difftumor synthesize`` outputs), compare
    them feature by feature and with a machine reader, and (with ``out``) write ``realism.json``, ``realism.md`` and
    ``realism.png`` into the folder ``out``.

    Args:
        extra_groups: more synthetic groups given as cases in memory, e.g. the rule-only ablation of a diffusion
            synthesis (:func:`difftumor.synthesis.ablation.rule_only_cases`); a model group is compared with the
            group :data:`ABLATION_GROUP` when both are present.
        readers: run the machine reader for every synthetic group.
        organ: the organ of the real lesions. Syntheses of another organ (``tumors.json``) form groups of their
            own, named with their organ, and the report warns. Default: the syntheses' organ when they share one.
    """
    from ..synthesis.geometry import ORGANS
    from .evaluate import truth_scheme

    scheme = truth_scheme(truth_labels)
    if not real:
        raise DiffTumorInputError(
            "no real lesions given", "pass --real with labelled CTs (datalist or images/+labels/)"
        )
    if organ is not None and organ not in ORGANS:
        raise DiffTumorInputError(f"unknown organ {organ!r}", f"choose one of {', '.join(ORGANS)}")
    groups: dict[str, list[dict[str, Any]]] = {"real": []}
    found: list[dict[str, Any]] = []
    warnings: list[str] = []
    for source in real:
        entry = {"source": str(source), "kind": "real", "cases": 0, "lesions": 0, "too_small": 0}
        for case in _real_cases(Path(source), scheme["organ"], scheme["tumor"]):
            records, small = measure_case_counted(case)
            groups["real"] += records
            entry.update(cases=entry["cases"] + 1, lesions=entry["lesions"] + len(records))
            entry["too_small"] += small
        found.append(entry)
    # The organs from the manifests alone (JSON): the cases themselves are loaded one at a time below.
    manifest_organs = [
        synthesis_organ(json.loads(path.read_text()))
        for source in synthetic
        for path in synthesis_manifests(Path(source))
    ]
    organs = sorted({o for o in manifest_organs if o != UNKNOWN_ORGAN})
    reference_organ = organ or (organs[0] if len(organs) == 1 else None)
    if reference_organ is None and len(organs) > 1:
        warnings.append(
            f"syntheses of {' and '.join(organs)} were given against one set of real lesions: each group is named "
            "by its organ; pass --organ with the real lesions' organ"
        )

    def group_of(synthesis: SyntheticCase) -> str:
        """Named by its organ when organs are mixed without a reference, or when it is not the reference organ
        (outputs that do not record their organ are taken to be of the reference organ)."""
        if reference_organ is None:
            mixed = len(organs) > 1
        else:
            mixed = synthesis.organ not in (reference_organ, UNKNOWN_ORGAN)
        return f"{synthesis.group} [{synthesis.organ}]" if mixed else synthesis.group

    for source in synthetic:
        entry = {"source": str(source), "kind": "synthetic", "cases": 0, "lesions": 0, "too_small": 0, "groups": []}
        for synthesis in _synthesis_cases(Path(source)):
            group = group_of(synthesis)
            records, small = measure_case_counted(synthesis.case)
            groups.setdefault(group, []).extend(records)
            entry.update(cases=entry["cases"] + 1, lesions=entry["lesions"] + len(records))
            entry["too_small"] += small
            entry["groups"] = sorted({*entry["groups"], group})
            warnings += [f"{synthesis.case.name}: {message}" for message in synthesis.warnings]
        found.append(entry)
    if reference_organ is not None:
        for other in sorted(set(organs) - {reference_organ}):
            warnings.append(
                f"{other} tumours are compared with real {reference_organ} lesions (groups marked [{other}]); "
                f"measure them against real {other} lesions"
            )
    for group, cases in (extra_groups or {}).items():
        for case in cases:
            groups.setdefault(group, []).extend(measure_case(case))
    if not groups["real"]:
        raise DiffTumorInputError("the real CTs hold no lesion", "check --truth-labels and the label maps")
    for group, records in groups.items():
        narrow = [r for r in records if r["native_voxels_across"] < FEW_VOXELS_ACROSS]
        if narrow:
            advice = (
                "compare them with synthetic lesions painted on scans of the same slice thickness"
                if group == "real"
                else "compare lesions painted and labelled on a grid of about 1 mm (synthesize a resampled copy, as "
                "scripts/realism_check.py does)"
            )
            warnings.append(
                f"{len(narrow)} of {len(records)} {group} lesions are under {FEW_VOXELS_ACROSS:g} voxels across on "
                f"their CT's own grid: partial volume dilutes their contrast there; {advice}"
            )
    table = compare(groups, "real")
    verdicts = run_readers(groups, "real") if readers else []
    ablations = [
        model_against_rule(table, verdicts, group)
        for group in groups
        if group not in ("real", ABLATION_GROUP) and ABLATION_GROUP in groups and group.startswith("diffusion")
    ]
    text = markdown(table, list(groups), "real")
    if verdicts:
        text += "\n\n" + reader_markdown(verdicts)
    for ablation in ablations:
        text += "\n\n" + model_against_rule_markdown(ablation)
    text = found_markdown(found, warnings) + "\n\n" + text
    report = RealismReport(groups, table, text, "real", verdicts, ablations, found, warnings)
    if out is not None:
        write_report(report, out, inputs=[*synthetic, *real], overwrite=overwrite)
    return report


def found_markdown(found: Sequence[dict[str, Any]], warnings: Sequence[str]) -> str:
    """What was read from each input, and the warnings, as Markdown."""
    lines = ["| input | kind | cases | lesions measured | components < 10 mm³ left out |", "|---|---|---|---|---|"]
    for entry in found:
        lines.append(
            f"| {entry['source']} | {entry['kind']} | {entry['cases']} | {entry['lesions']} | {entry['too_small']} |"
        )
    if warnings:
        lines += ["", "**Warnings**", "", *(f"- {message}" for message in warnings)]
    return "\n".join(lines)


def write_report(report: RealismReport, out: str | os.PathLike, inputs: Sequence[Any], overwrite: bool) -> Path:
    from .realism_sheet import realism_sheet

    lesions = {
        group: [{k: v for k, v in record.items() if not k.startswith("_")} for record in records]
        for group, records in report.groups.items()
    }
    content = {
        "difftumor_version": __version__,
        "reference_group": report.reference,
        "definitions": __doc__.split("\n\n", 2)[1:2] + [f"features: {', '.join(FEATURES)}"],
        "size_bins_mm": {k: [v[0], None if math.isinf(v[1]) else v[1]] for k, v in SIZE_BINS.items()},
        "comparison": report.table,
        "machine_reader": [r.as_dict() for r in report.readers],
        "model_against_rule": report.ablations,
        "found": report.found,
        "warnings": report.warnings,
        "lesions": lesions,
    }
    with atomic_folder(out, overwrite=overwrite, inputs=inputs, kind="realism") as folder:
        (folder / "realism.json").write_text(json.dumps(content, indent=1, allow_nan=True) + "\n")
        (folder / "realism.md").write_text(report.markdown + "\n")
        realism_sheet(report.groups).save(folder / "realism.png")
    return Path(out)
