"""``difftumor realism``: compare synthetic lesions with real ones, feature by feature."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..data.registry import truth_label_schemes
from .app import app, console

_SCHEMES = ", ".join(truth_label_schemes(load_installed=False))


@app.command()
def realism(
    synthetic: Annotated[
        list[Path], typer.Option(help="A `difftumor synthesize` output folder, or a folder of them (repeatable).")
    ],
    real: Annotated[
        list[Path],
        typer.Option(help="Labelled CTs: a datalist JSON or a folder with images/ and labels/ (repeatable)."),
    ],
    out: Annotated[Path, typer.Option(help="Folder to write realism.json, realism.md and realism.png into.")],
    truth_labels: Annotated[str, typer.Option(help=f"Label ids of --real: {_SCHEMES}.")] = "internal",
    overwrite: Annotated[bool, typer.Option(help="Replace a realism folder difftumor wrote earlier.")] = False,
) -> None:
    """Measure every lesion the same way on a 1 mm grid (contrast to its organ ring, relative to the organ core's
    mean and noise, internal texture, edge sharpness, decoder stride artefacts, shape) and compare the synthetic
    groups with the real lesions per size bin: median [IQR], ratio of medians, Wasserstein and KS distances."""
    from ..evaluation.realism import realism as run_realism

    report = run_realism(synthetic, real, out, truth_labels=truth_labels, overwrite=overwrite)
    console.print(report.markdown, markup=False)
    counts = ", ".join(f"{name}: {len(records)}" for name, records in report.groups.items())
    console.print(f"\nlesions measured ({counts}); wrote {out}/realism.json, realism.md, realism.png")
