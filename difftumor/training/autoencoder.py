"""Train the VQ-GAN autoencoder (:class:`VQModel3D`) with Accelerate, with the original's objective.

Generator: ``l1_weight · L1(x̂, x)`` + commitment + (after ``discriminator_start_step``) hinge-GAN terms from a 2-D
slice discriminator and a 3-D volume discriminator (MONAI ``PatchDiscriminator``) + feature matching, + an optional
perceptual term on slices of the three planes (pluggable network, off by default). Discriminators: hinge loss.
Two Adam(β = 0.5, 0.9) optimisers, gradient clipping, mixed precision and gradient accumulation via Accelerate.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DiffTumorInputError
from .config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, load_config
from .data import CropDataset, DataConfig, preprocessing, read_cases, run_loader, seeded_crop
from .run import RunConfig, TrainingRun


@dataclass
class VQModelSection:
    in_channels: PositiveInt = 1
    hidden_channels: PositiveInt = 16
    downsample: tuple[PositiveInt, PositiveInt, PositiveInt] = (4, 4, 4)
    latent_channels: PositiveInt = 8
    num_codes: PositiveInt = 16384
    norm_num_groups: PositiveInt = 32
    restart_threshold: NonNegativeFloat = 1.0


@dataclass
class AutoencoderLoss:
    l1_weight: NonNegativeFloat = 4.0
    commitment_weight: NonNegativeFloat = 1.0
    perceptual_weight: NonNegativeFloat = 0.0
    #: ``"module:callable"`` returning a 2-D feature network (list of feature maps per input), when perceptual > 0
    perceptual_network: str | None = None
    image_gan_weight: NonNegativeFloat = 1.0
    volume_gan_weight: NonNegativeFloat = 1.0
    gan_feature_weight: NonNegativeFloat = 4.0
    discriminator_start_step: NonNegativeInt = 10000
    discriminator_channels: PositiveInt = 64
    discriminator_layers: PositiveInt = 3


@dataclass
class AutoencoderOptim:
    lr: PositiveFloat = 1.875e-5
    betas: tuple[Fraction, Fraction] = (0.5, 0.9)
    gradient_clip: NonNegativeFloat = 1.0


@dataclass
class AutoencoderConfig:
    """``difftumor train autoencoder`` configuration (examples: ``--config released|tiny_cpu``)."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: VQModelSection = field(default_factory=VQModelSection)
    loss: AutoencoderLoss = field(default_factory=AutoencoderLoss)
    optim: AutoencoderOptim = field(default_factory=AutoencoderOptim)
    #: free text for the model card: what the data is
    data_description: str = ""


