"""Dataset layouts -> one datalist with labels in one internal scheme.

Internal label scheme (written as new label files next to the datalist):

====  =========================================================================
0     background
1     organ (KiTS cysts count as organ, as the original does)
2     tumour — or, with ``early_max_diameter_mm``, an **early** tumour component
3     (only with ``early_max_diameter_mm``) a **mid/late** tumour component
====  =========================================================================

Tumour components are split by the diameter of the sphere of equal volume, with the voxel spacing from the file
header (the original's ``data_transfer.py`` rule, without its bugs): components under 8 voxels stay organ.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from .. import __version__
from ..atomic import atomic_file, atomic_folder, check_output
from ..errors import DiffTumorInputError
from ..spatial import equivalent_diameter_mm
from .registry import get_layout
from .volumes import load_volume

BACKGROUND, ORGAN, TUMOR, MIDLATE_TUMOR = 0, 1, 2, 3

#: TotalSegmentator v2 label ids of the organs DiffTumor works with.
TOTALSEGMENTATOR_IDS = {"liver": (5,), "pancreas": (7,), "kidney": (2, 3)}
#: Per-structure file names (AbdomenAtlas / TotalSegmentator ``segmentations/`` folders).
STRUCTURE_FILES = {
    "liver": (("liver",), ("liver_tumor", "liver_lesion", "hepatic_tumor")),
    "pancreas": (("pancreas",), ("pancreas_tumor", "pancreatic_tumor", "pancreatic_lesion")),
    "kidney": (("kidney_left", "kidney_right", "kidney"), ("kidney_tumor", "kidney_lesion", "kidney_cyst_")),
}


@dataclass
class SourceCase:
    """One case as found in a layout: the CT, and how to build its internal label map."""

    case_id: str
    image: Path
    build_label: Callable[[], tuple[np.ndarray, np.ndarray, nib.Nifti1Header | None]]


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.endswith((".nii", ".nii.gz")) and not p.name.startswith("."))


def _stem(path: Path) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", path.name)


def label_from_values(path: Path, organ_values: tuple[int, ...], tumor_values: tuple[int, ...]):
    """A :attr:`SourceCase.build_label` for a label file whose ``organ_values`` are organ and ``tumor_values``
    tumour (for scanners of new layouts as much as for the built-in ones)."""

    def build():
        volume = load_volume(path, "label map")
        values = np.asarray(volume.array).astype(np.int32)
        internal = np.zeros(values.shape, np.uint8)
        internal[np.isin(values, organ_values)] = ORGAN
        internal[np.isin(values, tumor_values)] = TUMOR
        return internal, volume.affine, volume.header

    return build


def _label_from_structures(folder: Path, organ: str):
    organ_names, tumor_names = STRUCTURE_FILES[organ]

    def build():
        internal, affine, header = None, None, None
        found_organ = False
        for path in sorted(folder.iterdir()):
            name = _stem(path)
            is_organ = name in organ_names
            is_tumor = any(name == t or (t.endswith("_") and name.startswith(t)) for t in tumor_names)
            if not (is_organ or is_tumor):
                continue
            volume = load_volume(path, "structure mask")
            if internal is None:
                internal, affine, header = np.zeros(volume.shape, np.uint8), volume.affine, volume.header
            if volume.shape != internal.shape:
                raise DiffTumorInputError(f"{path} has shape {volume.shape}, unlike the other masks of {folder}")
            mask = np.asarray(volume.array) > 0
            if is_organ:
                found_organ = True
                internal[mask & (internal == BACKGROUND)] = ORGAN
            else:
                internal[mask] = TUMOR
        if not found_organ:
            raise DiffTumorInputError(f"{folder} has no {'/'.join(organ_names)} mask", "check the organ name")
        return internal, affine, header

    return build


def scan_msd(root: Path, organ: str | None, options: dict) -> tuple[str, Iterator[SourceCase]]:
    images, labels = root / "imagesTr", root / "labelsTr"
    if not images.is_dir() or not labels.is_dir():
        raise DiffTumorInputError(
            f"{root} is not an MSD task folder (imagesTr/ and labelsTr/)", "pass e.g. Task03_Liver"
        )
    dataset = json.loads((root / "dataset.json").read_text()) if (root / "dataset.json").exists() else {}
    names = {int(k): v.lower() for k, v in dataset.get("labels", {}).items()}
    if organ is None:
        text = (dataset.get("name", "") + " " + root.name).lower()
        organ = next((o for o in ("liver", "pancreas", "kidney") if o in text), None)
        if organ is None:
            raise DiffTumorInputError(f"cannot tell the organ of {root}", "pass --organ liver|pancreas|kidney")
    organ_values = tuple(k for k, v in names.items() if organ in v) or (1,)
    tumor_values = tuple(k for k, v in names.items() if "tumour" in v or "tumor" in v or "cancer" in v) or (2,)

    def cases():
        for image in _nifti_files(images):
            label = labels / image.name
            if label.exists():
                yield SourceCase(_stem(image), image, label_from_values(label, organ_values, tumor_values))

    return organ, cases()


def scan_lits(root: Path, organ: str | None, options: dict) -> tuple[str, Iterator[SourceCase]]:
    def cases():
        for image in sorted(root.rglob("volume-*.nii*")):
            number = re.search(r"volume-(\d+)", image.name).group(1)
            label = next(iter(sorted(image.parent.glob(f"segmentation-{number}.nii*"))), None)
            if label is not None:
                yield SourceCase(f"lits_{int(number):03d}", image, label_from_values(label, (1,), (2,)))

    return "liver", cases()


def scan_kits(root: Path, organ: str | None, options: dict) -> tuple[str, Iterator[SourceCase]]:
    def cases():
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("case_")):
            image = folder / "imaging.nii.gz"
            label = next(
                (folder / n for n in ("segmentation.nii.gz", "aggregated_MAJ_seg.nii.gz") if (folder / n).exists()),
                None,
            )
            if image.exists() and label is not None:
                # KiTS: 1 kidney, 2 tumour, 3 cyst (KiTS21/23); cysts count as kidney, as in the original.
                yield SourceCase(folder.name, image, label_from_values(label, (1, 3), (2,)))

    return "kidney", cases()


def _structure_folders(root: Path, organ: str | None, layout: str) -> tuple[str, Iterator[SourceCase]]:
    if organ is None:
        raise DiffTumorInputError(f"the {layout} layout holds several organs", "pass --organ liver|pancreas|kidney")

    def cases():
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            image = next((folder / n for n in ("ct.nii.gz", "ct.nii") if (folder / n).exists()), None)
            if image is None:
                continue
            segmentations = folder / "segmentations"
            if segmentations.is_dir():
                yield SourceCase(folder.name, image, _label_from_structures(segmentations, organ))
                continue
            multi = next(
                (
                    folder / n
                    for n in ("seg.nii.gz", "segmentation.nii.gz", "combined_labels.nii.gz")
                    if (folder / n).exists()
                ),
                None,
            )
            if multi is not None and layout == "totalsegmentator":
                yield SourceCase(folder.name, image, label_from_values(multi, TOTALSEGMENTATOR_IDS[organ], ()))

    return organ, cases()


def scan_abdomenatlas(root: Path, organ: str | None, options: dict) -> tuple[str, Iterator[SourceCase]]:
    return _structure_folders(root, organ, "abdomenatlas")


def scan_totalsegmentator(root: Path, organ: str | None, options: dict) -> tuple[str, Iterator[SourceCase]]:
    return _structure_folders(root, organ, "totalsegmentator")


def scan_folders(root: Path, organ: str | None, options: dict) -> tuple[str, Iterator[SourceCase]]:
    organ_values, tumor_values = options.get("organ_values", (1,)), options.get("tumor_values", (2,))
    images, labels = root / "images", root / "labels"
    if not images.is_dir() or not labels.is_dir():
        raise DiffTumorInputError(f"{root} has no images/ and labels/ folders", "arrange the files that way")
    if organ is None:
        raise DiffTumorInputError("the folders layout does not say the organ", "pass --organ liver|pancreas|kidney")

    def cases():
        for image in _nifti_files(images):
            label = next(
                (
                    labels / n
                    for n in (image.name, _stem(image) + ".nii.gz", _stem(image) + ".nii")
                    if (labels / n).exists()
                ),
                None,
            )
            if label is not None:
                yield SourceCase(_stem(image), image, label_from_values(label, organ_values, tumor_values))

    return organ, cases()


def _portable(path: Path, base: Path) -> str:
    """``path`` relative to ``base`` when it lies below it (the datalist moves with its folder), else absolute."""
    path, base = path.absolute(), base.absolute()
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def split_by_diameter(label: np.ndarray, spacing: np.ndarray, early_max_diameter_mm: float) -> tuple[int, int]:
    """Relabel tumour components in place: ≤ the diameter -> 2 (early), larger -> 3 (mid/late); < 8 voxels -> organ.

    Returns the numbers of early and mid/late components.
    """
    components, count = ndimage.label(label == TUMOR)
    if count == 0:
        return 0, 0
    voxels = np.bincount(components.ravel(), minlength=count + 1)
    voxel_volume = float(np.prod(spacing))
    early = midlate = 0
    classes = np.zeros(count + 1, np.uint8)
    for index in range(1, count + 1):
        if voxels[index] < 8:
            classes[index] = ORGAN
        elif equivalent_diameter_mm(int(voxels[index]), voxel_volume) <= early_max_diameter_mm:
            classes[index], early = TUMOR, early + 1
        else:
            classes[index], midlate = MIDLATE_TUMOR, midlate + 1
    tumour = components > 0
    label[tumour] = classes[components[tumour]]
    return early, midlate


def prepare_datalist(
    layout: str,
    root: str | os.PathLike,
    out: str | os.PathLike,
    organ: str | None = None,
    early_max_diameter_mm: float | None = None,
    labels_dir: str | os.PathLike | None = None,
    organ_values: tuple[int, ...] = (1,),
    tumor_values: tuple[int, ...] = (2,),
    overwrite: bool = False,
) -> dict:
    """Scan ``root`` in ``layout`` (a name of :func:`~difftumor.data.registry.available_layouts`), write
    internal-scheme labels and the datalist JSON ``out``.

    Returns:
        The datalist (``{"layout", "organ", "label_scheme", "data": [...]}``), also written to ``out``.
    """
    root, out = Path(root), Path(out)
    scanner = get_layout(layout)
    if not root.is_dir():
        raise DiffTumorInputError(f"dataset folder {root} does not exist", "check the path")
    if out.suffix.lower() != ".json":
        raise DiffTumorInputError(f"--out {out} is not a .json file name", "e.g. --out liver.json")
    labels_dir = Path(labels_dir) if labels_dir else out.with_name(out.stem + "_labels")
    check_output(out, "file", (root,), overwrite, kind="datalist")
    check_output(labels_dir, "folder", (root, out), overwrite, option="--labels-dir", kind="labels")
    organ, found = scanner.scan(root, organ, {"organ_values": organ_values, "tumor_values": tumor_values})
    cases = _unique_cases(list(found))
    with atomic_folder(labels_dir, overwrite, (root, out), kind="labels") as written_labels:
        entries = _write_labels(cases, written_labels, labels_dir, out, organ, early_max_diameter_mm)
        if not entries:
            raise DiffTumorInputError(
                f"no cases found in {root} for the {layout} layout",
                "check the layout name and the folder structure (see `difftumor data prepare -h`)",
            )
    scheme = {"0": "background", "1": organ}
    if early_max_diameter_mm is None:
        scheme["2"] = f"{organ} tumour"
    else:
        scheme["2"] = f"early {organ} tumour (equivalent diameter <= {early_max_diameter_mm:g} mm)"
        scheme["3"] = f"mid/late {organ} tumour (> {early_max_diameter_mm:g} mm)"
    datalist = {
        "difftumor_output": "datalist",
        "difftumor_version": __version__,
        "layout": layout,
        "root": str(root.resolve()),
        "organ": organ,
        "label_scheme": scheme,
        "data": entries,
    }
    with atomic_file(out, overwrite, (root,), kind="datalist") as temporary:
        temporary.write_text(json.dumps(datalist, indent=2) + "\n")
    return datalist


def _unique_cases(cases: list[SourceCase]) -> list[SourceCase]:
    """Refuse two cases with one id (``a.nii`` beside ``a.nii.gz``): their labels would overwrite each other."""
    seen: dict[str, SourceCase] = {}
    for case in cases:
        key = case.case_id.casefold()
        if key in seen:
            raise DiffTumorInputError(
                f"cases {seen[key].image} and {case.image} both get the id {case.case_id}",
                "keep one of them (or rename one) in the dataset folder",
            )
        seen[key] = case
    return cases


def _write_labels(
    cases: Iterator[SourceCase],
    folder: Path,
    labels_dir: Path,
    out: Path,
    organ: str,
    early_max_diameter_mm: float | None,
) -> list[dict]:
    """Write each case's internal-scheme label into ``folder`` (the temporary of ``labels_dir``); datalist entries."""
    entries = []
    for case in cases:
        label, affine, header = case.build_label()
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
        early = midlate = 0
        if early_max_diameter_mm is not None:
            early, midlate = split_by_diameter(label, spacing, early_max_diameter_mm)
        else:
            early = int(ndimage.label(label == TUMOR)[1])
        name = f"{case.case_id}.nii.gz"
        image = nib.Nifti1Image(label, affine, header=header)
        image.set_data_dtype(np.uint8)
        nib.save(image, str(folder / name))
        entries.append(
            {
                "id": case.case_id,
                "image": _portable(case.image, out.parent),
                "label": _portable(labels_dir / name, out.parent),
                "organ": organ,
                "has_tumor": bool(early or midlate),
                "tumor_components": early + midlate,
                "early_tumors": early if early_max_diameter_mm is not None else None,
                "midlate_tumors": midlate if early_max_diameter_mm is not None else None,
                "organ_voxels": int((label > 0).sum()),
            }
        )
    return entries
