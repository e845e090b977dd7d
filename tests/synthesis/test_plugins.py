"""A separately installed package extends difftumor through entry points: synthesizer, sampler, segmentation
backbone and dataset layout, each one object in one file (tests/plugin_package) plus one line in its pyproject."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

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


def test_plugin_backbone_trains_through_the_segmentation_config(installed_plugin, tmp_path):
    import torch

    from difftumor.segmentation.backbones import available_backbones, make_backbone

    assert "tiny-convnet" in available_backbones()
    network = make_backbone("tiny-convnet", 1, 3, width=2)
    assert network(torch.zeros(1, 1, 8, 8, 8)).shape == (1, 3, 8, 8, 8)
    out = tmp_path / "run"
    code = cli(
        ["train", "segmentation", "--config", "tiny_cpu", "--set", "model.backbone=tiny-convnet",
         "--set", "model.backbone_kwargs={width: 2}", "--set", f"run.output_dir={out}", "--set", "run.max_steps=1",
         "--set", "run.checkpoint_every=1", "--set", "data.crop_size=[16,16,16]", "--set", "data.spacing=3.0",
         "--set", f"data.datalist={_flat_datalist(tmp_path)}", "--set", 'data.healthy_datalist=""',
         "--set", "synthesis.synthesizer=none"]
    )  # fmt: skip
    assert code == 0
    from difftumor.segmentation.run import load_model

    model = load_model(out / "model")  # rebuilt from its config through the plugin's entry point
    assert model.config.backbone == "tiny-convnet" and model.config.backbone_kwargs == {"width": 2}
    assert type(model.network).__name__ == "Sequential" and model.network[0].out_channels == 2


def _flat_datalist(tmp_path):
    """A two-case dataset in the plugin's "flat" layout, prepared by `difftumor data prepare flat`."""
    root = tmp_path / "flat"
    root.mkdir(exist_ok=True)
    ct, organs = nib.load(str(PATIENT_A_CT)), nib.load(str(PATIENT_A_ORGANS))
    label = (np.asanyarray(organs.dataobj) == LIVER).astype(np.uint8)
    inner = np.argwhere(ndimage.binary_erosion(label, iterations=3))
    x, y, z = inner[len(inner) // 2]
    label[x - 1 : x + 2, y - 1 : y + 2, z - 1 : z + 2] = 2  # a stand-in lesion (27 voxels) inside the liver
    for case in ("a", "b"):
        nib.save(ct, str(root / f"{case}_ct.nii.gz"))
        nib.save(nib.Nifti1Image(label, organs.affine), str(root / f"{case}_seg.nii.gz"))
    datalist = tmp_path / "flat.json"
    if not datalist.exists():
        assert cli(["data", "prepare", "flat", str(root), "--out", str(datalist)]) == 0
    return datalist


def test_plugin_layout_prepares_data_and_names_its_truth_labels(installed_plugin, tmp_path, capsys):
    import json

    from difftumor.data.registry import available_layouts, truth_label_schemes

    assert "flat" in available_layouts() and "flat" in truth_label_schemes()
    datalist = json.loads(_flat_datalist(tmp_path).read_text())
    assert [case["id"] for case in datalist["data"]] == ["a", "b"] and datalist["layout"] == "flat"
    assert all(case["has_tumor"] for case in datalist["data"])
    # evaluate reads the layout's own label ids by its name
    truth = tmp_path / "flat" / "a_seg.nii.gz"
    assert cli(["evaluate", "--pred", str(truth), "--truth", str(truth), "--truth-labels", "flat",
                "--out", str(tmp_path / "m.json")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "m.json").read_text())["summary"]["tumor_dsc_mean"] == 1.0
    assert cli(["data", "prepare", "nope", str(tmp_path), "--out", str(tmp_path / "x.json")]) == 2
    assert "flat" in capsys.readouterr().err  # the unknown-layout error lists the plugin's layout
