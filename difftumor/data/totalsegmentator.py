"""Organ masks for CTs that have none: TotalSegmentator (Wasserthal et al., Radiology: AI 2023) through its Python
API, as the optional extra ``difftumor[totalsegmentator]`` (``synthesize --organ-mask auto``).

Its fast model is used (3 mm, tasks 297 and 298, the 6 mm model cropping for it): coarse next to the 1.5 mm model,
and enough to place tumours in an organ on a CPU. Its weights are not downloaded here: a run without network must not
start a download, so missing weights are refused with the command that fetches them.
"""

from __future__ import annotations

import importlib.util
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ..errors import DiffTumorInputError

#: TotalSegmentator class names of each organ (``roi_subset``); the ids in its output are
#: :data:`difftumor.data.layouts.TOTALSEGMENTATOR_IDS`.
ROI_NAMES = {"liver": ("liver",), "pancreas": ("pancreas",), "kidney": ("kidney_right", "kidney_left")}
#: Weights the fast model needs: ``totalseg_download_weights -t total_fast`` fetches both.
FAST_TASKS = (297, 298)
INSTALL_HINT = "pip install 'difftumor[totalsegmentator]', or pass --organ-mask MASK"


def installed_version() -> str:
    """TotalSegmentator's version; refused in one line when it is not installed."""
    if importlib.util.find_spec("totalsegmentator") is None:
        raise DiffTumorInputError("--organ-mask auto needs TotalSegmentator, which is not installed", INSTALL_HINT)
    try:
        return version("TotalSegmentator")
    except PackageNotFoundError:
        return "unknown"


def weights_folder() -> Path:
    """Where TotalSegmentator looks for its weights (``TOTALSEG_WEIGHTS_PATH``, ``TOTALSEG_HOME_DIR`` or
    ``~/.totalsegmentator``), by its own configuration."""
    from totalsegmentator.config import get_weights_dir

    return Path(get_weights_dir())


def missing_tasks(folder: Path, tasks: tuple[int, ...] = FAST_TASKS) -> list[int]:
    """The tasks of ``tasks`` whose ``Dataset<id>_*`` weights folder is not in ``folder``."""
    return [task for task in tasks if not any(folder.glob(f"Dataset{task}_*"))]


def check_ready(organ: str) -> tuple[str, Path]:
    """TotalSegmentator's version and weights folder, refused in one line when either is missing or the organ is
    not one it segments for us; cheap, so commands call it before any other work."""
    if organ not in ROI_NAMES:
        raise DiffTumorInputError(f"--organ-mask auto has no {organ}", f"choose one of {', '.join(ROI_NAMES)}")
    release = installed_version()
    folder = weights_folder()
    missing = missing_tasks(folder)
    if missing:
        raise DiffTumorInputError(
            f"TotalSegmentator's weights for task {', '.join(map(str, missing))} are not in {folder}",
            "download them once with `totalseg_download_weights -t total_fast` (needs the network), or pass "
            "--organ-mask MASK",
        )
    return release, folder


def auto_organ_mask(ct: Path, organ: str, out: Path, device: str = "cpu") -> dict[str, Any]:
    """Segment ``organ`` in ``ct`` (NIfTI file or DICOM folder) with TotalSegmentator's fast model and write the
    multi-label map (TotalSegmentator v2 ids) to ``out``. Returns what made it, for ``tumors.json``."""
    release, folder = check_ready(organ)
    import nibabel as nib
    from totalsegmentator.python_api import totalsegmentator

    image = totalsegmentator(
        str(ct),
        None,
        ml=True,
        fast=True,
        roi_subset=list(ROI_NAMES[organ]),
        device="gpu" if str(device).startswith("cuda") else "cpu",
        quiet=True,
    )
    nib.save(image, str(out))
    return {
        "model": "TotalSegmentator",
        "version": release,
        "task": "total",
        "fast": True,
        "roi_subset": list(ROI_NAMES[organ]),
        "weights": sorted(p.name for task in FAST_TASKS for p in folder.glob(f"Dataset{task}_*")),
    }
