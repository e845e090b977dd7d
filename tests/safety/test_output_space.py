"""Outputs that cannot be written are refused before any work, in one line: a folder without write permission, a
full disk (both in real processes, as a user without privileges and on a 2 MB file system), and a scaled integer CT
is written with every voxel's value unchanged."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from difftumor.cli.main import main as cli
from tests.safety.test_user_data import _liver_crop, _save


@pytest.fixture()
def case():
    """The liver crop in a folder anyone may read (a process without privileges reads it)."""
    folder = Path(tempfile.mkdtemp(prefix="difftumor-space-"))
    folder.chmod(0o755)
    ct, liver, affine = _liver_crop()
    _save(ct, affine, folder / "ct.nii.gz")
    _save(liver, affine, folder / "liver.nii.gz")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _synthesize(case: Path, out: Path, ct: Path | None = None) -> list[str]:
    return [
        "synthesize",
        str(ct or case / "ct.nii.gz"),
        "--organ-mask",
        str(case / "liver.nii.gz"),
        "--synthesizer",
        "handcrafted",
        "--out",
        str(out),
    ]


def _unshare(*options: str) -> list[str]:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run(["unshare", *options, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"this machine does not allow unshare {' '.join(options)}: {probe.stderr.strip()[:120]}")
    return ["unshare", *options]


def test_a_folder_without_write_permission_is_refused_before_any_work(case):
    locked = case / "locked"
    locked.mkdir(mode=0o555)
    command = [*_unshare("--user"), sys.executable, "-m", "difftumor.cli.main", *_synthesize(case, locked / "out")]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HOME": str(case)})
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot write into") and "(no permission)" in (
        result.stderr
    )
    assert list(locked.iterdir()) == []


def test_a_full_disk_is_refused_before_any_work(case):
    small = case / "small"
    small.mkdir()
    inner = f'mount -t tmpfs -o size=2m tmpfs {small} && exec {sys.executable} -m difftumor.cli.main "$@"'
    command = [*_unshare("--user", "--map-root-user", "--mount"), "sh", "-c", inner, "sh"]
    result = subprocess.run([*command, *_synthesize(case, small / "out")], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "MiB free; the result needs about" in line and "handcrafted tumours" not in result.stderr


def test_a_scaled_integer_ct_keeps_every_value(case, tmp_path):
    """uint16 with scl_inter −1024: written unscaled as int16 HU, every voxel away from the tumours equal."""
    ct = nib.load(str(case / "ct.nii.gz"))
    hu = np.clip(np.asanyarray(ct.dataobj).astype(np.int32), -1024, None)
    scaled = nib.Nifti1Image((hu + 1024).astype(np.uint16), ct.affine)
    scaled.header.set_slope_inter(1.0, -1024.0)
    nib.save(scaled, str(tmp_path / "ct_u16.nii.gz"))
    out = tmp_path / "out"
    assert cli(_synthesize(case, out, ct=tmp_path / "ct_u16.nii.gz")) == 0
    written = nib.load(str(out / "ct.nii.gz"))
    assert written.get_data_dtype() == np.int16
    values = np.asanyarray(written.dataobj)
    assert json.loads((out / "tumors.json").read_text())["changed_voxels"] == int((values != hu).sum()) > 0
