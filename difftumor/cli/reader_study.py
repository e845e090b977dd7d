"""``difftumor reader-study``: a blinded Visual Turing Test kit, answers from known readers, and its scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .app import app, console, examples, warn
from .realism import RealOption, SyntheticOption, TruthLabelsOption

reader_study_app = typer.Typer(
    help="A Visual Turing Test: a blinded kit of real and synthetic lesions, a viewer page, and its scorer.",
    no_args_is_help=True,
)
app.add_typer(reader_study_app, name="reader-study")


@reader_study_app.command(
    "make",
    epilog=examples(
        "difftumor reader-study make --synthetic out/ --real lits/ --truth-labels lits --out kit/ --key key.json",
        "difftumor reader-study make --synthetic runs/ --real real.json --count 24 --fov-mm 64 --out kit/ --key k.json",
    ),
)
def make(
    synthetic: SyntheticOption,
    real: RealOption,
    out: Annotated[Path, typer.Option(help="Kit folder to write (index.html: open it in any browser).")],
    key: Annotated[Path, typer.Option(help="Answer key JSON to write, outside the kit folder.")],
    truth_labels: TruthLabelsOption = "internal",
    count: Annotated[
        int | None, typer.Option(help="Real and synthetic lesions each (default: every size-matched pair).")
    ] = None,
    fov_mm: Annotated[int, typer.Option(help="Edge of the cube shown around each lesion, mm (1 mm voxels).")] = 48,
    seed: Annotated[int, typer.Option(help="Seed of the matching order, the selection and the shuffle.")] = 0,
    machine_reader: Annotated[
        bool, typer.Option(help="Store the machine reader's out-of-fold verdict per item in the key.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a kit and key difftumor wrote earlier.")] = False,
) -> None:
    """Build a blinded kit: N real and N synthetic lesions matched one to one in size, each a 3-D cube around the
    lesion on a 1 mm grid, anonymous ids in a seeded order, no outline; the answer key goes to its own file."""
    from ..evaluation.reader_study import make_kit

    made = make_kit(synthetic, real, out, key, truth_labels, count, fov_mm, seed, machine_reader, overwrite)
    for message in made["warnings"]:
        warn(message)
    sizes = made["matching"]["diameter_mm"]
    console.print(
        f"wrote {out}/index.html ({len(made['items'])} volumes, {fov_mm} mm cubes; median diameter real "
        f"{sizes['real']['median']:.1f} mm, synthetic {sizes['synthetic']['median']:.1f} mm, KS p = "
        f"{made['matching']['ks_p']:.2f}) and the key {key}"
    )


@reader_study_app.command(
    "simulate",
    epilog=examples(
        "difftumor reader-study simulate --key key.json --reader always-real --out answers-always-real.json",
        "difftumor reader-study simulate --key key.json --reader random --seed 3 --out answers-random.json",
    ),
)
def simulate(
    key: Annotated[Path, typer.Option(help="The kit's answer key.")],
    reader: Annotated[str, typer.Option(help="A known-answer reader: always-real, random or key (reads the key).")],
    out: Annotated[Path, typer.Option(help="Answers JSON to write (the format the kit page exports).")],
    seed: Annotated[int, typer.Option(help="Seed of the random reader.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an answers file difftumor wrote earlier.")] = False,
) -> None:
    """Answers of a reader whose result is known in advance, to check a kit and its scoring end to end: one who
    always answers real (sensitivity 100 %, specificity 0 %), one who answers at random (about 50 %), and one who
    reads the key (100 %)."""
    from ..atomic import check_output
    from ..evaluation.reader_study import known_answers

    check_output(out, "file", [key], overwrite)
    answers = known_answers(key, reader, seed)
    _write_json(out, answers, [key], overwrite)
    console.print(f"wrote {out}: {len(answers['answers'])} answers of the {reader} reader")


@reader_study_app.command(
    "score",
    epilog=examples(
        "difftumor reader-study score --key key.json --answers answers-R1.json --answers answers-R2.json",
        "difftumor reader-study score --key key.json --answers a.json --machine-reader --out scores.json",
    ),
)
def score(
    key: Annotated[Path, typer.Option(help="The kit's answer key.")],
    answers: Annotated[list[Path], typer.Option(help="A reader's exported answers (repeatable).")],
    organ: Annotated[
        str | None, typer.Option(help="Organ whose Table 1 figures of the paper are shown beside (default: the kit's).")
    ] = None,
    machine_reader: Annotated[
        bool, typer.Option(help="Add the machine reader as a row (the kit made with --machine-reader).")
    ] = False,
    out: Annotated[Path | None, typer.Option(help="Also write the scores as JSON.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a scores file difftumor wrote earlier.")] = False,
) -> None:
    """Per reader: sensitivity (real called real), specificity (synthetic called synthetic) and accuracy with 95 %
    Wilson intervals in Table 1's layout with the paper's readers beside, the ROC AUC of the confidences, and
    Fleiss' κ between readers."""
    from ..atomic import check_output
    from ..evaluation.reader_study import score as score_kit
    from ..evaluation.reader_study import score_markdown

    if out is not None:
        check_output(out, "file", [key, *answers], overwrite)
    result = score_kit(key, answers, organ, machine_reader)
    console.print(score_markdown(result), markup=False)
    if out is not None:
        _write_json(out, result, [key, *answers], overwrite)
        console.print(f"wrote {out}")


def _write_json(out: Path, content: dict, inputs: list[Path], overwrite: bool) -> None:
    """``content`` as JSON at ``out``, all or nothing (checked against ``inputs`` by the caller before the work)."""
    from ..atomic import atomic_file

    with atomic_file(out, overwrite=overwrite, inputs=inputs) as temporary:
        Path(temporary).write_text(json.dumps(content, indent=1) + "\n")
