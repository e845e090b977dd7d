"""Push a pipeline to a loopback Hub server and pull it back by repo id, in fresh processes (no network)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from difftumor import TumorInpaintPipeline
from tests.helpers.fake_hub import FakeHub
from tests.helpers.pipelines import tiny_pipeline

PULL_AND_RUN = """
import sys, torch
from difftumor import TumorInpaintPipeline
pipe = TumorInpaintPipeline.from_pretrained(sys.argv[1])
hu = torch.linspace(-200, 300, 32 ** 3).reshape(1, 1, 32, 32, 32)
mask = torch.zeros(1, 1, 32, 32, 32, dtype=torch.bool)
mask[..., 10:18, 12:20, 8:16] = True
out = pipe(hu, mask, generator=torch.Generator().manual_seed(0), blur_sigma=2.0)
torch.save({"images": out.images, "scheduler": type(pipe.scheduler).__name__, "organ": pipe.config.organ}, sys.argv[2])
"""


def _env(hub: FakeHub, tmp_path):
    return {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_TOKEN": "fake-token",
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


@pytest.mark.slow
def test_push_then_pull_by_repo_id_gives_identical_outputs(tmp_path):
    pipe = tiny_pipeline(seed=4)
    pipe.save_pretrained(tmp_path / "local")
    with FakeHub() as hub:
        env = _env(hub, tmp_path)
        pushed = subprocess.run(
            [sys.executable, "-m", "difftumor.cli.main", "push", str(tmp_path / "local"), "lab/tiny-liver-early"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert pushed.returncode == 0, pushed.stderr
        files = hub.repos["lab/tiny-liver-early"]["files"]
        assert {"model_index.json", "unet/diffusion_pytorch_model.safetensors", "README.md"} <= set(files)
        card = files["README.md"].decode()
        assert "license:" in card and "diffusion steps (T) | 4" in card and "Intended use" in card
        assert "liver" in card and "early" in card

        pulled = subprocess.run(
            [sys.executable, "-c", PULL_AND_RUN, "lab/tiny-liver-early", str(tmp_path / "remote.pt")],
            env=env,
            capture_output=True,
            text=True,
        )
        assert pulled.returncode == 0, pulled.stderr
        assert any(r.startswith("GET /lab/tiny-liver-early/resolve/") for r in hub.requests)
        subprocess.run(
            [sys.executable, "-c", PULL_AND_RUN, str(tmp_path / "local"), str(tmp_path / "local.pt")],
            env=env,
            check=True,
            capture_output=True,
        )
    remote, local = torch.load(tmp_path / "remote.pt"), torch.load(tmp_path / "local.pt")
    assert remote["scheduler"] == "PreciseDDPMScheduler" and remote["organ"] == "liver"
    assert torch.equal(remote["images"], local["images"])


@pytest.mark.slow
def test_pipeline_push_to_hub_and_missing_repo_error(tmp_path, monkeypatch):
    with FakeHub() as hub:
        env = _env(hub, tmp_path)
        script = (
            "from tests.helpers.pipelines import tiny_pipeline; print(tiny_pipeline(seed=1).push_to_hub('lab/direct'))"
        )
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=os.getcwd())
        assert done.returncode == 0, done.stderr
        assert "README.md" in hub.repos["lab/direct"]["files"]
        missing = subprocess.run(
            [
                sys.executable,
                "-m",
                "difftumor.cli.main",
                "synthesize",
                "ct.nii.gz",
                "--organ-mask",
                "m.nii.gz",
                "--pipeline",
                "lab/absent",
                "--out",
                str(tmp_path / "o"),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("error: Hub repository lab/absent was not found")


def test_from_pretrained_rejects_non_repo_names(tmp_path):
    import pytest

    from difftumor.errors import DiffTumorInputError

    with pytest.raises(DiffTumorInputError, match="does not exist \\(and it is not a Hub repo id"):
        TumorInpaintPipeline.from_pretrained(str(tmp_path / "nothing" / "here"))


@pytest.mark.slow
def test_segmentation_model_push_and_segment_by_repo_id(tmp_path):
    import nibabel as nib
    import numpy as np

    from difftumor.segmentation import SegmentationModel

    model = SegmentationModel(
        backbone="unet", backbone_kwargs={"channels": [4, 8], "strides": [2], "num_res_units": 0}, roi_size=(32, 32, 32)
    )
    model.save_pretrained(tmp_path / "seg")
    nib.save(nib.Nifti1Image(_body(), np.diag([2.0, 2.0, 3.0, 1.0])), str(tmp_path / "ct.nii.gz"))
    with FakeHub() as hub:
        env = _env(hub, tmp_path)
        pushed = subprocess.run(
            [sys.executable, "-m", "difftumor.cli.main", "push", str(tmp_path / "seg"), "lab/liver-seg"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert pushed.returncode == 0, pushed.stderr
        card = hub.repos["lab/liver-seg"]["files"]["README.md"].decode()
        assert "difftumor segment ct.nii.gz --model lab/liver-seg" in card
        segmented = subprocess.run(
            [
                sys.executable,
                "-m",
                "difftumor.cli.main",
                "segment",
                str(tmp_path / "ct.nii.gz"),
                "--model",
                "lab/liver-seg",
                "--out",
                str(tmp_path / "pred.nii.gz"),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
    assert segmented.returncode == 0, segmented.stderr
    assert nib.load(str(tmp_path / "pred.nii.gz")).shape == (20, 20, 12)


def _body():
    """80 HU soft tissue in air (a CT in HU: -1000 around the body)."""
    import numpy as np

    ct = np.full((20, 20, 12), -1000, np.int16)
    ct[2:18, 2:18, :] = 80
    return ct


@pytest.mark.slow
def test_push_is_one_commit_and_honours_create_pr_and_revision(tmp_path):
    with FakeHub() as hub:
        env = _env(hub, tmp_path)
        script = (
            "import sys; from tests.helpers.pipelines import tiny_pipeline; pipe = tiny_pipeline(seed=1)\n"
            "print(pipe.push_to_hub('lab/one'))\n"
            "print(pipe.push_to_hub('lab/one', create_pr=True))\n"
            "print(pipe.push_to_hub('lab/one', revision='v2'))\n"
        )
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=os.getcwd())
        assert done.returncode == 0, done.stderr
        commits = [c for c in hub.commits if c["repo"] == "lab/one"]
        assert len(commits) == 3  # model files and card together, every time
        for commit in commits:
            assert {"README.md", "model_index.json", "unet/diffusion_pytorch_model.safetensors"} <= set(commit["files"])
            assert not any(name.startswith(".") or "/." in name for name in commit["files"])
        assert [(c["revision"], c["create_pr"]) for c in commits] == [("main", False), ("main", True), ("v2", False)]
        assert "/discussions/" in done.stdout.splitlines()[1]


def test_model_cards_round_trip_through_model_card_load(tmp_path):
    from huggingface_hub import ModelCard

    from difftumor.hub import model_card

    pipe = tiny_pipeline(seed=2)
    pipe.save_pretrained(tmp_path / "trained")
    (tmp_path / "trained" / "metrics.json").write_text(
        '{"summary": {"tumor_dsc_mean": 0.41, "early_lesion_sensitivity": 0.5}}'
    )
    pipe.save_pretrained(tmp_path / "converted")
    (tmp_path / "converted" / "CONVERSION.md").write_text("# Converted DiffTumor checkpoint\n\n- diffusion: x.pt\n")
    for name in ("trained", "converted"):
        (tmp_path / f"{name}.md").write_text(model_card(tmp_path / name, f"lab/{name}"))
        card = ModelCard.load(tmp_path / f"{name}.md")
        assert card.data.library_name == "difftumor" and card.data.pipeline_tag == "image-to-image"
        assert "tumor-synthesis" in card.data.tags
    converted = ModelCard.load(tmp_path / "converted.md").data
    assert converted.license == "other" and converted.license_name and "DiffTumor" in converted.license_link
    trained = ModelCard.load(tmp_path / "trained.md").data
    assert {r.metric_type: r.metric_value for r in trained.eval_results} == {
        "tumor_dsc_mean": 0.41,
        "early_lesion_sensitivity": 0.5,
    }


def test_segmentation_card_names_its_synthesis_pipeline_and_datasets(tmp_path):
    from huggingface_hub import ModelCard

    from difftumor.hub import segmentation_model_card
    from difftumor.segmentation import SegmentationModel

    model = SegmentationModel(
        backbone="unet", backbone_kwargs={"channels": [4, 8], "strides": [2], "num_res_units": 0}, roi_size=(32, 32, 32)
    )
    model.save_pretrained(tmp_path / "seg")
    (tmp_path / "seg" / "training.json").write_text(
        '{"synthesizer": "diffusion", "pipeline": "lab/difftumor-liver-early", "datasets": ["lab/healthy-ct"]}'
    )
    (tmp_path / "card.md").write_text(segmentation_model_card(tmp_path / "seg", "lab/seg"))
    data = ModelCard.load(tmp_path / "card.md").data
    assert data.base_model == "lab/difftumor-liver-early" and data.datasets == ["lab/healthy-ct"]
    assert data.pipeline_tag == "image-segmentation"
