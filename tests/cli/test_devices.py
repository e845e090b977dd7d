"""One ``--device`` option on every command, same choices, same default (``auto``), and pipeline dtypes that either
run or are refused in one line."""

from __future__ import annotations

import inspect
import logging
import typing

import pytest
import torch

from difftumor import TumorInpaintPipeline
from difftumor.assets import bundled_pipeline_path
from difftumor.cli.app import app
from difftumor.cli.main import main as cli
from difftumor.devices import DEVICE_HELP, resolve_device
from difftumor.errors import DiffTumorInputError
from tests.helpers.volumes import LIVER, PATIENT_A_CT, PATIENT_A_ORGANS


def _commands_with_device():
    commands = [
        *app.registered_commands,
        *(c for g in app.registered_groups for c in g.typer_instance.registered_commands),
    ]
    for command in commands:
        parameters = inspect.signature(command.callback).parameters
        if "device" in parameters:
            hint = typing.get_type_hints(command.callback, include_extras=True)["device"]
            yield command.callback.__name__, (parameters["device"].default, hint.__metadata__[0].help)


def test_every_command_with_a_device_has_the_same_option():
    found = dict(_commands_with_device())
    assert {"synthesize", "segment"} <= set(found)
    for name, (default, text) in found.items():
        assert (default, text) == ("auto", DEVICE_HELP), name


def test_auto_resolves_to_what_the_machine_has():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(DiffTumorInputError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_synthesize_takes_device_auto(tmp_path, capsys):
    arguments = ["synthesize", str(PATIENT_A_CT), "--organ-mask", str(PATIENT_A_ORGANS), "--organ-label", str(LIVER)]
    arguments += ["--synthesizer", "handcrafted", "--size", "tiny", "--out"]
    assert cli([*arguments, str(tmp_path / "auto"), "--device", "auto"]) == 0
    assert cli([*arguments, str(tmp_path / "bad"), "--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


@pytest.fixture(scope="module")
def pipe():
    pipeline = TumorInpaintPipeline.from_pretrained(bundled_pipeline_path())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def test_casting_the_pipeline_warns_about_nothing(pipe):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger, root = logging.getLogger("diffusers.models.modeling_utils"), logging.getLogger("diffusers")
    level = root.level
    root.setLevel(logging.WARNING)  # the test session runs diffusers at "error" (conftest)
    logger.addHandler(handler)
    try:
        pipe.to(torch.bfloat16)
        pipe.to(torch.float32)
    finally:
        logger.removeHandler(handler)
        root.setLevel(level)
    assert not [r for r in records if "kept in float32" in r.getMessage()]


def test_float16_fast_mode_on_cpu_is_refused_in_one_line(pipe):
    image = torch.full((1, 1, 32, 32, 32), 60.0)
    mask = torch.zeros_like(image)
    mask[..., 12:20, 12:20, 12:20] = 1
    pipe.to(torch.float16)
    try:
        with pytest.raises(DiffTumorInputError, match="float16 weights on the CPU"):
            pipe(image, mask, fast=True)
    finally:
        pipe.to(torch.float32)
