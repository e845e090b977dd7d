"""The Typer application and its consoles, shared by every command module."""

from __future__ import annotations

import logging
import warnings
from typing import Annotated

import typer
from rich.console import Console

from .. import __version__

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
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="Log what each step does (-vv: and its details).")
    ] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only warnings and errors (no progress).")] = False,
) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    # difftumor's own steps only: -v must not turn on every library's chatter
    logging.getLogger("difftumor").setLevel(
        logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    )
    console.quiet = quiet
    # MONAI announces on every image load that optional GPU DICOM decoders are absent; that is not news to a user.
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: "nvImageCodec" not in record.getMessage())


def examples(*commands: str) -> str:
    """A ``--help`` epilog listing example command lines (one paragraph each, so none is re-wrapped into another)."""
    escaped = [command.replace("[", "\\[") for command in commands]
    return "Examples:\n\n" + "\n\n".join(f"$ {command}" for command in escaped)


def warn(message: str) -> None:
    """A plausibility warning on stderr (the work goes on)."""
    err_console.print(f"warning: {message}", markup=False)


class LazyProgress:
    """A progress bar (on stderr) that appears on the first update, i.e. only once the inputs have passed every
    check, so that an error stays one line."""

    def __init__(self, description: str):
        self.description = description
        self._progress = None
        self._task = None

    def update(self, done: int, total: int, description: str | None = None) -> None:
        if console.quiet:
            return
        if self._progress is None:
            self._progress = _progress()
            self._progress.start()
            self._task = self._progress.add_task(description or self.description, total=total)
        self._progress.update(self._task, completed=done)

    def __enter__(self) -> LazyProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )
