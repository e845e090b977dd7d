"""Write a synthesis: ``ct.nii.gz``, ``label.nii.gz``, ``tumors.json`` and ``preview.png``, all or nothing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..atomic import atomic_folder
from ..data.volumes import Volume, as_stored, save_volume
from ..errors import DiffTumorInputError
from ..label_descriptions import write_label_descriptions
from .engine import SynthesisResult
from .preview import preview_image

OUTPUT_FILES = (
    "ct.nii.gz",
    "label.nii.gz",
    "label.labels.json",
    "label.ctbl",
    "label.itksnap.txt",
    "tumors.json",
    "preview.png",
)


def manifest(
    result: SynthesisResult, ct: Volume, organ_mask: Volume, organ: str, organ_label: int | None, settings: dict
) -> dict[str, Any]:
    return {
        "difftumor_version": __version__,
        "input": {"ct": str(ct.path), "organ_mask": str(organ_mask.path), "organ": organ, "organ_label": organ_label},
        "coordinates": "world RAS+ millimetres (NIfTI scanner space), tumour centres of mass",
        "tumor_label": result.tumor_label,
        "changed_voxels": result.changed_voxels,
        "warnings": result.warnings,
        **settings,
        "tumors": [tumor.manifest() for tumor in result.tumors],
    }


def label_names(labels: np.ndarray, tumor_label: int, manifest_data: dict[str, Any]) -> dict[int, str]:
    """Names of the labels in a synthesis label map: the organ, its tumour, and the other structures by number."""
    organ = manifest_data.get("input", {}).get("organ", "organ")
    organ_label = manifest_data.get("input", {}).get("organ_label") or 1
    names = {0: "background"}
    for value in np.unique(labels):
        value = int(value)
        if value == tumor_label:
            names[value] = f"{organ} tumour"
        elif value == organ_label:
            names[value] = organ
        elif value:
            names[value] = f"label {value}"
    names.setdefault(tumor_label, f"{organ} tumour")
    return names


def write_outputs(
    out: str | os.PathLike,
    result: SynthesisResult,
    ct: Volume,
    manifest_data: dict[str, Any],
    overwrite: bool = False,
    inputs: tuple = (),
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write the four outputs into ``out`` atomically (a temporary sibling folder renamed at the end); ``inputs``
    are the files the case was read from (the output may not touch them); ``extra_files`` (name -> file) are copied
    in beside them (e.g. an organ mask made for the run)."""
    if result.ct.dtype.kind == "f" and not np.isfinite(result.ct).all():
        bad = int((~np.isfinite(result.ct)).sum())
        raise DiffTumorInputError(
            f"the synthesised CT holds {bad:,} non-finite voxels; nothing was written",
            "check the input CT's scaling (scl_slope/scl_inter) and report this with the command you ran",
        )
    with atomic_folder(out, overwrite=overwrite, inputs=inputs, kind="synthesis") as folder:
        save_volume(as_stored(result.ct, ct), ct, folder / "ct.nii.gz")
        labels = result.labels
        if labels.max() <= 255 and labels.min() >= 0:
            labels = labels.astype(np.uint8)
        elif labels.dtype.kind == "f":
            labels = labels.astype(np.int16)
        save_volume(labels, ct, folder / "label.nii.gz")
        write_label_descriptions(folder / "label.nii.gz", label_names(labels, result.tumor_label, manifest_data))
        preview_image(result.tumors, result.ct, ct.affine).save(folder / "preview.png")
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, folder / name)
        (folder / "tumors.json").write_text(json.dumps(manifest_data, indent=2) + "\n")
    return Path(out)
