"""Small real-CT training sets: crops of patient A (healthy liver) and of the LiTS upper half (real tumours)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from difftumor.data.layouts import prepare_datalist
from tests.helpers.volumes import LITS_CT, LITS_LABEL, PATIENT_A_CT, PATIENT_A_ORGANS


def _crop(source: Path, out: Path, box: tuple[slice, slice, slice], dtype) -> Path:
    image = nib.load(str(source))
    array = np.asanyarray(image.dataobj)[box].astype(dtype)
    affine = image.affine.copy()
    affine[:3, 3] = image.affine[:3, :3] @ np.array([s.start for s in box]) + image.affine[:3, 3]
    nib.save(nib.Nifti1Image(array, affine), str(out))
    return out


def small_training_set(folder: Path) -> dict[str, Path]:
    """Write cropped real CTs in the `folders` layout and prepare datalists (LiTS early split, all cases)."""
    lits_images, lits_labels = folder / "lits" / "images", folder / "lits" / "labels"
    healthy_images, healthy_labels = folder / "healthy" / "images", folder / "healthy" / "labels"
    for path in (lits_images, lits_labels, healthy_images, healthy_labels):
        path.mkdir(parents=True, exist_ok=True)
    # LiTS upper half at 1.5 mm: a 48 x 48 x 32 box through the liver with tumours (72 x 72 x 48 mm).
    lits_box = (slice(30, 78), slice(40, 88), slice(16, 48))
    _crop(LITS_CT, lits_images / "lits117.nii.gz", lits_box, np.int16)
    _crop(LITS_LABEL, lits_labels / "lits117.nii.gz", lits_box, np.uint8)
    # Patient A at 3 mm: a 24 x 24 x 16 box of the liver region, liver label only (TotalSegmentator id 5).
    organs = np.asanyarray(nib.load(str(PATIENT_A_ORGANS)).dataobj)
    center = np.round(np.argwhere(organs == 5).mean(0)).astype(int)
    patient_box = tuple(slice(int(c) - h, int(c) + h) for c, h in zip(center, (12, 12, 8)))
    _crop(PATIENT_A_CT, healthy_images / "patient_a.nii.gz", patient_box, np.int16)
    liver = _crop(PATIENT_A_ORGANS, healthy_labels / "patient_a.nii.gz", patient_box, np.uint8)
    image = nib.load(str(liver))
    nib.save(nib.Nifti1Image((np.asanyarray(image.dataobj) == 5).astype(np.uint8), image.affine), str(liver))

    lits = prepare_datalist("folders", folder / "lits", folder / "lits.json", organ="liver", early_max_diameter_mm=20)
    healthy = prepare_datalist("folders", folder / "healthy", folder / "healthy.json", organ="liver")
    combined = dict(lits)
    combined["data"] = [
        {**case, "image": str((folder / case["image"]).resolve()), "label": str((folder / case["label"]).resolve())}
        for case in lits["data"] + healthy["data"]
    ]
    (folder / "all.json").write_text(json.dumps(combined))
    return {"lits": folder / "lits.json", "healthy": folder / "healthy.json", "all": folder / "all.json"}
