"""Converting the authors' released checkpoint formats: key mapping, safe loading, the `convert` command."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch

from difftumor import TumorInpaintPipeline
from difftumor.cli.main import main as cli
from difftumor.conversion import infer_unet_kwargs, unet_from_original, vqmodel_from_original
from difftumor.conversion.checkpoints import load_checkpoint_safely, read_autoencoder_checkpoint
from difftumor.errors import DiffTumorInputError
from tests.conftest import DATA, DEVICE, load_fixture
from tests.helpers.noise_tape import replay_ddpm_noise
from tests.helpers.released_formats import (
    RELEASED_VQGAN_CFG,
    random_state_dict,
    released_key_shapes,
    write_autoencoder_checkpoint,
    write_diffusion_checkpoint,
)

KEYS_MD = DATA / "original-state-dict-keys.md"


@pytest.fixture(scope="module")
def small_released_files(tmp_path_factory, original_small):
    """The fixtures' small models written as released-format files."""
    folder = tmp_path_factory.mktemp("released")
    autoencoder = write_autoencoder_checkpoint(
        folder / "AutoencoderModel.ckpt", original_small["vq_state"], original_small["vq_config"]
    )
    online = {
        k: v + 1.0 if v.is_floating_point() and "freqs" not in k else v for k, v in original_small["unet_state"].items()
    }
    early = write_diffusion_checkpoint(
        folder / "liver_early.pt",
        original_small["unet_state"],
        original_small["vq_state"],
        4,
        online_unet_state_dict=online,
    )
    noearly = write_diffusion_checkpoint(folder / "liver_noearly.pt", original_small["unet_state"], None, 200)
    return autoencoder, early, noearly


def test_autoencoder_checkpoint_loads_with_weights_only_and_no_omegaconf_objects(small_released_files):
    autoencoder, _, _ = small_released_files
    with pytest.raises(pickle.UnpicklingError):  # a plain weights-only load rejects the OmegaConf cfg
        torch.load(autoencoder, weights_only=True)
    contents = read_autoencoder_checkpoint(autoencoder)
    assert type(contents.config) is dict and type(contents.config["model"]) is dict
    assert contents.config["model"]["downsample"] == [4, 4, 4] and contents.config["dataset"]["image_channels"] == 1


def test_released_architecture_maps_every_key(tmp_path):
    shapes = released_key_shapes(KEYS_MD)
    assert len(shapes["vqgan"]) == 154 and len(shapes["unet"]) == 300
    vq_state = random_state_dict(shapes["vqgan"], seed=0)
    vq = vqmodel_from_original(vq_state, RELEASED_VQGAN_CFG)
    assert sum(p.numel() for p in vq.encoder.parameters()) == 441_568
    assert sum(p.numel() for p in vq.decoder.parameters()) == 948_417
    assert torch.equal(vq.quantizer.embeddings, vq_state["codebook.embeddings"])
    unet_state = random_state_dict(shapes["unet"], seed=1)
    kwargs = infer_unet_kwargs(unet_state)
    assert kwargs == {
        "dim": 24,
        "dim_mults": [1, 2, 4, 8],
        "channels": 17,
        "out_dim": 8,
        "attn_heads": 8,
        "attn_dim_head": 32,
        "init_kernel_size": 7,
    }
    unet = unet_from_original(unet_state, kwargs)
    assert torch.equal(unet.conv_in.conv.weight, unet_state["init_conv.weight"][:, :, 0])
    assert torch.equal(
        unet.up_blocks[0].resnets[0].conv_shortcut.weight, unet_state["ups.0.0.res_conv.weight"][..., 0, 0, 0]
    )


