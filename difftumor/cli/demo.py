"""``difftumor demo``: the bundled CT + the bundled tiny pipeline, end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import LazyProgress, app, console, err_console, examples, warn

#: TotalSegmentator v2 label of the liver in the bundled organ map.
DEMO_LIVER_LABEL = 5


@app.command(
    epilog=examples(
        "difftumor demo --out demo/",
        "difftumor demo --out demo/ --synthesizer handcrafted",
    )
)
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("difftumor_demo"),
    count: Annotated[int, typer.Option(help="Number of liver tumours.")] = 3,
    size: Annotated[str, typer.Option(help="early, tiny, small, medium, large or a diameter in mm.")] = "small",
    seed: Annotated[int, typer.Option(help="Seed of every random draw.")] = 0,
    synthesizer: Annotated[str, typer.Option(help="diffusion (bundled pipeline) or handcrafted.")] = "diffusion",
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty output folder.")] = False,
) -> None:
    """Synthesise liver tumours into the bundled CT (patient A) with the bundled demo pipeline."""
    from ..assets import DEMO_CASE, bundled_pipeline_path
    from ..synthesis.cases import CaseRequest, synthesize_case
    from .synthesize import make_synthesizer

    pipeline = str(bundled_pipeline_path()) if synthesizer == "diffusion" else None
    request = CaseRequest(
        ct=DEMO_CASE / "ct.nii.gz",
        organ_mask=DEMO_CASE / "organs.nii.gz",
        organ="liver",
        out=out,
        organ_label=DEMO_LIVER_LABEL,
        size=size,
        count=count,
        seed=seed,
    )
    err_console.print(
        f"demo: {count} {size} liver tumour(s) into patient A (bundled CT, 3 mm) with the "
        f"{synthesizer} synthesizer{' (bundled demo pipeline, demo quality)' if pipeline else ''}"
    )
    engine = make_synthesizer(synthesizer, pipeline=pipeline)
    with LazyProgress(f"{synthesizer} tumours") as progress:
        data = synthesize_case(
            request, engine, overwrite=overwrite, progress=progress.update, inputs=(pipeline,), warn=warn
        )
    for tumour in data["tumors"]:
        centre = ", ".join(f"{v:.0f}" for v in tumour["center_mm"])
        console.print(
            f"  tumour {tumour['index']}: {tumour['size_class']}, {tumour['diameter_mm']:.1f} mm, centre ({centre}) mm"
        )
    console.print(
        f"wrote {out}/: ct.nii.gz, label.nii.gz (tumour label {data['tumor_label']}), tumors.json, "
        f"preview.png — open ct.nii.gz with label.nii.gz as a segmentation in 3D Slicer or ITK-SNAP"
    )
