"""Write outputs safely: never onto an input, never over something difftumor did not write, never half-written.

Every command that writes checks its output path first with :func:`check_output`: the path must not be, contain or
lie inside one of the command's inputs, must not be the current folder or one above it, and an existing output is
replaced only with ``--overwrite``, only when difftumor wrote it, only by an output of the same kind (a metrics file
never replaces a datalist, a labels folder never a synthesis), and only when nothing was added to it since: folders
carry a :data:`MARKER` file naming their kind and the entries written, JSON files a ``"difftumor_output"`` key, NIfTI
files a ``descrip`` of ``difftumor <kind>``.

Writing goes to a temporary sibling named ``.<name>.difftumor-<pid>-<token>.partial`` that replaces the output only
when complete, and only if the output is still what the check approved: a path that was absent is created without
replacing anything (``renameat2(RENAME_NOREPLACE)``, a hard link for files), so a folder or file that appeared in the
meantime is never deleted; an output that existed is swapped with one atomic ``renameat2(RENAME_EXCHANGE)`` and the
result swapped back, refused, if what came out is not the approved output (another inode, marker or contents). A
reader sees the complete old or the complete new result at every instant; where the system has no ``renameat2`` the
old folder is renamed aside first and restored by the next run if the process died in between.

Every writer holds an exclusive ``flock`` on its temporary (a lock file inside a temporary folder, the file itself)
for as long as it writes (:class:`WriterLock`): the next write into the same folder removes only temporaries whose
lock nobody holds, whichever PID namespace or host the writer runs in. Training runs hold such a lock on their run
folder, so a second run on the same folder is refused.
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
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import DiffTumorInputError
from .formats import looks_like_dicom

#: Name of the file that marks a folder as written by difftumor (``--overwrite`` replaces only such folders).
MARKER = ".difftumor"
NIFTI_DESCRIPTION = b"difftumor"

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.difftumor-(?P<pid>\d+)-[0-9a-f]+\.(?P<kind>partial|old|creating)(\..*)?$")
#: Inside a temporary folder: the file its writer holds locked while it writes.
WRITER_LOCK = ".difftumor-writing"
#: A temporary folder still being set up (no lock file yet) is someone's for this long.
_SETUP_SECONDS = 60.0


class WriterLock:
    """An exclusive ``flock`` on ``path`` (created if missing), held until :meth:`release`: the one sign that a
    difftumor writer is alive, which other processes see whatever their PID namespace (and on other hosts where the
    shared file system supports locks).

    Raises:
        DiffTumorInputError: from :meth:`acquire` when another process holds it (``message`` names what is busy).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, busy: tuple[str, str] | None = None) -> WriterLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            problem, fix = busy or (f"{self.path} is locked by another difftumor process", "wait for it to finish")
            raise DiffTumorInputError(problem, fix) from None
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the lock
            self._fd = None


def lock_is_held(path: Path) -> bool:
    """Whether some process holds the :class:`WriterLock` of ``path`` (``False`` when the file is missing)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


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
        try:
            path = Path(path).resolve()
        except (RuntimeError, OSError):  # a symbolic link loop
            raise DiffTumorInputError(
                f"{path} is a symbolic link that points to itself (a loop)", "pass the file or folder it should name"
            ) from None
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
    needed_bytes: int = 0,
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
        needed_bytes: free space the result needs beside it (refused before any work when it is not there).

    Raises:
        DiffTumorInputError: with the problem and the fix.
    """
    path = Path(path)
    if path.is_symlink():
        try:
            pointed = path.resolve(strict=True)
        except (OSError, RuntimeError):
            raise DiffTumorInputError(
                f"{option} {path} is a symbolic link to {os.readlink(path)}, which does not exist (or loops)",
                "pass the folder or file to write itself, not a dangling link",
            ) from None
        path = pointed  # a live link: every check below is of what it points to, where the result is written
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
    _check_writable(absolute, option, needed_bytes)
    return path


