"""Build checkpoint files in the authors' released formats (for exercising the converter without the real files).

* ``AutoencoderModel.ckpt``: a PyTorch-Lightning checkpoint whose ``hyper_parameters['cfg']`` is an OmegaConf
  ``DictConfig`` (pickled, as Lightning saves it), with the usual Lightning bookkeeping around ``state_dict``.
* ``{organ}_{early,noearly}.pt``: ``{'step', 'model', 'ema', 'scaler'}`` where ``model``/``ema`` are
  ``GaussianDiffusion.state_dict()`` = ``denoise_fn.*`` + ``vqgan.*`` + 12 schedule buffers of length T.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from difftumor.schedulers import difftumor_cosine_betas


def original_schedule_buffers(num_train_timesteps: int) -> dict[str, torch.Tensor]:
    """The 12 buffers of the original GaussianDiffusion, computed in float64 and stored as float32."""
    betas = difftumor_cosine_betas(num_train_timesteps)
    alphas = 1.0 - betas
    cumprod = np.cumprod(alphas)
    cumprod_prev = np.append(1.0, cumprod[:-1])
    posterior_variance = betas * (1.0 - cumprod_prev) / (1.0 - cumprod)
    buffers = {
        "betas": betas,
        "alphas_cumprod": cumprod,
        "alphas_cumprod_prev": cumprod_prev,
        "sqrt_alphas_cumprod": np.sqrt(cumprod),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - cumprod),
        "log_one_minus_alphas_cumprod": np.log(1.0 - cumprod),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / cumprod),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / cumprod - 1),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(cumprod_prev) / (1.0 - cumprod),
        "posterior_mean_coef2": (1.0 - cumprod_prev) * np.sqrt(alphas) / (1.0 - cumprod),
    }
    return {name: torch.tensor(values, dtype=torch.float32) for name, values in buffers.items()}


def write_autoencoder_checkpoint(path: Path, state_dict: dict[str, torch.Tensor], cfg: dict) -> Path:
    """Write a Lightning-style ``AutoencoderModel.ckpt`` with an OmegaConf ``cfg``."""
    from omegaconf import OmegaConf

    checkpoint = {
        "epoch": 3,
        "global_step": 80000,
        "pytorch-lightning_version": "1.6.4",
        "state_dict": dict(state_dict),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4, "completed": 3}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'val/recon_loss'}": {"best_model_score": None, "dirpath": "/x"}},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1.875e-05, "betas": (0.5, 0.9), "params": [0]}]}],
        "lr_schedulers": [{"milestones": {40000: 1, 50000: 1, 60000: 1}, "gamma": 0.1, "last_epoch": 80000}],
        "hparams_name": "cfg",
        "hyper_parameters": {"cfg": OmegaConf.create(cfg)},
    }
    torch.save(checkpoint, path)
    return path


def write_diffusion_checkpoint(
    path: Path,
    unet_state_dict: dict[str, torch.Tensor],
    vqgan_state_dict: dict[str, torch.Tensor] | None,
    num_train_timesteps: int,
    online_unet_state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a released-format diffusion checkpoint (``ema`` and ``model`` GaussianDiffusion state dicts)."""

    def diffusion_state(unet_state):
        state = {f"denoise_fn.{k}": v for k, v in unet_state.items()}
        if vqgan_state_dict is not None:
            state.update({f"vqgan.{k}": v for k, v in vqgan_state_dict.items()})
        state.update(original_schedule_buffers(num_train_timesteps))
        return state

    checkpoint = {
        "step": 60000,
        "model": diffusion_state(online_unet_state_dict or unet_state_dict),
        "ema": diffusion_state(unet_state_dict),
        "scaler": {},
    }
    torch.save(checkpoint, path)
    return path


def released_key_shapes(keys_markdown: Path) -> dict[str, dict[str, tuple[tuple[int, ...], str]]]:
    """Parse ``docs/original-state-dict-keys.md`` into ``{"vqgan": {key: (shape, dtype)}, "unet": {...}}``."""
    sections: dict[str, dict[str, tuple[tuple[int, ...], str]]] = {"vqgan": {}, "unet": {}}
    current = None
    for line in keys_markdown.read_text().splitlines():
        if line.startswith("## VQ-GAN"):
            current = "vqgan"
        elif line.startswith("## Unet3D"):
            current = "unet"
        match = re.match(r"^([\w.]+)\t\(([\d, ]*)\)\t(\w+)$", line)
        if current and match:
            key, shape, dtype = match.groups()
            dims = tuple(int(d) for d in shape.split(",") if d.strip())
            if current == "unet" and "." not in key:
                continue  # schedule buffers, rebuilt from T
            sections[current][key] = (dims, dtype)
    return sections


def random_state_dict(shapes: dict[str, tuple[tuple[int, ...], str]], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, (shape, dtype) in shapes.items():
        if dtype == "int64":
            state[key] = torch.zeros(shape, dtype=torch.int64)
        elif key.endswith("rotary_emb.freqs"):
            state[key] = 1.0 / (10000 ** (torch.arange(0, 32, 2).float() / 32))
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.05
    return state


RELEASED_VQGAN_CFG = {
    "model": {
        "seed": 1234,
        "embedding_dim": 8,
        "n_codes": 16384,
        "n_hiddens": 16,
        "lr": 3e-4,
        "downsample": [4, 4, 4],
        "disc_channels": 64,
        "disc_layers": 3,
        "discriminator_iter_start": 10000,
        "disc_loss_type": "hinge",
        "image_gan_weight": 1.0,
        "video_gan_weight": 1.0,
        "l1_weight": 4.0,
        "gan_feat_weight": 4.0,
        "perceptual_weight": 4.0,
        "restart_thres": 1.0,
        "no_random_restart": False,
        "norm_type": "group",
        "padding_type": "replicate",
        "num_groups": 32,
        "precision": 16,
        "gradient_clip_val": 1.0,
        "max_steps": 80000,
    },
    "dataset": {"name": "synt", "image_channels": 1, "a_min": -175, "a_max": 250, "b_min": -1.0, "b_max": 1.0},
}
