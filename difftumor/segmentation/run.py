"""Apply a segmentation model to files or folders: loading, device choice, case listing, writing with label names.

One input CT (NIfTI file, DICOM series folder or one of its files) -> one label map; a folder of NIfTI files -> a
folder of label maps with the same names (``--continue`` skips the ones already written). Every label map is written
atomically on its input's grid, with ``.labels.json`` / ``.ctbl`` / ``.itksnap.txt`` beside it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_file, check_output, file_kind, input_paths, prepare_output_root
from ..devices import resolve_device
from ..errors import DiffTumorInputError, explain_load_failure
from ..label_descriptions import sidecar_paths, write_label_descriptions
from .model import SegmentationModel

_NIFTI = re.compile(r"\.nii(\.gz)?$")


def load_model(name_or_path: str | os.PathLike) -> SegmentationModel:
    """A :class:`SegmentationModel` from a folder or a Hub repo id, with one-line errors for anything else."""
    from ..hub import resolve_pipeline_folder

    path = Path(name_or_path)
    if not path.is_dir() and (str(name_or_path).count("/") != 1 or str(name_or_path).startswith((".", "/", "~"))):
        raise DiffTumorInputError(
            f"model {name_or_path} is not a folder", "pass a folder written by `difftumor train segmentation`"
        )
    folder = path if path.is_dir() else Path(resolve_pipeline_folder(str(name_or_path)))
    if not (folder / "config.json").exists():
        raise DiffTumorInputError(
            f"{name_or_path} is not a segmentation model folder (no config.json)",
            "pass a folder written by `difftumor train segmentation`",
        )
    with explain_load_failure(
        f"the segmentation model {name_or_path}", "the folder may be incomplete; re-download or retrain it"
    ):
        return SegmentationModel.from_pretrained(folder)


@dataclass
class SegmentationCase:
    case_id: str
    ct: Path
    out: Path


def plan_cases(source: Path, out: Path) -> tuple[list[SegmentationCase], bool]:
    """The cases to segment and whether ``out`` is a folder of results (``True``) or one file."""
    if not source.exists():
        raise DiffTumorInputError(f"CT {source} does not exist", "check the path")
    niftis = (
        sorted(p for p in source.iterdir() if _NIFTI.search(p.name) and not p.name.startswith("."))
        if (source.is_dir())
        else []
    )
    if niftis:
        if _NIFTI.search(out.name):
            raise DiffTumorInputError(
                f"{source} is a folder of {len(niftis)} CTs but --out {out} is one file", "pass a folder for --out"
            )
        cases, seen = [], {}
        for path in niftis:
            case_id = _NIFTI.sub("", path.name)
            if case_id in seen:
                raise DiffTumorInputError(f"{source} holds {seen[case_id].name} and {path.name}", "keep one of them")
            seen[case_id] = path
            cases.append(SegmentationCase(case_id, path, out / f"{case_id}.nii.gz"))
        return cases, True
    case_id = _NIFTI.sub("", source.name) if source.is_file() else source.name
    if _NIFTI.search(out.name):
        return [SegmentationCase(case_id, source, out)], False
    return [SegmentationCase(case_id, source, out / f"{case_id}.nii.gz")], True


# Per case: read, check, infer, write atomically, report — with --continue and per-case errors; the loop body is kept
# whole so a failure names its case.
def segment_cases(
    source: str | os.PathLike,
    out: str | os.PathLike,
    model_name: str | os.PathLike,
    device: str = "auto",
    overwrite: bool = False,
    resume: bool = False,
    series: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    **inference: object,
) -> list[dict]:
    """Segment a CT or a folder of CTs into ``out`` (a ``.nii.gz`` file, or a folder); returns one summary per case.

    Every output is checked before the first case runs; with ``resume`` finished cases are skipped.
    """
    from ..data.volumes import check_hounsfield, load_volume, save_volume
    from .inference import segment_volume

    source, out = Path(source), Path(out)
    cases, into_folder = plan_cases(source, out)
    inputs = (source, model_name if Path(model_name).exists() else None)
    if into_folder:
        check_output(out, "folder", inputs, overwrite=True, kind="segmentation-batch")
    input_files = set(input_paths(inputs))
    todo = []
    for case in cases:
        finished = case.out.exists() and file_kind(case.out) == "segmentation"
        if resume and finished:
            continue
        if into_folder and not out.exists():
            todo.append(case)
            continue
        check_output(case.out, "file", inputs, overwrite, kind="segmentation")
        for sidecar in sidecar_paths(case.out).values():
            if sidecar.resolve() in input_files:
                raise DiffTumorInputError(f"{sidecar} (beside {case.out}) is an input", "choose another --out name")
            if sidecar.exists() and not (overwrite or resume):
                raise DiffTumorInputError(f"{sidecar} already exists", "choose a new name or pass --overwrite")
        todo.append(case)
    device = resolve_device(device)
    network = load_model(model_name) if todo else None
    if into_folder:
        prepare_output_root(out, inputs, kind="segmentation-batch")
    summaries = []
    for done, case in enumerate(todo):
        if progress is not None:
            progress(done, len(todo), case.case_id)
        volume = load_volume(case.ct, "CT", series=series)
        check_hounsfield(volume)
        labels = segment_volume(network, volume, device=device, **inference)
        organ = str(network.config.organ)
        with atomic_file(case.out, overwrite or resume, inputs, kind="segmentation") as temporary:
            save_volume(labels, volume, temporary, description="difftumor segmentation")
        write_label_descriptions(case.out, {0: "background", 1: organ, 2: f"{organ} tumour"})
        summaries.append(
            {
                "case": case.case_id,
                "out": str(case.out),
                "organ_voxels": int((labels == 1).sum()),
                "tumour_voxels": int((labels == 2).sum()),
                "shape": list(volume.shape),
            }
        )
    if progress is not None:
        progress(len(todo), len(todo), "")
    return summaries
