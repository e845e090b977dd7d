"""Entry point of the ``difftumor`` command line: one Typer app, one command per step of a study.

Heavy libraries (torch, diffusers, MONAI) are imported inside the commands so that ``--help`` is instant.
Errors a user can fix (:class:`DiffTumorInputError`) print one line and exit with code 2; anything else prints
one line and exits with 1. ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from ..errors import DiffTumorInputError
from . import convert, data, demo, hub, reader_study, realism, segment, synthesize, train  # noqa: F401 — registers the commands
from .app import app, err_console


def _plain_flags(command: Any) -> None:
    """On/off flags (``--help`` and counters such as ``-vv`` included) show no ``<bool>`` value in ``--help``: they
    take none. In every command."""
    for parameter in command.params:
        if getattr(parameter, "is_flag", False) or getattr(parameter, "count", False):
            parameter.metavar = ""
            parameter.show_default = parameter.show_default and not getattr(parameter, "count", False)

    def help_option(ctx: Any, _make: Any = command.get_help_option) -> Any:
        option = _make(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        _plain_flags(sub)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        command = typer.main.get_command(app)
        _plain_flags(command)
        command.main(args=argv, prog_name="difftumor", standalone_mode=True)
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
    except MemoryError as error:
        if debug:
            raise
        detail = f" ({error})" if str(error) else ""
        err_console.print(
            f"error: out of memory{detail}; use a smaller input, patch or batch, or a machine with more memory",
            markup=False,
        )
        return 2
    except Exception as error:  # noqa: BLE001 — the CLI's last line of defence
        if debug:
            raise
        if type(error).__name__ == "OutOfMemoryError":  # torch's (CUDA) out-of-memory, without importing torch
            err_console.print(
                "error: out of accelerator memory; use a smaller patch or batch, or --device cpu", markup=False
            )
            return 2
        err_console.print(
            f"error: unexpected failure: {type(error).__name__}: {error} (rerun with --debug for the traceback)",
            markup=False,
        )
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
