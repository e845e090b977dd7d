"""Writers racing each other and the user, in real processes: a result replaces only what the output check approved,
a live writer's temporary is never removed (whatever PID namespace it runs in), a killed writer's is."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from difftumor.atomic import MARKER, clean_stale_temporaries, write_marker

# A writer that stops inside its atomic block until told to go on: ``form`` folder or file; prints the one-line
# error and exits 2 when the library refuses, as the CLI does. With a target pid, it first forks until a child gets
# that pid, and that child writes (a writer whose pid means nothing, or another process, outside its namespace).
WRITER = r"""
import os, sys, time, pathlib
from difftumor.atomic import atomic_file, atomic_folder
from difftumor.errors import DiffTumorInputError

out, form, ready, go = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4])
overwrite, target = sys.argv[5] == "1", int(sys.argv[6])

def write():
    try:
        if form == "folder":
            with atomic_folder(out, overwrite=overwrite, kind="synthesis") as temporary:
                (temporary / "result.txt").write_text("new")
                ready.write_text(str(temporary))
                while not go.exists():
                    time.sleep(0.01)
        else:
            with atomic_file(out, overwrite=overwrite, kind="metrics") as temporary:
                temporary.write_text('{"difftumor_output": "metrics", "value": "new"}')
                ready.write_text(str(temporary))
                while not go.exists():
                    time.sleep(0.01)
    except DiffTumorInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0

if target == 0:
    sys.exit(write())
while True:
    child = os.fork()
    if child == 0:
        os._exit(write() if os.getpid() == target else 0)
    _, status = os.waitpid(child, 0)
    if child >= target:
        sys.exit(os.waitstatus_to_exitcode(status) if child == target else 3)
"""


def _start(tmp_path: Path, out: Path, form: str, overwrite: bool = False, prefix=(), target: int = 0):
    ready, go = tmp_path / f"ready-{out.name}", tmp_path / f"go-{out.name}"
    for flag in (ready, go):
        flag.unlink(missing_ok=True)
    command = [*prefix, sys.executable, "-c", WRITER, str(out), form, str(ready), str(go), str(int(overwrite))]
    process = subprocess.Popen([*command, str(target)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not ready.exists():
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.01)
    return process, Path(ready.read_text()), go


def _finish(process, go: Path) -> tuple[int, str]:
    go.write_text("")
    _, error = process.communicate(timeout=60)
    return process.returncode, error


@pytest.mark.parametrize("form", ["folder", "file"])
def test_an_output_that_appears_while_writing_is_never_replaced(tmp_path, form):
    out = tmp_path / ("out" if form == "folder" else "metrics.json")
    process, _, go = _start(tmp_path, out, form)
    if form == "folder":  # the user makes the folder and puts notes in it while difftumor writes
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    else:
        out.write_text("mine")
    code, error = _finish(process, go)
    assert code == 2 and "appeared while difftumor was writing" in error and error.strip().count("\n") == 0
    assert (out / "notes.txt" if form == "folder" else out).read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir() if "difftumor-" in p.name) == []  # no temporary left


def test_an_approved_output_that_changes_while_writing_is_left_as_it_is(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.txt").write_text("old")
    write_marker(out, "synthesis", files=["result.txt"])
    process, _, go = _start(tmp_path, out, "folder", overwrite=True)
    (out / "notes.txt").write_text("added by the user meanwhile")
    code, error = _finish(process, go)
    assert code == 2 and "changed while difftumor was writing" in error
    assert (out / "notes.txt").exists() and (out / "result.txt").read_text() == "old"

    # unchanged, it is replaced as asked
    (out / "notes.txt").unlink()
    process, _, go = _start(tmp_path, out, "folder", overwrite=True)
    assert _finish(process, go)[0] == 0
    assert (out / "result.txt").read_text() == "new" and json.loads((out / MARKER).read_text())["kind"] == "synthesis"


def _dead_pid() -> int:
    """A pid above the first few hundred that no process of this PID namespace has."""
    return next(pid for pid in range(400, 1 << 22) if not Path(f"/proc/{pid}").exists())


def _unshare() -> list[str]:
    prefix = ["unshare", "--pid", "--fork", "--mount-proc"]
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"this machine does not allow a new PID namespace: {probe.stderr.strip()[:120]}")
    return prefix


def test_a_live_writer_in_another_pid_namespace_keeps_its_temporary(tmp_path):
    """Its temporary is named by a pid that is dead here: only its lock tells that it is alive."""
    target = _dead_pid()
    out = tmp_path / "out"
    process, temporary, go = _start(tmp_path, out, "folder", prefix=_unshare(), target=target)
    assert f"difftumor-{target}-" in temporary.name and not Path(f"/proc/{target}").exists()
    assert clean_stale_temporaries(tmp_path) == [] and temporary.exists()
    code, error = _finish(process, go)
    assert code == 0, error
    assert (out / "result.txt").read_text() == "new"


def test_a_killed_writers_temporaries_are_removed_by_the_next_writer(tmp_path):
    for form, name in (("folder", "out"), ("file", "metrics.json")):
        process, temporary, _ = _start(tmp_path, tmp_path / name, form)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert temporary.exists()
        assert clean_stale_temporaries(tmp_path) == [temporary] and not temporary.exists()
        assert not (tmp_path / name).exists()


def test_a_writer_cleaning_up_never_takes_another_live_writers_temporary(tmp_path):
    """Two writers into one folder at once: the second one's start-up clean-up leaves the first one's work alone."""
    first, first_temporary, first_go = _start(tmp_path, tmp_path / "a", "folder")
    second, _, second_go = _start(tmp_path, tmp_path / "b", "folder")
    assert first_temporary.exists()
    assert _finish(second, second_go)[0] == 0 and _finish(first, first_go)[0] == 0
    assert (tmp_path / "a" / "result.txt").read_text() == "new" == (tmp_path / "b" / "result.txt").read_text()