#: Longest temporary name difftumor makes beside an output, beyond twice the output's name (its suffixes repeat).
_TEMPORARY_OVERHEAD = len(".difftumor-4194304-00000000.creating.")


def _check_writable(absolute: Path, option: str, needed_bytes: int) -> None:
    """Refuse, before any work, an output that cannot be written: a parent folder without write permission, a name
    too long for the file system once made temporary, or less free space than ``needed_bytes``."""
    parent = next((p for p in (absolute.parent, *absolute.parents) if p.exists()), absolute.parent)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DiffTumorInputError(f"cannot write into {parent} (no permission)", f"choose another {option}")
    try:
        name_max = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    longest = 2 * len(os.fsencode(absolute.name)) + _TEMPORARY_OVERHEAD
    if longest > name_max:
        raise DiffTumorInputError(
            f"{option} name {absolute.name[:40]}… is {len(os.fsencode(absolute.name))} bytes: too long for this file "
            f"system once difftumor names its temporary copy (at most {(name_max - _TEMPORARY_OVERHEAD) // 2})",
            "choose a shorter name",
        )
    if needed_bytes:
        free = shutil.disk_usage(parent).free
        if free < needed_bytes:
            raise DiffTumorInputError(
                f"{parent} has {free / 2**20:.0f} MiB free; the result needs about {needed_bytes / 2**20:.0f} MiB",
                "free some space or choose another output folder",
            )


def _check_same_kind(path: Path, option: str, existing: str | None, wanted: str | None) -> None:
    if wanted is not None and existing != wanted:
        raise DiffTumorInputError(
            f"{option} {path} holds a difftumor {existing or 'output'}, not a {wanted}",
            "choose a new path (--overwrite only replaces an output of the same kind)",
        )


def check_output_folder(
    path: str | os.PathLike,
    overwrite: bool = False,
    inputs: Iterable = (),
    kind: str | None = None,
    needed_bytes: int = 0,
) -> Path:
    """:func:`check_output` for a folder."""
    return check_output(path, "folder", inputs, overwrite, kind=kind, needed_bytes=needed_bytes)


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


def _writer_alive(entry: Path, kind: str, pid: int) -> bool:
    """Whether the writer of the temporary ``entry`` still works on it: its lock is held (a lock file inside a
    folder, the file itself), a folder is still being set up, or — for a folder set aside by the fallback without
    ``renameat2``, which carries no lock — its pid is alive."""
    if kind == "old":
        return _pid_alive(pid)
    if entry.is_dir() and not entry.is_symlink():
        lock = entry / WRITER_LOCK
        if not lock.exists():
            try:
                return time.time() - entry.stat().st_mtime < _SETUP_SECONDS
            except OSError:
                return False
        return lock_is_held(lock)
    return lock_is_held(entry)


