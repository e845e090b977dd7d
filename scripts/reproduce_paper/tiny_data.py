"""Tiny stand-ins for the paper's datasets, in their own folder layouts, built from the repository's real CT.

Used by ``reproduce.py --tiny`` (CI) so that the protocol runs end to end without the public datasets. They exercise
the layouts and every stage; they measure nothing:

- ``LiTS/`` (lits layout): the upper half of LiTS volume 117 (``tests/data/lits117_upper``, CC BY-SA 4.0) at half
  resolution, and its mirror image, as two cases;
- ``Task07_Pancreas/`` (MSD layout) and ``KiTS/`` (kits layout): patient A's upper abdomen (``difftumor/assets/
  demo_case``, Apache-2.0) and its mirror image, with a 12 mm sphere (33 voxels) marked as tumour in the organ's
  label only (the CT is unchanged: a stand-in label, not a tumour);
- ``TotalSegmentator/`` (totalsegmentator layout): patient A and its mirror image as healthy CTs.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[2]
LITS = REPO / "tests" / "data" / "lits117_upper"
DEMO = REPO / "difftumor" / "assets" / "demo_case"
#: TotalSegmentator v2 ids in patient A's organ map.
PANCREAS, KIDNEYS, LIVER = (7,), (2, 3), (5,)


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))


def _upper_abdomen() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient A's CT and organ map cropped to the liver, pancreas and kidneys with a 15 mm margin."""
    ct, organs = nib.load(DEMO / "ct.nii.gz"), nib.load(DEMO / "organs.nii.gz")
    labels = np.asanyarray(organs.dataobj).astype(np.int16)
    wanted = np.argwhere(np.isin(labels, PANCREAS + KIDNEYS + LIVER))
    low, high = np.maximum(wanted.min(0) - 5, 0), np.minimum(wanted.max(0) + 6, labels.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    affine = ct.affine.copy()
    affine[:3, 3] = ct.affine[:3, :3] @ low + ct.affine[:3, 3]
    return np.asanyarray(ct.dataobj)[box].astype(np.int16), labels[box], affine


def _with_sphere(organ: np.ndarray, radius: int = 2) -> np.ndarray:
    """Label 1 = organ, 2 = a small sphere at the organ voxel deepest inside it."""
    from scipy import ndimage

    label = organ.astype(np.uint8)
    centre = np.unravel_index(np.argmax(ndimage.distance_transform_edt(organ)), organ.shape)
    grid = np.indices(organ.shape)
    sphere = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2
    label[sphere & organ] = 2
    return label


def build_tiny_data_root(root: Path) -> Path:
    """Write the tiny datasets under ``root`` (once) and return it."""
    if (root / "done").exists():
        return root
    ct = nib.load(LITS / "lits117_upper_ct.nii.gz")
    label = nib.load(LITS / "lits117_upper_label.nii.gz")
    # Every second voxel: a quarter of the work for each stage, lesions still there.
    hu = np.asanyarray(ct.dataobj)[::2, ::2, ::2]
    tumour_label = np.asanyarray(label.dataobj).astype(np.uint8)[::2, ::2, ::2]
    half = ct.affine.copy()
    half[:3, :3] *= 2
    for number, flip in ((0, False), (1, True)):
        image, seg = (np.flip(hu, 0), np.flip(tumour_label, 0)) if flip else (hu, tumour_label)
        _save(np.ascontiguousarray(image), half, root / "LiTS" / f"volume-{number}.nii.gz")
        _save(np.ascontiguousarray(seg), half, root / "LiTS" / f"segmentation-{number}.nii.gz")

    patient, organs, affine = _upper_abdomen()
    for number, flip in ((0, False), (1, True)):
        image, labels = (np.flip(patient, 0), np.flip(organs, 0)) if flip else (patient, organs)
        image, labels = np.ascontiguousarray(image), np.ascontiguousarray(labels)
        name = f"pancreas_{number:03d}.nii.gz"
        _save(image, affine, root / "Task07_Pancreas" / "imagesTr" / name)
        _save(_with_sphere(np.isin(labels, PANCREAS)), affine, root / "Task07_Pancreas" / "labelsTr" / name)
        kits = root / "KiTS" / f"case_{number:05d}"
        _save(image, affine, kits / "imaging.nii.gz")
        _save(_with_sphere(np.isin(labels, KIDNEYS)), affine, kits / "segmentation.nii.gz")
        _save(image, affine, root / "TotalSegmentator" / f"patient_a{number}" / "ct.nii.gz")
        _save(labels.astype(np.uint8), affine, root / "TotalSegmentator" / f"patient_a{number}" / "seg.nii.gz")
    (root / "Task07_Pancreas" / "dataset.json").write_text(
        json.dumps({"name": "Pancreas", "labels": {"0": "background", "1": "pancreas", "2": "cancer"}})
    )
    (root / "done").write_text("tiny stand-ins built by scripts/reproduce_paper/tiny_data.py\n")
    return root