def test_converter_rejects_other_architectures(original_small):
    state = dict(original_small["unet_state"])
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(DiffTumorInputError, match="1 unexpected keys"):
        unet_from_original(state, original_small["unet_kwargs"])
    state = {k: v for k, v in original_small["vq_state"].items() if not k.startswith("decoder.conv_last")}
    with pytest.raises(DiffTumorInputError, match="lacks 2 weights"):
        vqmodel_from_original(state, original_small["vq_config"])
    with pytest.raises(DiffTumorInputError, match="norm_type 'batch'"):
        vqmodel_from_original(
            original_small["vq_state"], {"model": {**original_small["vq_config"]["model"], "norm_type": "batch"}}
        )


def test_convert_command_writes_a_pipeline_that_reproduces_the_original(small_released_files, tmp_path, capsys):
    autoencoder, early, _ = small_released_files
    out = tmp_path / "liver-early"
    assert cli(["convert", "--autoencoder", str(autoencoder), "--diffusion", str(early), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == [
        ".difftumor",
        "CONVERSION.md",
        "model_index.json",
        "pipeline.py",
        "scheduler",
        "unet",
        "vqmodel",
    ]
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").exists()
    pipe = TumorInpaintPipeline.from_pretrained(out).to(DEVICE)
    assert pipe.config.organ == "liver" and pipe.config.tumor_stage == "early"
    assert pipe.scheduler.config.num_train_timesteps == 4 and pipe.config.default_num_inference_steps == 4

    recorded = load_fixture("pipeline_early_small_io.pt")
    crop = load_fixture("input_crop.pt")
    hu = (crop + 1) / 2 * 425 - 175
    with replay_ddpm_noise(recorded["noises"]):
        out_ = pipe(hu, recorded["tumor_mask"], latents=recorded["x_T"], blur_sigma=recorded["blur_sigma"])
    # The 4-step loop amplifies any float32 rounding of the UNet's ε̂ by the first step's x̂0 gain √((1−ᾱ_3)/ᾱ_3) ≈ 263
    # (the same conditioning the original has): 1e-6 of rounding, which differs between AVX2 and AVX-512 oneDNN
    # kernels, can move a latent by 2.6e-4. Budget: 1e-4 plus that gain times 1e-6 (an AVX2 machine saw 1.75e-4).
    alpha = pipe.scheduler.alphas_cumprod[3].item()
    gain = ((1 - alpha) / alpha) ** 0.5
    torch.testing.assert_close(out_.latents, recorded["latent"], atol=1e-4 + gain * 1e-6, rtol=1e-4)
    torch.testing.assert_close((out_.images + 175) / 425, recorded["final_liver_kidney"], atol=1e-5, rtol=1e-4)


def test_convert_uses_ema_by_default_and_online_weights_on_request(small_released_files, tmp_path):
    autoencoder, early, _ = small_released_files
    cli(["convert", "--autoencoder", str(autoencoder), "--diffusion", str(early), "--out", str(tmp_path / "ema")])
    cli(
        [
            "convert",
            "--autoencoder",
            str(autoencoder),
            "--diffusion",
            str(early),
            "--out",
            str(tmp_path / "online"),
            "--no-ema",
        ]
    )
    ema = TumorInpaintPipeline.from_pretrained(tmp_path / "ema").unet
    online = TumorInpaintPipeline.from_pretrained(tmp_path / "online").unet
    torch.testing.assert_close(online.conv_in.conv.bias, ema.conv_in.conv.bias + 1.0)


def test_mid_late_checkpoint_gets_the_original_ddim_sampler(small_released_files, tmp_path):
    autoencoder, _, noearly = small_released_files
    out = tmp_path / "liver-noearly"
    assert cli(["convert", "--autoencoder", str(autoencoder), "--diffusion", str(noearly), "--out", str(out)]) == 0
    pipe = TumorInpaintPipeline.from_pretrained(out)
    assert type(pipe.scheduler).__name__ == "PreciseDDIMScheduler"
    assert pipe.scheduler.config.num_train_timesteps == 200 and pipe.config.default_num_inference_steps == 50
    assert pipe.config.tumor_stage == "mid-late"
    recorded = load_fixture("ddim_T200_S50_io.pt")
    pipe.scheduler.set_timesteps(50)
    assert pipe.scheduler.timesteps.tolist() == recorded["ddim_timesteps"].flip(0).tolist()


def _run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "difftumor.cli.main", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/difftumor-pwned",))


@pytest.mark.parametrize("case", ["missing", "text", "truncated", "unrelated", "malicious", "wrong_role"])
def test_bad_files_get_one_line_errors_and_no_output(case, small_released_files, tmp_path, capsys):
    autoencoder, early, _ = small_released_files
    bad = tmp_path / "bad.pt"
    if case == "text":
        bad.write_text("this is not a checkpoint\n")
    elif case == "truncated":
        bad.write_bytes(autoencoder.read_bytes()[:5000])
    elif case == "unrelated":
        torch.save({"weights": torch.zeros(3)}, bad)
    elif case == "malicious":
        with open(bad, "wb") as handle:
            pickle.dump({"state_dict": _Exploit()}, handle)
    elif case == "wrong_role":
        bad = early  # a diffusion checkpoint passed as the autoencoder
    out = tmp_path / "out"
    code = cli(["convert", "--autoencoder", str(bad), "--diffusion", str(early), "--out", str(out)])
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())
    assert not os.path.exists("/tmp/difftumor-pwned")


def test_output_path_that_is_a_file_is_refused_by_the_installed_command(small_released_files, tmp_path):
    autoencoder, early, _ = small_released_files
    target = tmp_path / "taken"
    target.write_text("x")
    result = _run_cli("convert", "--autoencoder", str(autoencoder), "--diffusion", str(early), "--out", str(target))
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and "is a file" in result.stderr
    assert target.read_text() == "x"


def test_safe_loader_rejects_unlisted_globals(tmp_path):
    path = tmp_path / "exploit.pt"
    torch.save({"x": _Exploit()}, path)
    with pytest.raises(DiffTumorInputError, match="outside the safe allow-list"):
        load_checkpoint_safely(path)


@pytest.mark.slow
def test_released_size_files_convert_and_load_back_with_the_same_outputs(tmp_path):
    shapes = released_key_shapes(KEYS_MD)
    vq_state = random_state_dict(shapes["vqgan"], seed=2)
    unet_state = random_state_dict(shapes["unet"], seed=3)
    autoencoder = write_autoencoder_checkpoint(tmp_path / "AutoencoderModel.ckpt", vq_state, RELEASED_VQGAN_CFG)
    diffusion = write_diffusion_checkpoint(tmp_path / "pancreas_early.pt", unet_state, vq_state, 4)
    assert (
        cli(
            [
                "convert",
                "--autoencoder",
                str(autoencoder),
                "--diffusion",
                str(diffusion),
                "--out",
                str(tmp_path / "pipe"),
            ]
        )
        == 0
    )
    pipe = TumorInpaintPipeline.from_pretrained(tmp_path / "pipe")
    assert pipe.config.organ == "pancreas" and pipe.vqmodel.config.num_codes == 16384
    reference_unet = unet_from_original(unet_state, infer_unet_kwargs(unet_state))
    reference_vq = vqmodel_from_original(vq_state, RELEASED_VQGAN_CFG)
    generator = torch.Generator().manual_seed(0)
    sample, condition = (
        torch.randn(1, 8, 24, 24, 24, generator=generator),
        torch.randn(1, 9, 24, 24, 24, generator=generator),
    )
    crop = torch.rand(1, 1, 32, 32, 32, generator=generator) * 2 - 1
    with torch.no_grad():
        assert torch.equal(pipe.unet(sample, 1, condition).sample, reference_unet(sample, 1, condition).sample)
        assert torch.equal(pipe.vqmodel.encode(crop).latents, reference_vq.encode(crop).latents)
        assert torch.equal(pipe.vqmodel.decode(sample).sample, reference_vq.decode(sample).sample)
