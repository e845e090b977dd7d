"""One synthesis case from files to an output folder, and batches of cases from a datalist (split across processes)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import check_output, check_output_folder, prepare_output_root
from ..data.datalists import datalist_entries
from ..data.volumes import Volume, load_volume, probe_volume
from ..devices import resolve_device
from ..errors import DiffTumorInputError
from .engine import SynthesisResult, synthesize_tumors
from .outputs import manifest, write_outputs
from .synthesizers import TumorSynthesizer

#: The file an organ mask made for the run is kept as, in the output folder.
AUTO_MASK_NAME = "organ_mask.nii.gz"


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
    #: DICOM SeriesInstanceUID when ``ct`` is a folder holding several series
    series: str | None = None


def synthesize_case(
    request: CaseRequest,
    synthesizer: TumorSynthesizer,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    inputs: Sequence[str | os.PathLike] = (),
    warn: Callable[[str], None] | None = None,
    record: dict[str, Any] | None = None,
    mask_model: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load, synthesise and write one case; returns its manifest. Nothing is written if anything fails; the
    output may not touch the case's files or any of ``inputs`` (e.g. the other cases of a batch).

    ``mask_model``: what made ``request.organ_mask`` when a model made it for this run (``--organ-mask auto``): the
    mask is then written into the output as ``organ_mask.nii.gz`` and the model recorded in ``tumors.json``."""
    validate_request(request)
    inputs = (request.ct, request.organ_mask, *inputs)
    check_output_folder(request.out, overwrite, inputs, kind="synthesis", needed_bytes=output_bytes(request))
    ct = load_volume(request.ct, "CT", series=request.series)
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
        warn=warn,
    )
    settings = {
        "seed": request.seed,
        "size": request.size,
        "count": request.count,
        **({"centers_mm": [list(map(float, c)) for c in request.centers_mm]} if request.centers_mm else {}),
        **({"series": request.series} if request.series else {}),
        **synthesizer.describe(),
    }
    data = manifest(result, ct, organ_mask, request.organ, request.organ_label, settings)
    data["request"] = record if record is not None else request_record(request)
    extra_files = None
    if mask_model is not None:
        extra_files = {AUTO_MASK_NAME: Path(request.organ_mask)}
        data["input"].update(organ_mask=str(Path(request.out).resolve() / AUTO_MASK_NAME), organ_mask_model=mask_model)
    write_outputs(request.out, result, ct, data, overwrite=overwrite, inputs=inputs, extra_files=extra_files)
    return data


def output_bytes(request: CaseRequest) -> int:
    """About what a case's outputs take on disk (a temporary copy and the result): twice the CT (a folder: its files),
    the mask, and a few MB of preview and records."""

    def size(path: Path) -> int:
        path = Path(path)
        try:
            return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*"))
        except OSError:
            return 0

    return 2 * size(request.ct) + size(request.organ_mask) + 8 * 2**20


