"""The ``difftumor`` command line: one Typer app, one command per step of a study.

Heavy libraries (torch, diffusers, MONAI) are imported inside the commands so that ``--help`` is instant.
Errors a user can fix (:class:`DiffTumorInputError`) print one line and exit with code 2; anything else prints
one line and exits with 1. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .. import __version__
from ..errors import DiffTumorInputError

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
console = Console(highlight=False, soft_wrap=True)

app = typer.Typer(
    name="difftumor",
    help="Generalizable tumour synthesis in CT (DiffTumor): synthesise, train, segment, evaluate, convert, share.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        console.print(f"difftumor {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s: %(message)s")


@app.command()
def convert(
    autoencoder: Annotated[Path, typer.Option(help="The authors' AutoencoderModel.ckpt (Lightning checkpoint).")],
    diffusion: Annotated[Path, typer.Option(help="A released diffusion checkpoint, e.g. liver_early.pt.")],
    out: Annotated[Path, typer.Option(help="Folder to write the pipeline to (diffusers format, safetensors).")],
    ema: Annotated[
        bool, typer.Option("--ema/--no-ema", help="Use the EMA weights (default) or the online ones.")
    ] = True,
    scheduler: Annotated[
        str | None, typer.Option(help="Sampler to store (default: ddpm for T=4, ddim for T=200).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Default number of sampling steps to store.")] = None,
    organ: Annotated[
        str | None, typer.Option(help="Organ the model was trained on (default: from the file name).")
    ] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing non-empty output folder.")] = False,
) -> None:
    """Convert the authors' released checkpoints into a TumorInpaintPipeline folder."""
    from ..conversion.convert import convert_original_checkpoints

    pipeline = convert_original_checkpoints(
        autoencoder,
        diffusion,
        out,
        use_ema=ema,
        scheduler=scheduler,
        num_inference_steps=steps,
        organ=organ,
        overwrite=overwrite,
    )
    console.print(
        f"wrote {out} ({type(pipeline.scheduler).__name__}, T = {pipeline.scheduler.config.num_train_timesteps}, "
        f"{pipeline.config.default_num_inference_steps} steps); load it with "
        f"TumorInpaintPipeline.from_pretrained('{out}')"
    )


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        app(args=argv, prog_name="difftumor", standalone_mode=True)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 1
    except DiffTumorInputError as error:
        if debug:
            raise
        err_console.print(f"error: {error}", markup=False)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted", markup=False)
        return 130
    except Exception as error:  # noqa: BLE001 — the CLI's last line of defence
        if debug:
            raise
        err_console.print(
            f"error: unexpected failure: {type(error).__name__}: {error} (rerun with --debug for the traceback)",
            markup=False,
        )
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
