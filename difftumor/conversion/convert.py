"""Turn the authors' released checkpoints into a :class:`TumorInpaintPipeline` folder (safetensors)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..atomic import atomic_folder, check_output
from ..errors import DiffTumorInputError
from ..schedulers import default_sampling, difftumor_cosine_betas, make_scheduler
from .checkpoints import read_autoencoder_checkpoint, read_diffusion_checkpoint
from .state_dicts import infer_unet_kwargs, unet_from_original, vqmodel_from_original

logger = logging.getLogger(__name__)


def _check_schedule(schedule: dict[str, torch.Tensor], num_train_timesteps: int, path: str | os.PathLike) -> None:
    expected = torch.tensor(difftumor_cosine_betas(num_train_timesteps), dtype=torch.float32)
    if not torch.allclose(schedule["betas"].float(), expected, atol=1e-6, rtol=1e-5):
        raise DiffTumorInputError(
            f"{path} uses a noise schedule other than DiffTumor's cosine schedule",
            "only the released cosine-schedule models convert",
        )


def _same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    keys = [k for k in first if k.startswith(("encoder.", "decoder.", "pre_vq", "post_vq", "codebook.embeddings"))]
    return all(k in second and torch.equal(first[k], second[k]) for k in keys)


# The conversion's checks (schedule, channels, organ, stage) each raise a one-line error naming the mismatch; they
# read best in sequence.
def convert_original_checkpoints(
    autoencoder: str | os.PathLike,
    diffusion: str | os.PathLike,
    out: str | os.PathLike,
    use_ema: bool = True,
    scheduler: str | None = None,
    num_inference_steps: int | None = None,
    organ: str | None = None,
    overwrite: bool = False,
):
    """Convert ``AutoencoderModel.ckpt`` + ``{organ}_{early,noearly}.pt`` into a pipeline folder at ``out``.

    The VQ model is the autoencoder's architecture (its ``cfg``) with the weights stored inside the diffusion
    checkpoint (``vqgan.*``) — the autoencoder the diffusion model was trained and samples with; the standalone
    weights are used when the diffusion file has none, and a warning names any difference between the two.
    The UNet takes the EMA weights unless ``use_ema=False``. The sampler defaults to the original's: DDPM with
    4 steps for ``T = 4``, DDIM with 50 steps for ``T = 200``.

    Returns:
        The converted :class:`TumorInpaintPipeline` (also written to ``out``; nothing is written on failure).
    """
    from ..pipelines import TumorInpaintPipeline

    check_output(out, "folder", (autoencoder, diffusion), overwrite, kind="pipeline")
    autoencoder_ckpt = read_autoencoder_checkpoint(autoencoder)
    diffusion_ckpt = read_diffusion_checkpoint(diffusion, use_ema=use_ema)
    train_steps = diffusion_ckpt.num_train_timesteps
    _check_schedule(diffusion_ckpt.schedule, train_steps, diffusion)

    vq_weights = autoencoder_ckpt.state_dict
    if diffusion_ckpt.vqgan_state_dict is not None:
        if not _same_weights(diffusion_ckpt.vqgan_state_dict, autoencoder_ckpt.state_dict):
            logger.warning(
                "the VQ-GAN inside %s differs from %s; using the one inside the diffusion checkpoint",
                diffusion,
                autoencoder,
            )
        vq_weights = diffusion_ckpt.vqgan_state_dict
    vqmodel = vqmodel_from_original(vq_weights, autoencoder_ckpt.config)
    unet = unet_from_original(diffusion_ckpt.unet_state_dict, infer_unet_kwargs(diffusion_ckpt.unet_state_dict))
    if unet.config.sample_channels != vqmodel.config.latent_channels:
        raise DiffTumorInputError(
            f"the diffusion model works on {unet.config.sample_channels}-channel latents but the autoencoder makes "
            f"{vqmodel.config.latent_channels}",
            "pass the autoencoder this diffusion model was trained with",
        )

    default_name, default_steps = default_sampling(train_steps)
    sampler = make_scheduler(scheduler or default_name, train_steps)
    stem = Path(diffusion).stem.lower()
    stage = "early" if train_steps <= 4 or stem.endswith("_early") else "mid-late"
    if organ is None:
        organ = next((name for name in ("liver", "pancreas", "kidney") if stem.startswith(name)), None)
    pipeline = TumorInpaintPipeline(
        vqmodel=vqmodel,
        unet=unet,
        scheduler=sampler,
        default_num_inference_steps=num_inference_steps or default_steps,
        organ=organ,
        tumor_stage=stage,
    )
    with atomic_folder(out, overwrite=overwrite, inputs=(autoencoder, diffusion), kind="pipeline") as folder:
        pipeline.save_pretrained(folder)
        (folder / "CONVERSION.md").write_text(
            "# Converted DiffTumor checkpoint\n\n"
            f"- autoencoder: `{Path(autoencoder).name}` (architecture and config)\n"
            f"- diffusion: `{Path(diffusion).name}` ({'EMA' if use_ema else 'online'} weights, T = {train_steps}, "
            f"saved at step {diffusion_ckpt.step})\n"
            f"- VQ weights taken from: "
            f"`{Path(diffusion).name if diffusion_ckpt.vqgan_state_dict is not None else Path(autoencoder).name}`\n"
            f"- sampler: {type(sampler).__name__}, {pipeline.config.default_num_inference_steps} steps\n"
            f"- organ: {organ}, stage: {stage}\n\n"
            "Original weights: MrGiovanni/DiffTumor. The authors' terms for those weights apply to this conversion\n"
            "(their code is licensed CC BY-NC-ND 4.0).\n"
        )
    return pipeline
