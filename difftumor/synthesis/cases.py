"""One synthesis case from files to an output folder, and batches of cases from a datalist (split across processes)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import check_output_folder
from ..data.volumes import load_volume
from ..errors import DiffTumorInputError
from .engine import synthesize_tumors
from .outputs import manifest, write_outputs
from .synthesizers import TumorSynthesizer


@dataclass
class CaseRequest:
    """One case of a synthesis run."""

    ct: Path
    organ_mask: Path
    organ: str
    out: Path
    organ_label: int | None = None
    size: str = "early"
    count: int = 1
    seed: int = 0
    centers_mm: Sequence[Sequence[float]] | None = None
    tumor_label: int | None = None


def synthesize_case(
    request: CaseRequest,
    synthesizer: TumorSynthesizer,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Load, synthesise and write one case; returns its manifest. Nothing is written if anything fails."""
    check_output_folder(request.out, overwrite)
    ct = load_volume(request.ct, "CT")
    organ_mask = load_volume(request.organ_mask, "organ mask")
    result = synthesize_tumors(
        ct,
        organ_mask,
        request.organ,
        synthesizer,
        size=request.size,
        count=request.count,
        seed=request.seed,
        organ_label=request.organ_label,
        centers_mm=request.centers_mm,
        tumor_label=request.tumor_label,
        progress=progress,
    )
    settings = {
        "seed": request.seed,
        "size": request.size,
        "count": request.count,
        **synthesizer.describe(),
    }
    data = manifest(result, ct, organ_mask, request.organ, request.organ_label, settings)
    write_outputs(request.out, result, ct, data, overwrite=overwrite)
    return data


def read_datalist(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Cases of a JSON datalist: a list of ``{"image", "organ_mask", ...}`` objects, or a MONAI-style object with
    such a list under ``"data"``, ``"training"``, ``"validation"`` or ``"testing"``. Relative paths are resolved
    against the datalist's folder."""
    path = Path(path)
    if not path.is_file():
        raise DiffTumorInputError(f"datalist {path} does not exist", "check the path")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DiffTumorInputError(f"datalist {path} is not valid JSON ({error})", "fix the file") from None
    if isinstance(content, dict):
        content = next((content[k] for k in ("data", "training", "validation", "testing") if k in content), None)
    if not isinstance(content, list) or not content:
        raise DiffTumorInputError(f"datalist {path} has no cases", 'give a JSON list of {"image", "organ_mask"}')
    cases = []
    for number, entry in enumerate(content):
        if not isinstance(entry, dict) or "image" not in entry:
            raise DiffTumorInputError(
                f"case {number} of {path} has no 'image'", "every case needs image and organ_mask"
            )
        mask = entry.get("organ_mask", entry.get("label"))
        if mask is None:
            raise DiffTumorInputError(f"case {number} of {path} has no 'organ_mask'", "add the organ mask path")
        resolved = dict(entry)
        resolved["image"] = str((path.parent / entry["image"]).resolve())
        resolved["organ_mask"] = str((path.parent / mask).resolve())
        resolved.setdefault("id", _case_id(entry["image"]))
        cases.append(resolved)
    ids = [case["id"] for case in cases]
    if len(set(ids)) != len(ids):
        raise DiffTumorInputError(f"datalist {path} has duplicate case ids", "give each case a unique 'id'")
    return cases


def _case_id(image: str) -> str:
    name = Path(image).name
    for suffix in (".nii.gz", ".nii", ".dcm"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_finished(folder: Path) -> bool:
    """A case is finished when its folder holds the manifest (written last, and the folder appears atomically)."""
    return (folder / "tumors.json").is_file()
