"""``difftumor synthesize``: paint tumours into healthy CTs, one case or a datalist split across processes."""

from __future__ import annotations

import contextlib
import functools
import json
import math
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from ..devices import DEVICE_HELP, resolve_device
from ..errors import DiffTumorInputError
from .app import LazyProgress, app, console, err_console, examples, warn


def _parse_center(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise DiffTumorInputError(
            f"tumour centre {text!r} is not 'x,y,z'", "give world RAS millimetres, e.g. 12,-40,310"
        )
    return values


def parse_options(options: list[str] | None) -> dict[str, object]:
    """``--option KEY=VALUE`` pairs -> keyword arguments (VALUE read as JSON when it is JSON, else as text)."""
    parsed: dict[str, object] = {}
    for text in options or []:
        key, sep, value = text.partition("=")
        if not sep or not key.strip().isidentifier():
            raise DiffTumorInputError(f"--option {text!r} is not KEY=VALUE", "e.g. --option recipe=hu2023")
        try:
            parsed[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key.strip()] = value
    return parsed


def make_synthesizer(
    name: str,
    pipeline: str | None = None,
    midlate_pipeline: str | None = None,
    scheduler: str | None = None,
    steps: int | None = None,
    device: str = "auto",
    options: dict[str, object] | None = None,
):
    """Build the synthesizer the CLI options describe (shared by ``synthesize`` and ``demo``); ``options`` are
    passed to its constructor as they are."""
    from ..synthesis import get_synthesizer

    options = dict(options or {})

    device = resolve_device(device)
    if name == "diffusion":
        if device == "cpu":
            from ..allocator import keep_freed_memory

            # This process exists for the synthesis and ends with it: keeping freed memory saves every call's page
            # faults through fresh activations, and the memory it holds goes when the command exits.
            keep_freed_memory()
        if scheduler:
            from ..schedulers import make_scheduler

            make_scheduler(scheduler, 4)  # validates the name before the (slow) model load
        if pipeline is None:
            from ..assets import bundled_pipeline_path

            pipeline = str(bundled_pipeline_path())
            err_console.print(f"using the bundled demo pipeline ({pipeline}); pass --pipeline for your own model")
        return get_synthesizer(
            "diffusion",
            pipeline=pipeline,
            midlate_pipeline=midlate_pipeline,
            scheduler=scheduler,
            num_inference_steps=steps,
            device=device,
            **options,
        )
    if pipeline or midlate_pipeline or scheduler or steps:
        err_console.print(f"note: --pipeline/--scheduler/--steps do not apply to the {name} synthesizer")
    return get_synthesizer(name, **options)


# A Typer command: its options are its signature; the body only validates and hands over to synthesis.
@app.command(
    epilog=examples(
        "difftumor synthesize ct.nii.gz --organ-mask seg.nii.gz --mask-labels totalsegmentator --count 3 --out out/",
        "difftumor synthesize ct.nii.gz --organ-mask liver.nii.gz --center=-40,120,300 --size 15 --out out/",
        "difftumor synthesize ct.nii.gz --organ-mask auto --synthesizer handcrafted --out out/",
        "difftumor synthesize --datalist cases.json --out batch/ --scheduler dpm++ --fast",
    )
)
def synthesize(
    ct: Annotated[Path | None, typer.Argument(help="Healthy CT: NIfTI file or DICOM series folder.")] = None,
    organ_mask: Annotated[
        Path | None,
        typer.Option(
            help="Organ mask or multi-label map (any grid), or auto: TotalSegmentator makes one (pip install "
            "'difftumor\\[totalsegmentator]'; kept as organ_mask.nii.gz)."
        ),
    ] = None,
    organ: Annotated[str, typer.Option(help="liver, pancreas or kidney (placement rules).")] = "liver",
    out: Annotated[Path | None, typer.Option(help="Output folder (with --datalist: one sub-folder per case).")] = None,
    synthesizer: Annotated[
        str, typer.Option(help="diffusion, handcrafted, rule-only (the diffusion ablation), or an installed plugin.")
    ] = "diffusion",
    pipeline: Annotated[str | None, typer.Option(help="Pipeline folder or Hub repo id (diffusion).")] = None,
    midlate_pipeline: Annotated[
        str | None, typer.Option(help="Optional pipeline for medium/large tumours (the original's noearly model).")
    ] = None,
    size: Annotated[
        str,
        typer.Option(
            help="early (tiny or small), tiny (radii 3-5 mm per axis), small (6-10), medium (12-20), large (24-40), "
            "or a diameter in mm: each axis's radius is drawn within ±15 % of half of it and rounded to whole mm, "
            "then the shape deformed: 15 gives equivalent diameters of 12-17.5 mm in 9 of 10 tumours (tumors.json "
            "records each)."
        ),
    ] = "early",
    count: Annotated[int | None, typer.Option(help="Exact number of tumours (default 1, or one per --center).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random draw.")] = 0,
    scheduler: Annotated[
        str | None, typer.Option(help="Sampler: ddpm, ddim, dpm++, unipc, euler, heun (diffusion).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Sampler steps (default: the pipeline's).")] = None,
    fast: Annotated[
        bool, typer.Option(help="Diffusion fast mode: decode only the tumour's neighbourhood (bfloat16 if native).")
    ] = False,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    organ_label: Annotated[int | None, typer.Option(help="Label id of the organ in a multi-label mask.")] = None,
    mask_labels: Annotated[
        str | None,
        typer.Option(help="Label scheme of the organ mask: totalsegmentator (then --organ finds its label)."),
    ] = None,
    tumor_label: Annotated[
        int | None, typer.Option(help="Label id for tumour voxels (default 2, or max label + 1).")
    ] = None,
    center: Annotated[
        list[str] | None, typer.Option(help="Tumour centre 'x,y,z' in world RAS mm (repeat per tumour).")
    ] = None,
    series: Annotated[
        str | None, typer.Option(help="DICOM SeriesInstanceUID, when the CT folder holds several series.")
    ] = None,
    datalist: Annotated[Path | None, typer.Option(help="JSON list of cases for batch mode.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
    option: Annotated[
        list[str] | None,
        typer.Option(help="Synthesizer setting KEY=VALUE (repeatable), e.g. recipe=hu2023, intensity=native."),
    ] = None,
) -> None:
    """Synthesise tumours into a healthy CT; writes ct.nii.gz, label.nii.gz, tumors.json and preview.png.

    On CPU the diffusion synthesizer keeps freed memory for the next tumour (faster; held until the command ends).
    DIFFTUMOR_KEEP_FREED_MEMORY=0 turns that off.
    """
    from ..atomic import check_output_folder
    from ..data.mask_labels import organ_label_in_scheme
    from ..synthesis.cases import CaseRequest, synthesize_case, validate_request

    if fast:
        if synthesizer != "diffusion":
            raise DiffTumorInputError(f"--fast applies to the diffusion synthesizer, not {synthesizer}", "drop --fast")
        option = [*(option or []), "fast=true"]

    if out is None:
        raise DiffTumorInputError("no output folder given", "pass --out DIR")
    organ_label = organ_label_in_scheme(mask_labels, organ, organ_label)
    centers = [_parse_center(c) for c in center] if center else None
    if count is None:
        count = len(centers) if centers else 1
    if datalist is not None:
        if ct is not None:
            raise DiffTumorInputError("give either a CT or --datalist, not both", "drop one of them")
        if organ_mask is not None:
            raise DiffTumorInputError(
                "--organ-mask applies to a single CT", "give each case's mask in the datalist (key organ_mask)"
            )
        template = CaseRequest(Path(), Path(), organ, out, organ_label, size, count, seed, None, tumor_label)
        engine = functools.partial(
            make_synthesizer, synthesizer, pipeline, midlate_pipeline, scheduler, steps, options=parse_options(option)
        )
        spec = {
            "synthesizer": synthesizer,
            "pipeline": pipeline,
            "midlate_pipeline": midlate_pipeline,
            "scheduler": scheduler,
            "steps": steps,
            "options": parse_options(option),
        }
        _run_datalist(datalist, out, template, engine, device, overwrite, spec)
        return
    if ct is None or organ_mask is None:
        raise DiffTumorInputError("a CT and --organ-mask are needed", "pass CT --organ-mask MASK (or --datalist)")
    auto_mask = str(organ_mask) == "auto" and not organ_mask.exists()
    if auto_mask:
        from ..data.totalsegmentator import auto_organ_mask, check_ready

        check_ready(organ)
        organ_label = organ_label_in_scheme("totalsegmentator", organ, organ_label)
    request = CaseRequest(ct, organ_mask, organ, out, organ_label, size, count, seed, centers, tumor_label, series)
    inputs = (ct, pipeline, midlate_pipeline) if auto_mask else (ct, organ_mask, pipeline, midlate_pipeline)
    check_output_folder(out, overwrite, inputs=inputs, kind="synthesis")
    if not auto_mask:
        validate_request(request)
    engine = make_synthesizer(synthesizer, pipeline, midlate_pipeline, scheduler, steps, device, parse_options(option))
    with contextlib.ExitStack() as stack:
        mask_model = None
        if auto_mask:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="difftumor-organ-mask-")))
            request.organ_mask = folder / "organ_mask.nii.gz"
            with console.status(f"TotalSegmentator: segmenting the {organ}"):
                mask_model = auto_organ_mask(ct, organ, request.organ_mask, resolve_device(device))
        with LazyProgress(f"{synthesizer} tumours") as progress:
            data = synthesize_case(
                request, engine, overwrite=overwrite, progress=progress.update, warn=warn, mask_model=mask_model
            )
    sizes = ", ".join(f"{t['size_class']} {t['diameter_mm']:.1f} mm" for t in data["tumors"])
    console.print(
        f"wrote {out}: {len(data['tumors'])} tumour(s) ({sizes}); ct.nii.gz, label.nii.gz, tumors.json, preview.png"
    )


def _run_datalist(
    datalist: Path, out: Path, template, build_synthesizer, device: str, overwrite: bool, spec: dict
) -> None:
    from ..synthesis.cases import synthesize_datalist

    with LazyProgress("cases") as progress:
        counts = synthesize_datalist(
            datalist,
            out,
            template,
            build_synthesizer,
            device=device,
            overwrite=overwrite,
            progress=lambda done, total, label: progress.update(done, total, label),
            synthesizer_spec=spec,
        )
    console.print(
        f"process {counts['process']}: {counts['written']} case(s) written to {out}, "
        f"{counts['skipped']} already finished"
    )
