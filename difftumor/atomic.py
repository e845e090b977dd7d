"""Write outputs safely: never onto an input, never over something difftumor did not write, never half-written.

Every command that writes checks its output path first with :func:`check_output`: the path must not be, contain or
lie inside one of the command's inputs, must not be the current folder or one above it, and an existing output is
replaced only with ``--overwrite``, only when difftumor wrote it, only by an output of the same kind (a metrics file
never replaces a datalist, a labels folder never a synthesis), and only when nothing was added to it since: folders
carry a :data:`MARKER` file naming their kind and the entries written, JSON files a ``"difftumor_output"`` key, NIfTI
files a ``descrip`` of ``difftumor <kind>``.

Writing goes to a temporary sibling named ``.<name>.difftumor-<pid>-<token>.partial`` that replaces the output only
when complete. A replaced folder is swapped in with one atomic ``renameat2(RENAME_EXCHANGE)`` where the system has it
(Linux), so a reader sees the complete old or the complete new result at every instant; elsewhere the old folder is
renamed aside first and restored by the next run if the process died in between. Temporaries left by a killed
process (its pid no longer alive) are removed by the next write into the same folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

from .data.dicom import looks_like_dicom
from .errors import DiffTumorInputError

#: Name of the file that marks a folder as written by difftumor (``--overwrite`` replaces only such folders).
MARKER = ".difftumor"
NIFTI_DESCRIPTION = b"difftumor"

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.difftumor-(?P<pid>\d+)-[0-9a-f]+\.(?P<kind>partial|old)(\..*)?$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_name(name: str, kind: str, suffix: str = "") -> str:
    return f".{name}.difftumor-{os.getpid()}-{secrets.token_hex(4)}.{kind}{suffix}"


def input_paths(paths: Iterable[str | os.PathLike | None]) -> list[Path]:
    """Resolved input paths; a single DICOM file stands for its whole series folder."""
    resolved = []
    for path in paths:
        if path is None:
            continue
        path = Path(path).resolve()
        if not path.exists():  # e.g. a Hub repo id given where a folder could be
            continue
        resolved.append(path)
        if path.is_file() and looks_like_dicom(path):
            resolved.append(path.parent)
    return resolved


def _relation(output: Path, source: Path) -> str | None:
    if output == source:
        return "is"
    if output in source.parents:
        return "contains"
    if source in output.parents:
        return "lies inside"
    return None


def read_marker(path: Path) -> dict | None:
    """The marker of a folder difftumor wrote, or ``None``."""
    try:
        content = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


def is_difftumor_folder(path: Path, kind: str | None = None) -> bool:
    marker = read_marker(path)
    return marker is not None and (kind is None or marker.get("kind") == kind)


def file_kind(path: Path) -> str | None:
    """The kind of output an existing file is, when difftumor wrote it (JSON ``difftumor_output``, NIfTI
    ``descrip``), else ``None``."""
    name = path.name.lower()
    try:
        if name.endswith(".json"):
            content = json.loads(path.read_text())
            kind = content.get("difftumor_output") if isinstance(content, dict) else None
            return kind if isinstance(kind, str) else None
        if name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            description = nib.load(str(path)).header["descrip"].tobytes().split(b"\0")[0].decode(errors="replace")
            prefix = NIFTI_DESCRIPTION.decode() + " "
            return description[len(prefix) :] if description.startswith(prefix) else None
    except Exception:  # noqa: BLE001 — an unreadable file is not one of ours
        return None
    return None


# Every way an output path can be unsafe (input, inside an input, symlink, foreign file, not ours) is one guarded
# error; one place keeps them consistent for every command.
def check_output(
    path: str | os.PathLike,
    form: str = "folder",
    inputs: Iterable[str | os.PathLike | None] = (),
    overwrite: bool = False,
    option: str = "--out",
    create_parents: bool = False,
    kind: str | None = None,
) -> Path:
    """Validate an output path before any work starts; returns it as a :class:`Path`.

    Args:
        path: the folder or file to write.
        form: ``"folder"`` or ``"file"``.
        inputs: every file and folder the command reads (refused: the output is, contains or lies inside one).
        overwrite: allow replacing an existing output that difftumor wrote.
        option: how the user named the path, for messages.
        create_parents: the caller creates missing parent folders (training runs); otherwise they must exist.
        kind: what the command writes (``"synthesis"``, ``"metrics"``...): an existing output of another kind is
            never replaced.

    Raises:
        DiffTumorInputError: with the problem and the fix.
    """
    path = Path(path)
    absolute = path.resolve()
    cwd = Path.cwd().resolve()
    if absolute == cwd or absolute in cwd.parents:
        raise DiffTumorInputError(
            f"{option} {path} is the current folder or one above it",
            "pass a new sub-folder, e.g. --out results/",
        )
    for source in input_paths(inputs):
        relation = _relation(absolute, source)
        if relation is not None:
            raise DiffTumorInputError(
                f"{option} {path} {relation} the input {source}", "write the output outside the inputs"
            )
    if form == "folder":
        if path.exists() and not path.is_dir():
            raise DiffTumorInputError(f"{option} {path} is a file", "pass a folder path")
        if path.is_dir() and any(path.iterdir()):
            marker = read_marker(path)
            if marker is None:
                raise DiffTumorInputError(
                    f"{option} {path} is a folder that difftumor did not write",
                    "choose a new folder (--overwrite only replaces folders difftumor wrote)",
                )
            _check_same_kind(path, option, marker.get("kind"), kind)
            written = marker.get("files")
            if isinstance(written, list):
                added = sorted(entry.name for entry in path.iterdir() if entry.name not in {MARKER, *written})
                if added:
                    raise DiffTumorInputError(
                        f"{option} {path} holds {', '.join(added[:3])}{' ...' if len(added) > 3 else ''}, which "
                        "difftumor did not write",
                        "move those elsewhere or choose a new folder",
                    )
            if not overwrite:
                raise DiffTumorInputError(
                    f"{option} {path} already holds a difftumor result", "choose a new folder or pass --overwrite"
                )
    else:
        if path.is_dir():
            raise DiffTumorInputError(f"{option} {path} is a folder", "pass a file path")
        if path.exists():
            existing = file_kind(path)
            if existing is None:
                raise DiffTumorInputError(
                    f"{option} {path} exists and was not written by difftumor",
                    "choose a new file name (--overwrite only replaces files difftumor wrote)",
                )
            _check_same_kind(path, option, existing, kind)
            if not overwrite:
                raise DiffTumorInputError(f"{option} {path} already exists", "choose a new name or pass --overwrite")
    if not create_parents and not absolute.parent.is_dir():
        raise DiffTumorInputError(f"folder {path.parent} of {option} does not exist", "create it first")
    return path


def _check_same_kind(path: Path, option: str, existing: str | None, wanted: str | None) -> None:
    if wanted is not None and existing != wanted:
        raise DiffTumorInputError(
            f"{option} {path} holds a difftumor {existing or 'output'}, not a {wanted}",
            "choose a new path (--overwrite only replaces an output of the same kind)",
        )


def check_output_folder(
    path: str | os.PathLike, overwrite: bool = False, inputs: Iterable = (), kind: str | None = None
) -> Path:
    """:func:`check_output` for a folder."""
    return check_output(path, "folder", inputs, overwrite, kind=kind)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temporaries(parent: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that killed difftumor processes left in ``parent``; returns what was removed.

    A folder renamed aside (``.old``) whose output is missing is the complete old result of a replacement that was
    interrupted between its two renames: it is put back instead.
    """
    parent = Path(parent)
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or _pid_alive(int(match.group("pid"))):
            continue
        target = parent / match.group("name")
        if match.group("kind") == "old" and not target.exists():
            os.rename(entry, target)
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2``); ``False`` where the system or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _replace_folder(new: Path, target: Path) -> None:
    if not target.exists():
        os.rename(new, target)
        return
    if _exchange(new, target):
        shutil.rmtree(new)  # now the old result
        return
    aside = target.parent / _temporary_name(target.name, "old")
    os.rename(target, aside)
    os.rename(new, target)
    shutil.rmtree(aside)


