"""``difftumor realism``: compare synthetic lesions with real ones, feature by feature."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..data.registry import truth_label_schemes
from .app import app, console, err_console, examples

_SCHEMES = ", ".join(truth_label_schemes(load_installed=False))
#: The inputs every command comparing synthetic with real lesions takes (``realism``, ``reader-study make``).
SyntheticOption = Annotated[
    list[Path], typer.Option(help="A `difftumor synthesize` output folder, or a folder of them (repeatable).")
]
RealOption = Annotated[
    list[Path],
    typer.Option(help="Labelled CTs: a datalist JSON or a folder with images/ and labels/ (repeatable)."),
]
TruthLabelsOption = Annotated[str, typer.Option(help=f"Label ids of --real: {_SCHEMES}.")]


TWIN_KEYS = ("input", "series", "size", "count", "seed", "centers_mm", "tumor_label", "blend_sigma_mm")


@app.command(
    epilog=examples(
        "difftumor realism --synthetic out/ --real lits/ --truth-labels lits --out realism/",
        "difftumor realism --synthetic runs/ --real real.json --organ liver --no-reader --out realism/",
    )
)
def realism(
    synthetic: SyntheticOption,
    real: RealOption,
    out: Annotated[Path, typer.Option(help="Folder to write realism.json, realism.md and realism.png into.")],
    truth_labels: TruthLabelsOption = "internal",
    overwrite: Annotated[bool, typer.Option(help="Replace a realism folder difftumor wrote earlier.")] = False,
    ablation: Annotated[
        bool,
        typer.Option(
            help="Paint every diffusion synthesis again with the contrast rule alone (same masks, same blend, no "
            "model) and compare: what the model adds. Needs the synthesis's input CT and mask where they were."
        ),
    ] = True,
    reader: Annotated[
        bool, typer.Option(help="Run the machine reader (a classifier told to separate synthetic from real lesions).")
    ] = True,
    organ: Annotated[
        str | None,
        typer.Option(
            help="Organ of the real lesions (liver, pancreas, kidney). Syntheses of another organ are grouped apart "
            "and flagged. Default: the syntheses' organ when they share one."
        ),
    ] = None,
) -> None:
    """Measure every lesion the same way on a 1 mm grid (contrast to its organ ring, relative to the organ core's
    mean and noise, internal texture, edge sharpness, decoder stride artefacts, shape) and compare the synthetic
    groups with the real lesions per size bin: median [IQR], ratio of medians, Wasserstein and KS distances."""
    from ..evaluation.realism import ABLATION_GROUP, LabelledCase, synthesis_manifests
    from ..evaluation.realism import realism as run_realism

    twins: list[LabelledCase] = []
    if ablation:
        from ..errors import DiffTumorInputError
        from ..synthesis.ablation import rule_only_twin

        painted: set[str] = set()
        for folder in synthetic:
            for manifest in synthesis_manifests(folder):
                record = json.loads(manifest.read_text())
                # the twin depends on the tumours' inputs and draws only: runs that differ in the model or its
                # settings share one twin
                key = json.dumps([record.get(k) for k in TWIN_KEYS], sort_keys=True)
                if record.get("synthesizer") != "diffusion" or key in painted:
                    continue
                painted.add(key)
                try:
                    twin = rule_only_twin(manifest)
                except DiffTumorInputError as error:
                    err_console.print(f"note: no rule-only twin of {manifest.parent}: {error}")
                    continue
                lesions = twin.labels == twin.tumor_label
                organ_voxels = (twin.labels == twin.organ_label) | lesions
                twins.append(LabelledCase(f"{twin.name} (rule-only)", twin.ct, organ_voxels, lesions))
    report = run_realism(
        synthetic,
        real,
        out,
        truth_labels=truth_labels,
        overwrite=overwrite,
        extra_groups={ABLATION_GROUP: twins} if twins else None,
        readers=reader,
        organ=organ,
    )
    console.print(report.markdown, markup=False)
    for message in report.warnings:
        err_console.print(f"warning: {message}", markup=False, highlight=False)
    counts = ", ".join(f"{name}: {len(records)}" for name, records in report.groups.items())
    console.print(f"\nlesions measured ({counts}); wrote {out}/realism.json, realism.md, realism.png")
