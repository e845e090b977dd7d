"""The one exception type for problems a user can fix (bad files, bad options, bad configurations)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class DiffTumorInputError(ValueError):
    """A problem with the user's input, reported as one line naming the problem and how to fix it.

    The CLI turns it into exit code 2 without a traceback; programming errors stay ordinary exceptions.

    Args:
        problem: what is wrong, e.g. ``"organ mask /data/a.nii.gz is empty"``.
        hint: how to fix it, e.g. ``"pass the organ's label id with --organ-label"``.
    """

    def __init__(self, problem: str, hint: str | None = None):
        self.problem = problem
        self.hint = hint
        message = problem if not hint else f"{problem}; {hint}"
        super().__init__(message)


@contextmanager
def explain_load_failure(what: str, hint: str) -> Iterator[None]:
    """Turn any error raised while loading ``what`` (e.g. ``"the pipeline runs/x"``) into one
    :class:`DiffTumorInputError` line with ``hint``: diffusers and safetensors raise many types for an incomplete or
    corrupt folder, and a user needs to know which folder and what to do, not a traceback."""
    try:
        yield
    except DiffTumorInputError:
        raise
    except Exception as error:  # noqa: BLE001 — the many types loaders raise for broken folders
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:150]
        raise DiffTumorInputError(f"cannot load {what} ({first})", hint) from None
