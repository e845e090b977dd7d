"""The one exception type for problems a user can fix (bad files, bad options, bad configurations)."""

from __future__ import annotations


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
