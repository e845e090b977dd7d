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
    overwrite: Annotated[bool, typer.Option(help="Replace a prediction difftumor wrote earlier.")] = False,
    series: Annotated[
        str | None, typer.Option(help="DICOM SeriesInstanceUID, when the CT folder holds several series.")
    ] = None,
) -> None:
    """Segment organ and tumours with sliding-window inference; the prediction is written on the input grid."""
    from ..atomic import atomic_file, check_output
    from ..data.volumes import check_hounsfield, load_volume, save_volume
    from ..hub import resolve_pipeline_folder
    from ..segmentation import SegmentationModel, segment_volume

    if not out.name.endswith((".nii", ".nii.gz")):
        raise DiffTumorInputError(f"output {out} is not a .nii/.nii.gz name", "e.g. --out prediction.nii.gz")
    inputs = (ct, model if Path(model).exists() else None)
    check_output(out, "file", inputs, overwrite, kind="segmentation")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise DiffTumorInputError("CUDA is not available on this machine", "use --device cpu")
    volume = load_volume(ct, "CT", series=series)
    check_hounsfield(volume)
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
    with atomic_file(out, overwrite, inputs, kind="segmentation") as temporary:
        save_volume(labels, volume, temporary, description="difftumor segmentation")
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
    overwrite: Annotated[bool, typer.Option(help="Replace a metrics file difftumor wrote earlier.")] = False,
    iou_threshold: Annotated[
        float, typer.Option(help="IoU a predicted lesion needs with a true one to detect it (one-to-one).")
    ] = 0.5,
    connectivity: Annotated[int, typer.Option(help="Lesion connectivity: 26, or 6 (the original's rule).")] = 26,
) -> None:
    """Organ/tumour DSC (mean and global), tumour NSD at 2 mm, lesion detection by one-to-one IoU matching per size
    bin, false positives, patient sensitivity/specificity — with 95 % intervals."""

    from ..evaluation import evaluate_folders, markdown_table

    data = evaluate_folders(
        pred, truth, out, truth_labels, organ_label, tumor_label, organ, overwrite, iou_threshold, connectivity
    )
    console.print(markdown_table(data["summary"]))
    console.print(f"\n{data['summary']['cases']} case(s); wrote {out}")