def replace_text(path: str | os.PathLike, text: str) -> None:
    """Write a small text file whole or not at all (a temporary sibling renamed onto it), with no ownership check:
    for files that belong to an output already checked, such as the label descriptions beside a label map."""
    path = Path(path)
    temporary = path.with_name(_temporary_name(path.name, "partial"))
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_marker(folder: Path, kind: str, files: list[str] | None = None) -> None:
    """Mark ``folder`` as a difftumor output of ``kind``; ``files`` are the entries it holds when complete (an
    output that later holds anything else is not replaced), ``None`` for folders that grow (runs, batches)."""
    from . import __version__

    marker = {"written_by": "difftumor", "difftumor_version": __version__, "kind": kind}
    if files is not None:
        marker["files"] = sorted(files)
    (folder / MARKER).write_text(json.dumps(marker) + "\n")


@contextlib.contextmanager
def atomic_folder(
    path: str | os.PathLike,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
    kind: str = "output",
) -> Iterator[Path]:
    """Yield a temporary folder next to ``path`` that replaces ``path`` when the block succeeds.

    The folder is checked with :func:`check_output` first and marked as difftumor's ``kind`` of output, with the
    entries it holds. On an exception the temporary folder is removed and ``path`` is left as it was.
    """
    path = check_output(path, "folder", inputs, overwrite, kind=kind)
    target = path.resolve()
    clean_stale_temporaries(target.parent)
    temporary = target.parent / _temporary_name(target.name, "partial")
    temporary.mkdir(mode=0o777 & ~_umask())
    try:
        write_marker(temporary, kind, files=[])  # first: a half-written temporary is recognisably difftumor's
        yield temporary
        write_marker(temporary, kind, files=[entry.name for entry in temporary.iterdir() if entry.name != MARKER])
        _replace_folder(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
    kind: str | None = None,
) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; it is renamed onto ``path`` when the block succeeds.

    The temporary name keeps ``path``'s suffixes (``.nii.gz``) so writers that infer the format from the name work.
    The writer records ``kind`` in the file (``difftumor_output`` in JSON, ``descrip`` in NIfTI).
    """
    path = check_output(path, "file", inputs, overwrite, kind=kind)
    target = path.resolve()  # a link is replaced where it points, on that file system
    clean_stale_temporaries(target.parent)
    temporary = target.parent / _temporary_name(target.name, "partial", "".join(target.suffixes))
    try:
        yield temporary
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def prepare_output_root(
    path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = (), kind: str = "batch"
) -> Path:
    """Create (or reuse) a folder that will hold several difftumor outputs, e.g. one sub-folder per case.

    An existing folder is reused when difftumor made it for the same kind or it is empty; it is marked as such.
    """
    path = check_output(path, "folder", inputs, overwrite=True, kind=kind)
    path.mkdir(exist_ok=True)
    if not is_difftumor_folder(path):
        write_marker(path, kind)
    clean_stale_temporaries(path)
    return path