def _hinge_discriminator(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def _random_slices(volume: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    """One random slice per sample along each of D, H and W: three ``(B, C, ·, ·)`` batches."""
    batch = volume.shape[0]
    planes = []
    for axis in (2, 3, 4):
        index = torch.randint(0, volume.shape[axis], (batch,), generator=generator)
        planes.append(torch.stack([volume[b].select(axis - 1, int(index[b])) for b in range(batch)]))
    return planes


class PerceptualSlices(torch.nn.Module):
    """Perceptual loss on slices of the three planes with a pluggable 2-D feature network (LPIPS-style:
    channel-normalised features, squared difference, spatial mean, summed over layers)."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network.eval().requires_grad_(False)

    def forward(self, fake_planes: list[torch.Tensor], real_planes: list[torch.Tensor]) -> torch.Tensor:
        total = fake_planes[0].new_zeros(())
        for fake, real in zip(fake_planes, real_planes):
            for fake_features, real_features in zip(self.network(fake), self.network(real)):
                fake_features = fake_features / (fake_features.norm(dim=1, keepdim=True) + 1e-10)
                real_features = real_features / (real_features.norm(dim=1, keepdim=True) + 1e-10)
                total = total + (fake_features - real_features).pow(2).sum(1).mean()
        return total


#: Entry-point group under which packages register perceptual networks (a callable returning the network).
PERCEPTUAL_NETWORKS = "difftumor.perceptual_networks"


def load_perceptual_network(reference: str, trust_config_code: bool = False) -> Any:
    """The perceptual-network factory named by ``loss.perceptual_network``.

    A name registered by an installed package under :data:`PERCEPTUAL_NETWORKS` is loaded as is. A config file
    is data, so a ``"package.module:callable"`` reference (which imports and runs that module) is only followed
    with ``trust_config_code`` (``--trust-config-code``).
    """
    from importlib.metadata import entry_points

    registered = {point.name: point for point in entry_points(group=PERCEPTUAL_NETWORKS)}
    if reference in registered:
        return registered[reference].load()
    if ":" not in reference or not trust_config_code:
        names = ", ".join(sorted(registered)) or "none installed"
        raise DiffTumorInputError(
            f"loss.perceptual_network {reference!r} is not a registered perceptual network ({names})",
            f"register it under the entry-point group {PERCEPTUAL_NETWORKS}, or pass --trust-config-code to let "
            "the config import 'package.module:callable'",
        )
    module_name, _, attribute = reference.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise DiffTumorInputError(f"cannot import {reference!r} ({error})", "use 'package.module:callable'") from None


def _crop_transform(config: AutoencoderConfig, with_label: bool):
    from monai.transforms import Compose, RandCropByPosNegLabeld, RandRotate90d, RandSpatialCropd

    if with_label:
        positive = config.data.positive_fraction
        crop = RandCropByPosNegLabeld(
            keys=["image"],
            label_key="label",
            spatial_size=config.data.crop_size,
            pos=positive,
            neg=1.0 - positive,
            num_samples=1,
            fg_indices_key="label_fg_indices",
            bg_indices_key="label_bg_indices",
        )
    else:
        crop = RandSpatialCropd(keys=["image"], roi_size=config.data.crop_size, random_size=False)
    chain = Compose([crop, RandRotate90d(keys=["image"], prob=0.1, spatial_axes=(0, 1))])

    def transform(data: dict, rng: np.random.Generator) -> dict:
        sample = seeded_crop(chain, data, rng)
        return {"image": sample["image"]}

    return transform


def _preprocess(config: AutoencoderConfig, with_label: bool):
    """Working-space volumes, with foreground/background voxel indices computed once per case (cached)."""
    from monai.transforms import Compose, FgBgToIndicesd

    base = preprocessing(config.data.window, config.data.spacing, config.data.crop_size, with_label)
    if not with_label:
        return base
    # Background crops avoid pure air (the window's bottom, -1).
    return Compose([base, FgBgToIndicesd(keys="label", image_key="image", image_threshold=-1.0)])


@dataclass
class _Networks:
    """What one autoencoder training step works on (prepared by Accelerate)."""

    model: torch.nn.Module
    image_disc: torch.nn.Module
    volume_disc: torch.nn.Module
    optimizer: torch.optim.Optimizer
    disc_optimizer: torch.optim.Optimizer
    perceptual: torch.nn.Module | None


def _build(config: AutoencoderConfig, run: TrainingRun, perceptual_factory: Any) -> _Networks:
    """The VQ model, the 2-D slice and 3-D volume discriminators and their optimisers, seeded by the run."""
    from monai.networks.nets import PatchDiscriminator

    from ..models.vq_model_3d import VQModel3D

    loss_cfg, optim = config.loss, config.optim
    model = VQModel3D(**vars(config.model))
    image_disc, volume_disc = (
        PatchDiscriminator(
            spatial_dims=dims,
            num_layers_d=loss_cfg.discriminator_layers,
            channels=loss_cfg.discriminator_channels,
            in_channels=1,
        )
        for dims in (2, 3)
    )
    perceptual = None if perceptual_factory is None else PerceptualSlices(perceptual_factory()).to(run.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=optim.lr, betas=optim.betas)
    disc_optimizer = torch.optim.Adam(
        [*image_disc.parameters(), *volume_disc.parameters()], lr=optim.lr, betas=optim.betas
    )
    prepared = run.accelerator.prepare(model, image_disc, volume_disc, optimizer, disc_optimizer)
    return _Networks(*prepared, perceptual=perceptual)


def _generator_loss(
    nets: _Networks, real: torch.Tensor, config: AutoencoderConfig, generator: torch.Generator, gan_on: bool, run
) -> tuple[torch.Tensor, torch.Tensor, tuple | None, dict[str, float]]:
    """Reconstruction + commitment (+ perceptual) (+ adversarial and feature matching once the GAN is on);
    returns the loss, the reconstruction, the slices the discriminators saw, and the logged terms."""
    loss_cfg = config.loss
    output = nets.model(real)
    fake = output.sample
    recon = loss_cfg.l1_weight * F.l1_loss(fake, real)
    loss = recon + loss_cfg.commitment_weight * output.commitment_loss
    metrics = {
        "recon": recon.item(),
        "commitment": output.commitment_loss.item(),
        "perplexity": output.perplexity.item(),
    }
    planes = None
    if nets.perceptual is not None or gan_on:
        planes = (
            _random_slices(fake, generator),
            _random_slices(real, torch.Generator().manual_seed(int(generator.initial_seed()))),
        )
    if nets.perceptual is not None:
        perceptual_loss = loss_cfg.perceptual_weight * nets.perceptual(*planes)
        loss = loss + perceptual_loss
        metrics["perceptual"] = perceptual_loss.item()
    if gan_on:
        # The generator sees the discriminators as fixed functions (no DDP hooks, no weight gradients).
        image_disc = run.accelerator.unwrap_model(nets.image_disc)
        volume_disc = run.accelerator.unwrap_model(nets.volume_disc)
        image_disc.requires_grad_(False)
        volume_disc.requires_grad_(False)
        fake_image, fake_volume = image_disc(planes[0][0]), volume_disc(fake)
        with torch.no_grad():
            real_image, real_volume = image_disc(planes[1][0]), volume_disc(real)
        adversarial = (
            -loss_cfg.image_gan_weight * fake_image[-1].mean() - loss_cfg.volume_gan_weight * fake_volume[-1].mean()
        )
        matching = sum(
            F.l1_loss(f, r)
            for fake_feats, real_feats in ((fake_image, real_image), (fake_volume, real_volume))
            for f, r in zip(fake_feats[:-1], real_feats[:-1])
        )
        loss = loss + adversarial + loss_cfg.gan_feature_weight * matching
        image_disc.requires_grad_(True)
        volume_disc.requires_grad_(True)
        metrics.update({"g_adversarial": adversarial.item(), "feature_matching": float(matching.detach())})
    return loss, fake, planes, metrics


def _step(nets: _Networks, batch: dict, step: int, config: AutoencoderConfig, run: TrainingRun) -> dict[str, float]:
    """One optimisation step of the generator, then (once the GAN is on) of the discriminators."""
    accelerator, loss_cfg, clip = run.accelerator, config.loss, config.optim.gradient_clip
    # MONAI (B, C, X, Y, Z) -> the model's (B, C, Z, X, Y), as the original.
    real = batch["image"].to(run.device).permute(0, 1, 4, 2, 3).contiguous()
    generator = torch.Generator().manual_seed(config.run.seed * 1_000_003 + step * 101 + accelerator.process_index)
    gan_on = step >= loss_cfg.discriminator_start_step
    with accelerator.accumulate(nets.model, nets.image_disc, nets.volume_disc):
        with accelerator.autocast():
            loss, fake, planes, metrics = _generator_loss(nets, real, config, generator, gan_on, run)
        accelerator.backward(loss)
        if accelerator.sync_gradients and clip:
            accelerator.clip_grad_norm_(nets.model.parameters(), clip)
        nets.optimizer.step()
        nets.optimizer.zero_grad()
        if gan_on:
            (fake_planes, real_planes) = planes
            with accelerator.autocast():
                d_loss = loss_cfg.image_gan_weight * _hinge_discriminator(
                    nets.image_disc(real_planes[0])[-1], nets.image_disc(fake_planes[0].detach())[-1]
                ) + loss_cfg.volume_gan_weight * _hinge_discriminator(
                    nets.volume_disc(real)[-1], nets.volume_disc(fake.detach())[-1]
                )
            accelerator.backward(d_loss)
            if accelerator.sync_gradients and clip:
                accelerator.clip_grad_norm_([*nets.image_disc.parameters(), *nets.volume_disc.parameters()], clip)
            nets.disc_optimizer.step()
            nets.disc_optimizer.zero_grad()
            metrics["d_loss"] = d_loss.item()
    return {"loss": loss.item(), **metrics}


def train_autoencoder(
    config: AutoencoderConfig, resume: bool = False, trust_config_code: bool = False, inputs: tuple = ()
) -> Path:
    """Run the training; returns the folder of the final :class:`VQModel3D` (``<output_dir>/vqmodel``)."""
    cases = read_cases(config.data.datalist, config.data.max_cases)
    with_label = all("label" in case for case in cases)
    perceptual_factory = None
    if config.loss.perceptual_weight > 0:  # resolved before the run folder exists: a refused hook leaves nothing
        if not config.loss.perceptual_network:
            raise DiffTumorInputError(
                "loss.perceptual_weight > 0 needs loss.perceptual_network",
                f"give a network registered under {PERCEPTUAL_NETWORKS}",
            )
        perceptual_factory = load_perceptual_network(config.loss.perceptual_network, trust_config_code)
    run = TrainingRun(config.run, config, "autoencoder", resume=resume, inputs=inputs)
    nets = _build(config, run, perceptual_factory)
    start = run.restore()
    dataset = CropDataset(cases, _preprocess(config, with_label), _crop_transform(config, with_label), config.run.seed)
    loader = run_loader(
        dataset, config.data.batch_size, config.data.num_workers, start, config.run.max_steps, run.accelerator
    )
    run.start_progress(config.run.max_steps)
    step = start
    for batch in loader:
        metrics = _step(nets, batch, step, config, run)
        step = run.advance()
        run.end_step(metrics)
    return run.conclude(
        nets.model,
        "vqmodel",
        run.accelerator.unwrap_model(nets.model).save_pretrained,
        data_description=config.data_description,
    )


def load_autoencoder_config(path, overrides) -> AutoencoderConfig:
    return load_config(AutoencoderConfig, path, overrides, trainer="autoencoder")
