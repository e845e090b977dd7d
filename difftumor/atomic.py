"""Write outputs atomically: into a temporary sibling first, renamed into place only when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import DiffTumorInputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_folder(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Validate an output folder before any work starts: not a file, and empty unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DiffTumorInputError(f"output path {path} is a file", "pass a folder path for --out")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise DiffTumorInputError(f"output folder {path} is not empty", "choose a new folder or pass --overwrite")
    parent = path.resolve().parent
    if not parent.exists():
        raise DiffTumorInputError(f"parent folder {parent} of the output does not exist", "create it first")
    return path


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``path`` that replaces ``path`` when the block succeeds.

    On an exception the temporary folder is removed and ``path`` is left as it was, so an interrupted run never
    leaves a half-written output behind.
    """
    path = check_output_folder(path, overwrite)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.resolve().parent))
    temporary.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result should look like any new folder
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(temporary, path)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; it is renamed onto ``path`` when the block succeeds.

    The temporary name keeps ``path``'s suffixes (``.nii.gz``) so writers that infer the format from the name work.
    """
    path = Path(path)
    if path.is_dir():
        raise DiffTumorInputError(f"output path {path} is a folder", "pass a file path")
    if not path.resolve().parent.is_dir():
        raise DiffTumorInputError(f"folder {path.parent} of the output does not exist", "create it first")
    suffix = "".join(path.suffixes)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".partial{suffix}", dir=path.resolve().parent)
    os.close(handle)
    temporary_path = Path(temporary)
    temporary_path.chmod(0o666 & ~_umask())
    try:
        yield temporary_path
    except BaseException:
        temporary_path.unlink(missing_ok=True)
        raise
    os.replace(temporary_path, path)