def read_datalist(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Cases of a JSON datalist: a list of ``{"image", "organ_mask", ...}`` objects, or a MONAI-style object with
    such a list under ``"data"``, ``"training"``, ``"validation"`` or ``"testing"``. Relative paths are resolved
    against the datalist's folder. Every entry is checked here, before any case is written: the files exist, and
    ids (default: the image's file name) are single, non-hidden path components, unique ignoring case."""
    path = Path(path)
    content = datalist_entries(
        path,
        ("data", "training", "validation", "testing"),
        "check the path",
        'give a JSON list of {"image", "organ_mask"}',
    )
    cases = []
    seen: dict[str, int] = {}
    for number, entry in enumerate(content):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise DiffTumorInputError(
                f"case {number} of {path} has no 'image'", "every case needs image and organ_mask"
            )
        mask = entry.get("organ_mask", entry.get("label"))
        if not isinstance(mask, str):
            raise DiffTumorInputError(f"case {number} of {path} has no 'organ_mask'", "add the organ mask path")
        resolved = dict(entry)
        resolved["image"] = str((path.parent / entry["image"]).resolve())
        resolved["organ_mask"] = str((path.parent / mask).resolve())
        for key in ("image", "organ_mask"):
            if not Path(resolved[key]).exists():
                raise DiffTumorInputError(f"{key} {resolved[key]} of case {number} in {path} does not exist")
        resolved["id"] = case_id = validate_case_id(entry.get("id", _case_id(entry["image"])), number, path)
        key = unicodedata.normalize("NFC", case_id).casefold()
        if key in seen:
            raise DiffTumorInputError(
                f"cases {seen[key]} and {number} of {path} have the same id {case_id!r} (ids ignore case)",
                "give each case a unique 'id'",
            )
        seen[key] = number
        cases.append(resolved)
    return cases


def validate_case_id(case_id: Any, number: int, path: Path) -> str:
    """A case id names one output sub-folder: one path component, not empty, not hidden, no ``..``."""
    if not isinstance(case_id, str) or not case_id.strip():
        raise DiffTumorInputError(f"case {number} of {path} has an empty id", "give it a name such as 'case_001'")
    if (
        case_id != case_id.strip()
        or case_id.startswith(".")
        or any(character in case_id for character in "/\\:")
        or any(unicodedata.category(character).startswith("C") for character in case_id)
        or Path(case_id).is_absolute()
    ):
        raise DiffTumorInputError(
            f"case {number} of {path} has the id {case_id!r}, which is not a plain folder name",
            "use letters, digits, '_' and '-' (no '/', '..' or leading '.')",
        )
    return case_id


def _case_id(image: str) -> str:
    name = Path(image).name
    for suffix in (".nii.gz", ".nii", ".dcm"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def input_digest(path: str | os.PathLike) -> str:
    """SHA-256 of an input: a file's bytes, or a folder's (a DICOM series) files by relative name and bytes."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            for block in iter(lambda handle=handle: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def request_record(request: CaseRequest, synthesizer: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a case was made from — its inputs (path and SHA-256), every option, and how the synthesizer was asked
    for — recorded in its ``tumors.json``: a batch rerun skips a case only when this is unchanged."""
    return {
        "ct": str(Path(request.ct).resolve()),
        "ct_sha256": input_digest(request.ct),
        "organ_mask": str(Path(request.organ_mask).resolve()),
        "organ_mask_sha256": input_digest(request.organ_mask),
        "organ": request.organ,
        "organ_label": request.organ_label,
        "size": str(request.size),
        "count": request.count,
        "seed": request.seed,
        "centers_mm": [list(map(float, c)) for c in request.centers_mm] if request.centers_mm else None,
        "tumor_label": request.tumor_label,
        "series": request.series,
        "synthesizer": synthesizer,
    }


def finished_record(folder: Path) -> dict[str, Any] | None:
    """The request record of a finished case (its manifest is written last and the folder appears atomically), or
    ``None`` when the case is not finished; a finished case without a record gives ``{}``."""
    try:
        manifest_data = json.loads((folder / "tumors.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest_data.get("request", {}) if isinstance(manifest_data, dict) else {}


def case_requests(cases: list[dict[str, Any]], template: CaseRequest, out: Path) -> list[CaseRequest]:
    """One request per datalist case (a case's own settings override ``template``'s), validated."""
    requests = []
    for case in cases:
        request = dataclasses.replace(
            template,
            ct=Path(case["image"]),
            organ_mask=Path(case["organ_mask"]),
            organ=case.get("organ", template.organ),
            out=out / case["id"],
            organ_label=case.get("organ_label", template.organ_label),
            size=str(case.get("size", template.size)),
            count=case.get("count", template.count),
            seed=case.get("seed", template.seed),
            tumor_label=case.get("tumor_label", template.tumor_label),
            series=case.get("series"),
        )
        validate_request(request, where=f"case {case['id']}: ")
        requests.append(request)
    return requests


def validate_request(request: CaseRequest, where: str = "") -> None:
    """Check a request's options (not its files) so that a run fails before it writes anything."""
    from .geometry import ORGANS, parse_size

    if request.organ not in ORGANS:
        raise DiffTumorInputError(f"{where}unknown organ {request.organ!r}", f"choose one of {', '.join(ORGANS)}")
    parse_size(request.size)
    for name in ("count", "seed"):
        value = getattr(request, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
            raise DiffTumorInputError(f"{where}{name} must be an integer from 0 to 2³² − 1, got {value!r}")
    for name in ("organ_label", "tumor_label"):
        value = getattr(request, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**15):
            raise DiffTumorInputError(f"{where}{name} must be an integer from 1 to 32767, got {value!r}")
    if request.count < 1:
        raise DiffTumorInputError(f"{where}tumour count must be at least 1, got {request.count}", "pass 1 or more")


def synthesize_datalist(
    datalist: str | os.PathLike,
    out: str | os.PathLike,
    template: CaseRequest,
    build_synthesizer: Callable[[str], TumorSynthesizer],
    device: str = "auto",
    overwrite: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    synthesizer_spec: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Batch mode: every case of ``datalist`` into ``out/<id>``; each Accelerate process takes every n-th case.

    Every entry is validated before the first case is written. A finished case is skipped when it was made from
    the same request — the same input files (SHA-256), options and ``synthesizer_spec`` (how the synthesizer is
    asked for); one made otherwise is refused, or redone with ``overwrite`` (which replaces only results difftumor
    wrote). ``build_synthesizer(device)`` is called once, if there is work.

    Returns:
        ``{"written", "skipped", "process", "processes"}``.
    """
    from accelerate import PartialState

    out = Path(out)
    cases = read_datalist(datalist)
    inputs = [datalist] + [case[key] for case in cases for key in ("image", "organ_mask")]
    check_output(out, "folder", inputs, overwrite=True, kind="synthesis-batch")
    requests = case_requests(cases, template, out)
    for request in requests:  # headers only: a case that cannot be read fails the batch before anything is written
        probe_volume(request.ct, "CT", request.series)
        probe_volume(request.organ_mask, "organ mask")
    records = {}
    for request in requests:  # only folders difftumor wrote may be there (the root's check covers the inputs)
        if request.out.exists():
            check_output_folder(request.out, overwrite=True, kind="synthesis")
        found = finished_record(request.out)
        if found is None:
            continue
        records[request.out] = record = request_record(request, synthesizer_spec)
        if found != record and not overwrite:
            differs = sorted(key for key in record if found.get(key) != record[key])
            raise DiffTumorInputError(
                f"{request.out} holds a result made from other inputs or options ({', '.join(differs[:4])} differ)",
                "pass --overwrite to redo such cases, or write the batch to a new folder",
            )
    # cpu=True is what makes `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu ...` give several CPU processes;
    # with --device cuda each process takes its own GPU.
    device = resolve_device(device)
    state = PartialState(cpu=device == "cpu")
    if device.startswith("cuda") and state.num_processes > 1:
        device = str(state.device)
    if state.is_main_process:
        prepare_output_root(out, inputs, kind="synthesis-batch")
    state.wait_for_everyone()
    mine = requests[state.process_index :: state.num_processes]
    todo = [request for request in mine if overwrite or request.out not in records]
    engine = build_synthesizer(device) if todo else None
    label = f"cases (process {state.process_index + 1}/{state.num_processes})"
    for done, request in enumerate(todo):
        if progress is not None:
            progress(done, len(todo), label)
        # Every input was kept out of ``out`` above and each case folder lies inside it: no need to compare each
        # case with the whole batch's inputs again (quadratic in the number of cases).
        record = records.get(request.out) or request_record(request, synthesizer_spec)
        synthesize_case(request, engine, overwrite=overwrite, record=record)
    if progress is not None:
        progress(len(todo), len(todo), label)
    return {
        "written": len(todo),
        "skipped": len(mine) - len(todo),
        "process": state.process_index,
        "processes": state.num_processes,
    }


def synthesize_ct(
    synthesizer: Any,
    ct: str | os.PathLike | Volume,
    organ_mask: str | os.PathLike | Volume,
    organ: str = "liver",
    size: str | float = "early",
    count: int = 1,
    seed: int = 0,
    organ_label: int | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    **options: Any,
) -> SynthesisResult:
    """Python whole-CT path: paint ``count`` tumours into a CT (any grid) inside the organ of ``organ_mask``.

    Args:
        synthesizer: a :class:`~difftumor.TumorInpaintPipeline` (wrapped in a :class:`DiffusionSynthesizer` with
            its defaults) or any :class:`TumorSynthesizer`.
        ct, organ_mask: file paths (NIfTI or DICOM series folder) or loaded :class:`difftumor.data.volumes.Volume`.
        organ, size, count, seed, organ_label: as ``difftumor synthesize``.
        out: if given, also write ``ct.nii.gz``, ``label.nii.gz``, ``tumors.json`` and ``preview.png`` there.
        options: passed to :func:`difftumor.synthesis.synthesize_tumors` (``centers_mm``, ``tumor_label``...).

    Returns:
        :class:`difftumor.synthesis.SynthesisResult` (arrays on the input CT's grid).
    """
    from .synthesizers import DiffusionSynthesizer

    inputs = [value.path if isinstance(value, Volume) else value for value in (ct, organ_mask)]
    if out is not None:  # before the (slow) synthesis
        check_output_folder(out, overwrite, inputs, kind="synthesis")
    ct_volume = ct if isinstance(ct, Volume) else load_volume(ct, "CT")
    mask_volume = organ_mask if isinstance(organ_mask, Volume) else load_volume(organ_mask, "organ mask")
    if not isinstance(synthesizer, TumorSynthesizer):
        synthesizer = DiffusionSynthesizer(pipeline=synthesizer, device=str(synthesizer.device))
    result = synthesize_tumors(
        ct_volume,
        mask_volume,
        organ,
        synthesizer,
        size=size,
        count=count,
        seed=seed,
        organ_label=organ_label,
        **options,
    )
    if out is not None:
        settings = {"seed": seed, "size": str(size), "count": count, **synthesizer.describe()}
        data = manifest(result, ct_volume, mask_volume, organ, organ_label, settings)
        write_outputs(out, result, ct_volume, data, overwrite=overwrite, inputs=inputs)
    return result
