"""``difftumor segment`` and ``difftumor evaluate``: apply a segmentation model, score predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import DiffTumorInputError
from .app import app, console


@app.command()
def segment(
    ct: Annotated[Path, typer.Argument(help="CT: NIfTI file or DICOM series folder (any orientation/spacing).")],
    model: Annotated[str, typer.Option(help="Segmentation model folder or Hub repo id.")],
    out: Annotated[Path, typer.Option(help="Prediction file to write (.nii.gz): 0 background, 1 organ, 2 tumour.")],
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    overlap: Annotated[float, typer.Option(help="Sliding-window overlap.")] = 0.5,
    postprocess: Annotated[
        bool, typer.Option(help="Drop tiny tumour components and tumours not touching the organ.")
    ] = True,
    min_tumor_radius_mm: Annotated[float, typer.Option(help="Smallest tumour kept (equivalent radius, mm).")] = 3.0,
    restrict_to_organ: Annotated[
        bool, typer.Option(help="Remove tumour components that do not touch the organ.")
    ] = True,
) -> None:
    """Segment organ and tumours with sliding-window inference; the prediction is written on the input grid."""
    from ..atomic import atomic_file
    from ..data.volumes import load_volume, save_volume
    from ..hub import resolve_pipeline_folder
    from ..segmentation import SegmentationModel, segment_volume

    if out.exists() and out.is_dir():
        raise DiffTumorInputError(f"output path {out} is a folder", "pass a file name such as pred.nii.gz")
    if not out.name.endswith((".nii", ".nii.gz")):
        raise DiffTumorInputError(f"output {out} is not a .nii/.nii.gz name", "e.g. --out prediction.nii.gz")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise DiffTumorInputError("CUDA is not available on this machine", "use --device cpu")
    if not out.resolve().parent.is_dir():
        raise DiffTumorInputError(f"folder {out.parent} of the output does not exist", "create it first")
    volume = load_volume(ct, "CT")
    folder = Path(model) if Path(model).is_dir() else Path(resolve_pipeline_folder(model))
    if not (folder / "config.json").exists():
        raise DiffTumorInputError(
            f"{model} is not a segmentation model folder (no config.json)",
            "pass a folder written by `difftumor train segmentation`",
        )
    try:
        network = SegmentationModel.from_pretrained(folder)
    except Exception as error:  # noqa: BLE001 — diffusers raises many types for broken folders
        raise DiffTumorInputError(
            f"cannot load the segmentation model {model} ({str(error).splitlines()[0][:150]})",
            "the folder may be incomplete; re-download or retrain it",
        ) from None
    labels = segment_volume(
        network,
        volume,
        overlap=overlap,
        device=device,
        postprocessing=postprocess,
        min_tumor_radius_mm=min_tumor_radius_mm,
        restrict_to_organ=restrict_to_organ,
    )
    with atomic_file(out) as temporary:
        save_volume(labels, volume, temporary)
    console.print(
        f"wrote {out}: {int((labels == 1).sum())} organ and {int((labels == 2).sum())} tumour voxels "
        f"on the input grid {volume.shape}"
    )


@app.command()
def evaluate(
    pred: Annotated[Path, typer.Option(help="Folder of predictions (0 background, 1 organ, 2 tumour).")],
    truth: Annotated[Path, typer.Option(help="Folder of ground-truth label maps (same file names).")],
    out: Annotated[Path, typer.Option(help="metrics.json to write.")],
    truth_labels: Annotated[str, typer.Option(help="Truth label ids: internal, lits, msd or kits.")] = "internal",
    organ: Annotated[str | None, typer.Option(help="Organ name (recorded in metrics.json).")] = None,
    organ_label: Annotated[int | None, typer.Option(help="Override the truth's organ label id.")] = None,
    tumor_label: Annotated[int | None, typer.Option(help="Override the truth's tumour label id.")] = None,
) -> None:
    """Per-case organ/tumour DSC, tumour NSD at 2 mm, lesion detection by size, patient sensitivity/specificity."""

    from ..evaluation import evaluate_folders, markdown_table

    data = evaluate_folders(pred, truth, out, truth_labels, organ_label, tumor_label, organ)
    console.print(markdown_table(data["summary"]))
    console.print(f"\n{data['summary']['cases']} case(s); wrote {out}")
