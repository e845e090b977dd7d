"""Shared test set-up: offline Hub, deterministic threads, paths to the test data kept in the repository."""

from __future__ import annotations

import os
from pathlib import Path

# Before anything imports huggingface_hub: never touch the network (a missing file would retry for ~50 s).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
# CLI tests run `difftumor synthesize/demo` in this process: glibc defaults here (test_allocator sets it per case).
os.environ.setdefault("DIFFTUMOR_KEEP_FREED_MEMORY", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
#: Real CT crops, parity fixtures and key lists (provenance and licences: tests/data/README.md).
DATA = REPO / "tests" / "data"
FIXTURES = DATA / "original_difftumor"

torch.set_num_threads(2)

#: Where the pipeline and released-size parity tests run their models (inputs and references stay on the CPU):
#: ``DIFFTUMOR_TEST_DEVICE=cuda python -m pytest tests/pipelines ...`` on a machine with a GPU. CI has none: "cpu".
DEVICE = torch.device(os.environ.get("DIFFTUMOR_TEST_DEVICE", "cpu"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


def load_fixture(name: str):
    return torch.load(FIXTURES / name, weights_only=True)


@pytest.fixture(scope="session")
def original_small(fixtures_dir):
    """The fixtures' small VQ-GAN and Unet3D, converted, plus their configs and recorded outputs."""
    import json

    import yaml

    from difftumor.conversion import unet_from_original, vqmodel_from_original

    vq_config = yaml.safe_load((fixtures_dir / "config_vqgan_small.yaml").read_text())
    unet_config = json.loads((fixtures_dir / "config_unet3d_small.json").read_text())
    vq_state = load_fixture("vqgan_small_state_dict.pt")
    unet_state = load_fixture("unet3d_small_state_dict.pt")
    return {
        "vq_config": vq_config,
        "unet_kwargs": unet_config["Unet3D_kwargs"],
        "vq_state": vq_state,
        "unet_state": unet_state,
        "vqmodel": vqmodel_from_original(vq_state, vq_config),
        "unet": unet_from_original(unet_state, unet_config["Unet3D_kwargs"]),
    }
