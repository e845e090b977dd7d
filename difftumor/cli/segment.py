"""``difftumor segment`` and ``difftumor evaluate``: apply a segmentation model, score predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..data.registry import truth_label_schemes
from ..devices import DEVICE_HELP
from ..errors import DiffTumorInputError
from .app import LazyProgress, app, console, examples

_SCHEMES = ", ".join(truth_label_schemes(load_installed=False))


@app.command(
    epilog=examples(
        "difftumor segment ct.nii.gz --model runs/seg/model --out prediction.nii.gz",
        "difftumor segment cts/ --model my-lab/liver-seg --out predictions/ --continue",
    )
)
def segment(
    ct: Annotated[Path, typer.Argument(help="CT (NIfTI file or DICOM series folder), or a folder of NIfTI CTs.")],
    model: Annotated[str, typer.Option(help="Segmentation model folder or Hub repo id.")],
    out: Annotated[Path, typer.Option(help="Prediction .nii.gz (one CT), or a folder (one <case>.nii.gz per CT).")],
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = "auto",
    overlap: Annotated[float, typer.Option(help="Sliding-window overlap.")] = 0.5,
    postprocess: Annotated[
        bool, typer.Option(help="Drop tiny tumour components and everything outside the organ.")
    ] = True,
    min_tumor_radius_mm: Annotated[float, typer.Option(help="Smallest tumour kept (equivalent radius, mm).")] = 3.0,
    restrict_to_organ: Annotated[
        bool,
        typer.Option(
            help="Keep only the organ (its largest connected part, organ with tumours; two for kidneys) and the "
            "tumours touching it."
        ),
    ] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace predictions difftumor wrote earlier.")] = False,
    continue_: Annotated[
        bool, typer.Option("--continue", help="Skip cases whose prediction is already written (folders).")
    ] = False,
    series: Annotated[
        str | None, typer.Option(help="DICOM SeriesInstanceUID, when the CT folder holds several series.")
    ] = None,
) -> None:
    """Segment organ and tumours with sliding-window inference; predictions are written on each input's grid, with
    label names for 3D Slicer and ITK-SNAP beside them (.labels.json, .ctbl, .itksnap.txt)."""
    from ..segmentation.run import segment_cases

    if not 0.0 <= overlap < 1.0:
        raise DiffTumorInputError(f"--overlap {overlap} is not in [0, 1)", "e.g. 0.5")
    with LazyProgress("segment") as progress:
        summaries = segment_cases(
            ct,
            out,
            model,
            device=device,
            overwrite=overwrite,
            resume=continue_,
            series=series,
            progress=lambda done, total, name: progress.update(done, total, "segment"),
            overlap=overlap,
            postprocessing=postprocess,
            min_tumor_radius_mm=min_tumor_radius_mm,
            restrict_to_organ=restrict_to_organ,
        )
    for summary in summaries:
        console.print(
            f"wrote {summary['out']}: {summary['organ_voxels']} organ and {summary['tumour_voxels']} tumour voxels "
            f"on the input grid {tuple(summary['shape'])}"
        )
    if not summaries:
        console.print(f"nothing to do: every prediction in {out} is already written")


@app.command(
    epilog=examples(
        "difftumor evaluate --pred predictions/ --truth labels/ --truth-labels lits --organ liver --out metrics.json",
    )
)
def evaluate(
    pred: Annotated[
        Path, typer.Option(help="Folder of predictions (0 background, 1 organ, 2 tumour), or one prediction file.")
    ],
    truth: Annotated[Path, typer.Option(help="Folder of ground-truth label maps (same file names), or one file.")],
    out: Annotated[Path, typer.Option(help="metrics.json to write.")],
    truth_labels: Annotated[str, typer.Option(help=f"Truth label ids: {_SCHEMES}.")] = "internal",
    organ: Annotated[str | None, typer.Option(help="Organ name (recorded in metrics.json).")] = None,
    organ_label: Annotated[int | None, typer.Option(help="Override the truth's organ label id.")] = None,
    tumor_label: Annotated[int | None, typer.Option(help="Override the truth's tumour label id.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a metrics file difftumor wrote earlier.")] = False,
    iou_threshold: Annotated[
        float, typer.Option(help="IoU a predicted lesion needs with a true one to detect it (one-to-one).")
    ] = 0.5,
    connectivity: Annotated[int, typer.Option(help="Lesion connectivity: 26, or 6 (the original's rule).")] = 26,
    resample: Annotated[
        bool,
        typer.Option(
            help="Bring a prediction whose grid covers another part of the world than its truth onto the truth's "
            "grid by affine (otherwise refused)."
        ),
    ] = False,
) -> None:
    """Organ/tumour DSC (mean and global), tumour NSD at 2 mm, lesion detection by one-to-one IoU matching per size
    bin, false positives, patient sensitivity/specificity — with 95 % intervals."""

    from ..evaluation import evaluate_folders, markdown_table

    data = evaluate_folders(
        pred,
        truth,
        out,
        truth_labels,
        organ_label,
        tumor_label,
        organ,
        overwrite,
        iou_threshold,
        connectivity,
        resample,
    )
    console.print(markdown_table(data["summary"]))
    console.print(f"\n{data['summary']['cases']} case(s); wrote {out}")
