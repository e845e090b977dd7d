"""A separately installed package extends difftumor through entry points (synthesizer and sampler)."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from difftumor.cli.main import main as cli
from difftumor.schedulers import available_schedulers, make_scheduler
from difftumor.synthesis import available_synthesizers, get_synthesizer
from tests.helpers.volumes import LIVER, PATIENT_A_CT, PATIENT_A_ORGANS

PLUGIN = Path(__file__).resolve().parents[1] / "plugin_package"


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """pip-install the example plugin package (offline) into a directory put on sys.path for this process."""
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("plugin_source") / "package"
    shutil.copytree(PLUGIN, source)  # pip writes build files beside the sources: keep them out of the repository
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
    )
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    yield target
    sys.path.remove(str(target))
    sys.modules.pop("difftumor_example_plugin", None)


def test_plugin_synthesizer_is_listed_and_used_by_the_cli(installed_plugin, tmp_path, data_dir):
    assert "bright" in available_synthesizers()
    synthesizer = get_synthesizer("bright", boost_hu=80.0)
    assert type(synthesizer).__module__ == "difftumor_example_plugin"
    out = tmp_path / "out"
    assert (
        cli(
            [
                "synthesize",
                str(PATIENT_A_CT),
                "--organ-mask",
                str(PATIENT_A_ORGANS),
                "--organ-label",
                str(LIVER),
                "--synthesizer",
                "bright",
                "--size",
                "small",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    before = np.asanyarray(nib.load(str(PATIENT_A_CT)).dataobj).astype(float)
    after = np.asanyarray(nib.load(str(out / "ct.nii.gz")).dataobj).astype(float)
    assert (after - before).max() > 30 and (after - before).min() >= 0  # hyper-attenuating, as the plugin paints


def test_plugin_sampler_is_available_by_name(installed_plugin):
    assert "ddim-trailing" in available_schedulers()
    scheduler = make_scheduler("ddim-trailing", 4)
    scheduler.set_timesteps(2)
    assert scheduler.timesteps.tolist() == [3, 1]


def test_unknown_names_list_the_plugins(installed_plugin):
    from difftumor.errors import DiffTumorInputError

    with pytest.raises(DiffTumorInputError, match="bright, diffusion, handcrafted"):
        get_synthesizer("nope")
