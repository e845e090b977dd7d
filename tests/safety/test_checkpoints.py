"""Checkpoints load without running code: every kind of file training writes, tampered, is refused on --resume with
exit 2 and one line, and the payload of a malicious pickle never runs (a marker file would prove it did)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from difftumor.assets import BUNDLED_PIPELINE
from difftumor.cli.main import main as cli
from difftumor.data.layouts import prepare_datalist
from tests.safety.test_user_data import _liver_crop, _save, snapshot


def _diffusion(datalist: Path, out: Path, steps: int) -> list[str]:
    settings = {
        "run.output_dir": out,
        "data.datalist": datalist,
        "vqmodel": BUNDLED_PIPELINE / "vqmodel",
        "run.max_steps": steps,
        "run.checkpoint_every": 1,
        "data.crop_size": "[32,32,32]",
        "data.batch_size": 1,
        "model.base_channels": 8,
        "model.channel_multipliers": "[1,2]",
        "ema.start_step": 1,
        "ema.update_every": 1,
    }
    return ["train", "diffusion", *[a for k, v in settings.items() for a in ("--set", f"{k}={v}")]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A two-step diffusion run on the demo liver with a spherical 'tumour' label: (datalist, run folder)."""
    root = tmp_path_factory.mktemp("tamper")
    ct, liver, affine = _liver_crop()
    label = liver.copy()
    centre = np.round(np.argwhere(liver).mean(0)).astype(int)
    grid = np.indices(liver.shape)
    label[((grid - centre[:, None, None, None]) ** 2).sum(0) <= 9] = 2
    for sub in ("images", "labels"):
        (root / "data" / sub).mkdir(parents=True)
    _save(ct, affine, root / "data" / "images" / "a.nii.gz")
    _save(label.astype(np.uint8), affine, root / "data" / "labels" / "a.nii.gz")
    prepare_datalist("folders", root / "data", root / "list.json", organ="liver")
    assert cli(_diffusion(root / "list.json", root / "run", 2)) == 0
    return root / "list.json", root / "run"


def _forge_hash(checkpoint: Path, name: str) -> None:
    """What an attacker who knows the format does: record the tampered file's hash as the saved one."""
    state_path = checkpoint / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["files"][name] = hashlib.sha256((checkpoint / name).read_bytes()).hexdigest()
    state_path.write_text(json.dumps(state))


def _evil(marker: Path) -> bytes:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"random_state": Payload(), "numpy_random_seed": 0, "torch_manual_seed": 0})


def _torch_bytes(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _overwrite(name: str, content, forge: bool = False):
    def tamper(checkpoint: Path, marker: Path) -> None:
        data = content(marker) if callable(content) else content
        (checkpoint / name).write_bytes(data)
        if forge:
            _forge_hash(checkpoint, name)

    return tamper


def _truncate(name: str, forge: bool):
    def tamper(checkpoint: Path, marker: Path) -> None:
        path = checkpoint / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        if forge:
            _forge_hash(checkpoint, name)

    return tamper


def _edit_json(name: str, forge: bool):
    def tamper(checkpoint: Path, marker: Path) -> None:
        path = checkpoint / name
        content = json.loads(path.read_text())
        content["tensor_lists"] = {key: length + 1 for key, length in content["tensor_lists"].items()}
        path.write_text(json.dumps(content))
        if forge:
            _forge_hash(checkpoint, name)

    return tamper


def _drop_record():
    def tamper(checkpoint: Path, marker: Path) -> None:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        del state["files"]
        (checkpoint / "trainer_state.json").write_text(json.dumps(state))
        path = checkpoint / "model.safetensors"
        path.write_bytes(path.read_bytes()[:-4] + b"\x00\x00\xf6\x42")  # one weight set to 123

    return tamper


def _rewrite_step(step: int):
    def tamper(checkpoint: Path, marker: Path) -> None:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        state["step"] = step
        (checkpoint / "trainer_state.json").write_text(json.dumps(state))

    return tamper


TAMPERING = {
    "weights replaced": (_truncate("model.safetensors", forge=False), "differs from what was saved"),
    "weights truncated, hash forged": (_truncate("model.safetensors", forge=True), "cannot be resumed safely"),
    "optimizer pickle with code": (_overwrite("optimizer.bin", _evil), "differs from what was saved"),
    "optimizer pickle with code, hash forged": (_overwrite("optimizer.bin", _evil, True), "cannot be resumed"),
    "RNG pickle with code, hash forged": (_overwrite("random_states_0.pkl", _evil, True), "cannot be resumed"),
    "RNG state emptied, hash forged": (
        _overwrite("random_states_0.pkl", lambda _: _torch_bytes({"step": 2}), True),
        "does not hold the random states",
    ),
    "custom pickle added": (_overwrite("custom_checkpoint_0.pkl", _evil), "never writes this file"),
    "EMA tensors truncated, hash forged": (_truncate("state_ema.safetensors", forge=True), "cannot be resumed"),
    "EMA layout edited, hash forged": (_edit_json("state_ema.json", forge=True), "do not match"),
    "EMA layout edited": (_edit_json("state_ema.json", forge=False), "differs from what was saved"),
    "trainer state garbage": (_overwrite("trainer_state.json", b"\x80not json"), "trainer_state.json"),
    "record of files removed": (_drop_record(), "record of the saved files or step is wrong"),
    "step rewritten": (_rewrite_step(1), "record of the saved files or step is wrong"),
}


def test_a_checkpoint_holds_only_safe_formats(trained):
    _, run = trained
    latest = run / "checkpoints" / "step_00000002"
    names = sorted(p.name for p in latest.iterdir())
    assert names == [
        "COMPLETE",
        "model.safetensors",
        "optimizer.bin",
        "random_states_0.pkl",
        "state_ema.json",
        "state_ema.safetensors",
        "trainer_state.json",
    ]
    recorded = json.loads((latest / "trainer_state.json").read_text())["files"]
    assert set(recorded) == set(names) - {"COMPLETE", "trainer_state.json"}


@pytest.mark.parametrize("name", list(TAMPERING))
def test_a_tampered_checkpoint_is_refused_and_runs_no_code(name, trained, tmp_path, capsys):
    datalist, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "pipeline")
    tamper, expected = TAMPERING[name]
    marker = tmp_path / "code_ran"
    tamper(copy / "checkpoints" / "step_00000002", marker)
    before = snapshot(copy)
    capsys.readouterr()
    code = cli([*_diffusion(datalist, copy, 3), "--resume"])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2, error
    assert len(error) == 1 and error[0].startswith("error: checkpoint ") and expected in error[0], error
    assert not marker.exists(), "a pickled payload ran"
    assert snapshot(copy) == before  # refused before anything was written


def test_an_intact_checkpoint_resumes(trained, tmp_path):
    datalist, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert cli([*_diffusion(datalist, copy, 3), "--resume"]) == 0
    assert (copy / "checkpoints" / "step_00000003" / "COMPLETE").exists()
    assert nib.load(str(datalist.parent / "data" / "images" / "a.nii.gz")).shape  # inputs still readable