def clean_stale_temporaries(parent: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that killed difftumor processes left in ``parent``; returns what was removed.

    A temporary is stale when no process holds its writer lock (:class:`WriterLock`). A folder renamed aside
    (``.old``) whose output is missing is the complete old result of a replacement that was interrupted between
    its two renames: it is put back instead.
    """
    parent = Path(parent)
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or _writer_alive(entry, match.group("kind"), int(match.group("pid"))):
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


_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2(first: Path, second: Path, flags: int) -> bool:
    """Linux ``renameat2(first, second, flags)``; ``False`` where the system or file system cannot, an
    :class:`OSError` (``EEXIST`` for a taken name under ``RENAME_NOREPLACE``) when the rename itself fails."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), flags)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2``); ``False`` where the system or file system cannot."""
    return _renameat2(first, second, _RENAME_EXCHANGE)


def _appeared(target: Path) -> DiffTumorInputError:
    return DiffTumorInputError(
        f"{target} appeared while difftumor was writing it; it was left as it is and nothing was written",
        "choose another output path, or move that one away and run again",
    )


def _changed(target: Path) -> DiffTumorInputError:
    return DiffTumorInputError(
        f"{target} changed while difftumor was writing it; it was left as it is and nothing was written",
        "run again (with --overwrite) once nothing else writes there",
    )


def _identity(path: Path) -> tuple | None:
    """What the output check approved, to compare with what is there when the result replaces it: ``None`` for an
    absent path; the inode and (for a folder) its marker and entries, (for a file) its size and modification time."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return None
    if path.is_dir() and not path.is_symlink():
        try:
            marker = (path / MARKER).read_bytes()
        except OSError:
            marker = None
        return (status.st_dev, status.st_ino, marker, tuple(sorted(entry.name for entry in path.iterdir())))
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def _create_new(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``, which must still be absent: never replaces what appeared there."""
    try:
        done = _renameat2(new, target, _RENAME_NOREPLACE)
    except OSError as error:
        if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise _appeared(target) from None
        raise
    if done:
        return
    if new.is_file():
        try:
            os.link(new, target)  # fails if the name is taken, atomically
        except FileExistsError:
            raise _appeared(target) from None
        except OSError:
            pass
        else:
            new.unlink()
            return
    if os.path.lexists(target):  # no atomic way here: the narrowest check
        raise _appeared(target)
    os.rename(new, target)


def _replace_approved(new: Path, target: Path, approved: tuple | None) -> None:
    """Put ``new`` at ``target`` if ``target`` is still what the output check approved (``approved``, from
    :func:`_identity`); the replaced result ends at ``new``'s path (the caller removes it). Anything else at
    ``target`` is left untouched and refused."""
    if approved is None:
        _create_new(new, target)
        return
    if _exchange(new, target):
        if _identity(new) != approved:  # what came out is not what was approved: put it back
            _exchange(new, target)
            raise _changed(target)
        return
    if _identity(target) != approved:
        raise _changed(target)
    aside = target.parent / _temporary_name(target.name, "old")
    os.rename(target, aside)
    os.rename(new, target)
    os.rename(aside, new)


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
    entries it holds. The result replaces only what the check approved (see the module doc). On an exception the
    temporary folder is removed and ``path`` is left as it was.
    """
    path = check_output(path, "folder", inputs, overwrite, kind=kind)
    target = path.resolve()
    approved = _identity(target)
    clean_stale_temporaries(target.parent)
    # Set up under a name the cleaner leaves alone for a while, and locked before it becomes a ``.partial``.
    token = _temporary_name(target.name, "")
    temporary = target.parent / f"{token}creating"
    temporary.mkdir(mode=0o777 & ~_umask())
    lock = WriterLock(temporary / WRITER_LOCK).acquire()
    try:
        partial = target.parent / f"{token}partial"
        os.rename(temporary, partial)
        temporary = partial
        write_marker(temporary, kind, files=[])  # first: a half-written temporary is recognisably difftumor's
        yield temporary
        (temporary / WRITER_LOCK).unlink()  # still held through the open descriptor until the swap is done
        write_marker(temporary, kind, files=[entry.name for entry in temporary.iterdir() if entry.name != MARKER])
        _replace_approved(temporary, target, approved)
        if temporary.exists():  # the replaced result
            shutil.rmtree(temporary)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    finally:
        lock.release()


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
    kind: str | None = None,
) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; it replaces ``path`` when the block succeeds, if ``path`` is
    still what the output check approved (see the module doc).

    The temporary name keeps ``path``'s suffixes (``.nii.gz``) so writers that infer the format from the name work;
    it exists (empty, locked by this writer) when the block starts, and writers overwrite it in place. The writer
    records ``kind`` in the file (``difftumor_output`` in JSON, ``descrip`` in NIfTI).
    """
    path = check_output(path, "file", inputs, overwrite, kind=kind)
    target = path.resolve()  # a link is replaced where it points, on that file system
    approved = _identity(target)
    clean_stale_temporaries(target.parent)
    temporary = target.parent / _temporary_name(target.name, "partial", "".join(target.suffixes))
    lock = WriterLock(temporary).acquire()
    try:
        yield temporary
        _replace_approved(temporary, target, approved)
        temporary.unlink(missing_ok=True)  # the replaced file, or the name a hard link was made from
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    finally:
        lock.release()


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
