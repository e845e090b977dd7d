"""Split one labelled CT's lesions into a training side and a test side, so that no model sees a test lesion.

A slab split leaks: lesions cross slab borders. Here the unit is the whole 3-D lesion (a 26-connected tumour
component): a lesion is on the test side, on the training side, or dropped. A training lesion is never closer than
``margin_mm`` to a test lesion; lesions that would be are dropped (ignored everywhere). Sides are chosen along a
direction in space (the first ``test_fraction`` of lesions ordered by their centres' projection), the direction,
among seeded random ones, that keeps the most training lesions — lesions cluster, and a compact test side loses
the fewest. The test zone (test and dropped lesions grown by ``margin_mm``, inside the organ) is removed from the
training image: its voxels are replaced by synthetic parenchyma (the organ's core mean and standard deviation,
noise smoothed like parenchyma), so trainers can use the training image as a whole CT.

Outputs (a folder): ``train_ct.nii.gz``, ``train_label.nii.gz`` (0 background, 1 organ, 2 training tumours;
the test zone is organ), ``healthy_ct.nii.gz`` / ``healthy_label.nii.gz`` (the training image with its training
lesions, grown by ``HEAL_MARGIN_MM``, replaced by parenchyma too: a tumour-free scan of the same organ for
synthetic-tumour training and negative controls; label 0/1), ``test_label.nii.gz`` (2 test tumours; training and
dropped lesions with their margin are 255, "ignore", for evaluation), ``split.json`` (every lesion: centre,
equivalent diameter, side).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..atomic import atomic_folder
from ..errors import DiffTumorInputError
from ..spatial import IGNORE_LABEL, equivalent_diameter_mm, lesion_components
from .volumes import Volume, load_volume, save_volume

#: Training lesions are healed with this rim so that their partial-volume border leaves no dark ring.
HEAL_MARGIN_MM = 3.0


def _grow(mask: np.ndarray, spacing: np.ndarray, margin_mm: float) -> np.ndarray:
    """Voxels within ``margin_mm`` (Euclidean, in mm) of ``mask``."""
    if margin_mm <= 0:
        return mask.copy()
    return ndimage.distance_transform_edt(~mask, sampling=spacing) <= margin_mm


def assign_sides(
    lesions: np.ndarray, count: int, spacing: np.ndarray, margin_mm: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Side of each lesion ``1..count``: ``"test"``, ``"train"`` or ``"dropped"`` (see the module doc)."""
    index = np.arange(1, count + 1)
    centres = np.asarray(ndimage.center_of_mass(lesions > 0, lesions, index)) * spacing
    wanted = max(1, min(count - 1, int(round(test_fraction * count))))
    directions = np.random.default_rng(seed).standard_normal((64, 3))
    best: np.ndarray | None = None
    for direction in directions:
        sides = np.full(count, "train", dtype=object)
        sides[np.argsort(centres @ direction, kind="stable")[:wanted]] = "test"
        test = np.isin(lesions, index[sides == "test"])
        distance = ndimage.distance_transform_edt(~test, sampling=spacing)
        closest = np.asarray(ndimage.minimum(distance, lesions, index))
        sides[(sides == "train") & (closest < margin_mm)] = "dropped"
        if best is None or (sides == "train").sum() > (best == "train").sum():
            best = sides
    return best


def _parenchyma(shape: tuple[int, ...], mean: float, std: float, rng: np.random.Generator) -> np.ndarray:
    # Smoothing white noise by σ = 0.8 voxel gives a lag-1 correlation near that of CT parenchyma; rescale to std.
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 0.8)
    return mean + std * noise / max(float(noise.std()), 1e-6)


