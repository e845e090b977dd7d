"""Tiny pipelines with random weights, for exercising the synthesis plumbing quickly."""

from __future__ import annotations

from pathlib import Path

import torch

from difftumor import TumorInpaintPipeline, UNet3DInpaintModel, VQModel3D
from difftumor.schedulers import make_scheduler


def tiny_pipeline(seed: int = 0, organ: str = "liver", train_steps: int = 4) -> TumorInpaintPipeline:
    torch.manual_seed(seed)
    vqmodel = VQModel3D(hidden_channels=4, latent_channels=4, num_codes=32, norm_num_groups=2).eval()
    unet = UNet3DInpaintModel(
        sample_channels=4, condition_channels=5, out_channels=4, base_channels=8, channel_multipliers=(1, 2)
    ).eval()
    return TumorInpaintPipeline(
        vqmodel,
        unet,
        make_scheduler("ddpm", train_steps),
        default_num_inference_steps=train_steps,
        organ=organ,
        tumor_stage="early",
    )


def save_tiny_pipeline(folder: Path, seed: int = 0) -> Path:
    tiny_pipeline(seed).save_pretrained(folder)
    return folder
