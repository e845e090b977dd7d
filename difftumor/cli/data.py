"""``difftumor data prepare``: dataset layouts -> a datalist with labels in the internal scheme."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..data.registry import layouts_help
from .app import app, console, examples

data_app = typer.Typer(help="Prepare datasets: layouts -> datalists.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command(
    "prepare",
    epilog=f"Layouts: {layouts_help()}.\n\n"
    + examples(
        "difftumor data prepare msd Task03_Liver/ --out liver.json",
        "difftumor data prepare totalsegmentator cases/ --organ pancreas --out pancreas.json",
    ),
)
def prepare(
    layout: Annotated[str, typer.Argument(help="A dataset layout (listed below).")],
    root: Annotated[Path, typer.Argument(help="The dataset's root folder.")],
    out: Annotated[Path, typer.Option(help="Datalist JSON to write.")],
    organ: Annotated[
        str | None, typer.Option(help="liver, pancreas or kidney (needed for multi-organ layouts).")
    ] = None,
    early_max_diameter_mm: Annotated[
        float | None, typer.Option(help="Split tumours: <= this equivalent diameter -> 2 (early), larger -> 3.")
    ] = None,
    labels_dir: Annotated[Path | None, typer.Option(help="Where to write the labels (default: next to --out).")] = None,
    organ_value: Annotated[list[int] | None, typer.Option(help="folders layout: organ label value(s).")] = None,
    tumor_value: Annotated[list[int] | None, typer.Option(help="folders layout: tumour label value(s).")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace a datalist and labels folder difftumor wrote earlier.")
    ] = False,
) -> None:
    """Scan a dataset, write labels in the internal scheme (0 background, 1 organ, 2 tumour) and a datalist."""
    from ..data.layouts import prepare_datalist

    datalist = prepare_datalist(
        layout,
        root,
        out,
        organ=organ,
        early_max_diameter_mm=early_max_diameter_mm,
        labels_dir=labels_dir,
        organ_values=tuple(organ_value or (1,)),
        tumor_values=tuple(tumor_value or (2,)),
        overwrite=overwrite,
    )
    cases = datalist["data"]
    with_tumors = sum(case["has_tumor"] for case in cases)
    console.print(
        f"wrote {out}: {len(cases)} {datalist['organ']} case(s), {with_tumors} with tumours, "
        f"{len(cases) - with_tumors} healthy"
    )


@data_app.command(
    "split-lesions",
    epilog=examples("difftumor data split-lesions ct.nii.gz label.nii.gz --out split/ --margin-mm 10 --seed 0"),
)
def split_lesions_command(
    image: Annotated[Path, typer.Argument(help="The CT (NIfTI).")],
    label: Annotated[Path, typer.Argument(help="Its label map (organ and tumour values).")],
    out: Annotated[
        Path,
        typer.Option(help="Folder to write (train_ct/label, healthy_ct/label, test_label, split.json)."),
    ],
    margin_mm: Annotated[
        float, typer.Option(help="Minimum distance between the sides (closer lesions are dropped); test zone margin.")
    ] = 10.0,
    test_fraction: Annotated[float, typer.Option(help="Fraction of lesions on the test side.")] = 0.5,
    seed: Annotated[int, typer.Option(help="Seed of the side assignment and of the test-zone fill.")] = 0,
    organ_value: Annotated[list[int] | None, typer.Option(help="Organ label value(s).")] = None,
    tumor_value: Annotated[list[int] | None, typer.Option(help="Tumour label value(s).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a split folder difftumor wrote earlier.")] = False,
) -> None:
    """Split one CT's lesions (whole 3-D components, at least --margin-mm apart across sides) into training and
    test; the training image has the test lesions and their margin replaced by synthetic parenchyma, so no model
    sees them."""
    from ..data.lesion_split import split_lesions

    summary = split_lesions(
        image,
        label,
        out,
        organ_values=tuple(organ_value or (1,)),
        tumor_values=tuple(tumor_value or (2,)),
        margin_mm=margin_mm,
        test_fraction=test_fraction,
        seed=seed,
        overwrite=overwrite,
    )
    lesions, early = summary["lesions"], summary["early_lesions_20mm"]
    console.print(
        f"wrote {out}: {lesions['train']} training lesion(s) ({early['train']} <= 20 mm), "
        f"{lesions['test']} test lesion(s) ({early['test']} <= 20 mm), {lesions['dropped']} dropped within the margin"
    )