# One pass over one label map: components, sides, test zone, healed image, labels and the record, in order; each step
# is a few lines that use the previous one's arrays.
def split_lesions(
    image: str | os.PathLike,
    label: str | os.PathLike,
    out: str | os.PathLike,
    organ_values: tuple[int, ...] = (1,),
    tumor_values: tuple[int, ...] = (2,),
    margin_mm: float = 10.0,
    test_fraction: float = 0.5,
    seed: int = 0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Split the lesions of ``label`` (on ``image``'s grid) and write the folder ``out`` (see the module doc).

    Clusters are assigned to the test side in a seeded random order until ``test_fraction`` of the lesions are
    there. Returns the content of ``split.json``.
    """
    ct, labels = load_volume(image, "CT"), load_volume(label, "label map")
    if labels.shape != ct.shape or not np.allclose(labels.affine, ct.affine, atol=1e-3):
        raise DiffTumorInputError(f"label map {label} is not on the grid of {image}", "pass the CT's own label map")
    if not 0 < test_fraction < 1:
        raise DiffTumorInputError(f"test fraction {test_fraction} is not in (0, 1)", "e.g. 0.5")
    values = np.rint(labels.array).astype(np.int64)
    tumor = np.isin(values, tumor_values)
    organ = np.isin(values, organ_values) | tumor
    spacing = ct.spacing
    lesions, count = lesion_components(tumor)
    if count < 2:
        raise DiffTumorInputError(f"{label} has {count} lesion(s); a split needs at least 2", "use another case")
    sides = assign_sides(lesions, count, spacing, margin_mm, test_fraction, seed)
    sizes = np.bincount(lesions.ravel(), minlength=count + 1)[1:]
    index = np.arange(1, count + 1)
    test_tumor = np.isin(lesions, index[sides == "test"])
    train_tumor = np.isin(lesions, index[sides == "train"])
    dropped = np.isin(lesions, index[sides == "dropped"])

    test_zone = _grow(test_tumor | dropped, spacing, margin_mm) & organ
    core = ndimage.binary_erosion(organ, iterations=2) & ~_grow(tumor, spacing, margin_mm)
    hu = ct.array.astype(np.float32)
    mean, std = float(hu[core].mean()), float(hu[core].std())
    train_ct = hu.copy()
    parenchyma = _parenchyma(hu.shape, mean, std, np.random.default_rng([seed, 1]))
    train_ct[test_zone] = parenchyma[test_zone]
    healthy_ct = train_ct.copy()
    healed = _grow(train_tumor, spacing, HEAL_MARGIN_MM) & organ
    healthy_ct[healed] = parenchyma[healed]
    organ_label = np.where(organ, 1, 0).astype(np.uint8)
    train_label = organ_label.copy()
    train_label[train_tumor] = 2
    test_label = organ_label.copy()
    # Strictly closer than the margin: training lesions are at least margin_mm from every test lesion.
    ignore = ndimage.distance_transform_edt(~(train_tumor | dropped), sampling=spacing) < margin_mm
    test_label[ignore & organ] = IGNORE_LABEL
    test_label[test_tumor] = 2

    voxel_mm3 = float(np.prod(spacing))
    records = []
    for index in range(1, count + 1):
        center = ndimage.center_of_mass(lesions == index)
        world = ct.affine @ np.append(center, 1.0)
        records.append(
            {
                "lesion": index,
                "side": str(sides[index - 1]),
                "center_mm": [round(float(v), 2) for v in world[:3]],
                "diameter_mm": round(equivalent_diameter_mm(int(sizes[index - 1]), voxel_mm3), 2),
            }
        )
    summary = {
        "difftumor_output": "lesion-split",
        "image": str(Path(image).resolve()),
        "label": str(Path(label).resolve()),
        "margin_mm": margin_mm,
        "seed": seed,
        "organ_core_hu": [round(mean, 2), round(std, 2)],
        "lesions": {side: int((sides == side).sum()) for side in ("train", "test", "dropped")},
        "early_lesions_20mm": {
            side: sum(r["side"] == side and r["diameter_mm"] <= 20 for r in records)
            for side in ("train", "test", "dropped")
        },
        "test_zone_voxels": int(test_zone.sum()),
        "records": records,
    }
    with atomic_folder(out, overwrite=overwrite, inputs=[image, label], kind="lesion-split") as folder:
        for name, array in (
            ("train_ct", train_ct.astype(ct.array.dtype)),
            ("train_label", train_label),
            ("healthy_ct", healthy_ct.astype(ct.array.dtype)),
            ("healthy_label", organ_label),
            ("test_label", test_label),
        ):
            save_volume(array, ct, folder / f"{name}.nii.gz", description=f"difftumor lesion-split {name}")
        (folder / "split.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def side_volumes(folder: str | os.PathLike) -> tuple[Volume, Volume, Volume]:
    """``(train_ct, train_label, test_label)`` of a split folder."""
    folder = Path(folder)
    return tuple(load_volume(folder / f"{name}.nii.gz") for name in ("train_ct", "train_label", "test_label"))
