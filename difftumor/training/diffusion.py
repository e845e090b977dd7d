"""Train the latent diffusion model (:class:`UNet3DInpaintModel`) on real tumours, with a frozen VQ model.

Each crop (centred on a tumour voxel with probability ``tumor_crop_ratio``, else on the organ) is encoded twice by
the frozen autoencoder — as it is, and with the tumour blanked — into normalised latents; the UNet learns to
predict the noise (or x0, or v) of the tumour latent given the masked latent and the mask, at a uniformly drawn
step of DiffTumor's cosine schedule with any ``T``. The output is a complete :class:`TumorInpaintPipeline` folder
with the EMA weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DiffTumorInputError
from ..windowing import scale_window, unscale_window
from .config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, load_config
from .data import CropDataset, DataConfig, preprocessing, read_cases, run_loader, seeded_crop
from .run import RunConfig, TrainingRun

STAGE_LABELS = {"early": (2,), "midlate": (3,), "all": (2, 3)}


@dataclass
class UNetSection:
    base_channels: PositiveInt = 24
    channel_multipliers: tuple[PositiveInt, ...] = (1, 2, 4, 8)
    attention_heads: PositiveInt = 8
    attention_head_dim: PositiveInt = 32
    norm_num_groups: PositiveInt = 8


@dataclass
class DiffusionSection:
    num_train_timesteps: PositiveInt = 4
    prediction_type: str = "epsilon"
    loss: str = "l1"
    mask_downsampling: str = "nearest"
    #: extra weight of the loss on the latent cells a tumour touches and their neighbours (the loss is then a
    #: weighted mean). 0 is the original's plain mean, in which an early tumour's few cells of a crop's thousands
    #: teach the model little beyond copying its condition (bench/bench_tumor_contrast.py measures the effect).
    tumor_loss_weight: NonNegativeFloat = 0.0
    #: probability that a crop's blanked tumour is filled with a value drawn uniformly from the window instead of
    #: the middle grey that sampling uses. With the grey alone the blank's value predicts the lesion's: a model then
    #: paints its lesions part way towards 37.5 HU whatever the organ (bench/bench_tumor_contrast.py). With random
    #: fills the blank says only where the tumour is, and the lesion must come from the organ around it.
    random_mask_fill: Fraction = 0.0
    #: sampler stored with the pipeline (default: ddpm for T <= 10, ddim otherwise)
    sampler: str | None = None
    num_inference_steps: PositiveInt | None = None


@dataclass
class DiffusionOptim:
    lr: PositiveFloat = 1e-4
    betas: tuple[Fraction, Fraction] = (0.9, 0.999)
    gradient_clip: NonNegativeFloat = 0.0


@dataclass
class EMASection:
    decay: Fraction = 0.995
    update_every: PositiveInt = 10
    #: the EMA copy follows the online weights exactly until this step (the original's step_start_ema)
    start_step: NonNegativeInt = 2000


@dataclass
class IntensityAugmentation:
    """Organ-relative intensity augmentation per training crop, before the window is applied: the organ's mean HU
    in the crop is moved to a value drawn from ``organ_hu`` and the HU around it scaled by a factor drawn from
    ``scale`` (tumour contrast and parenchymal noise scale together). A model trained on one contrast phase then
    paints tumours relative to the organ it sees instead of at the training scan's absolute HU.
    ``prob: 0`` is the original's recipe."""

    prob: Fraction = 0.8
    organ_hu: tuple[float, float] = (40.0, 160.0)
    scale: tuple[PositiveFloat, PositiveFloat] = (0.7, 1.3)


@dataclass
class DiffusionConfig:
    """``difftumor train diffusion`` configuration (examples: ``--config released|tiny_cpu``)."""

    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    vqmodel: str = ""
    organ: str = "liver"
    tumor_stage: str = "early"
    tumor_crop_ratio: Fraction = 0.5
    model: UNetSection = field(default_factory=UNetSection)
    diffusion: DiffusionSection = field(default_factory=DiffusionSection)
    optim: DiffusionOptim = field(default_factory=DiffusionOptim)
    ema: EMASection = field(default_factory=EMASection)
    intensity_augmentation: IntensityAugmentation = field(default_factory=IntensityAugmentation)
    license: str = "apache-2.0"
    data_description: str = ""
    #: Hub dataset ids of the training data, for the model card (e.g. ["my-lab/lits-early"])
    datasets: list[str] = field(default_factory=list)
    quality: str = ""

    def validate(self) -> None:
        if not self.vqmodel:
            raise DiffTumorInputError(
                "config key vqmodel is empty", "point it to a trained VQModel3D or pipeline folder"
            )
        if self.tumor_stage not in STAGE_LABELS:
            raise DiffTumorInputError(f"tumor_stage {self.tumor_stage!r}", "use early, midlate or all")
        if self.diffusion.prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise DiffTumorInputError(
                f"diffusion.prediction_type {self.diffusion.prediction_type!r}", "use epsilon, sample or v_prediction"
            )
        if self.diffusion.loss not in ("l1", "l2"):
            raise DiffTumorInputError(f"diffusion.loss {self.diffusion.loss!r}", "use l1 or l2")
        if self.diffusion.mask_downsampling not in ("nearest", "max"):
            raise DiffTumorInputError("diffusion.mask_downsampling must be nearest or max")
        if self.diffusion.num_train_timesteps < 1:
            raise DiffTumorInputError("diffusion.num_train_timesteps must be >= 1")


def load_vqmodel(path: str):
    """A frozen :class:`VQModel3D` from its own folder or from a pipeline folder's ``vqmodel/``."""
    from ..models.vq_model_3d import VQModel3D

    folder = Path(path)
    if (folder / "model_index.json").exists():
        folder = folder / "vqmodel"
    if not (folder / "config.json").exists():
        raise DiffTumorInputError(
            f"vqmodel {path} is not a VQModel3D or pipeline folder",
            "train one with `difftumor train autoencoder` or pass a converted pipeline",
        )
    return VQModel3D.from_pretrained(folder).eval().requires_grad_(False)


def _crop_transform(config: DiffusionConfig):
    from monai.transforms import Compose, RandCropByLabelClassesd, RandRotate90d

    ratio = config.tumor_crop_ratio
    crop = RandCropByLabelClassesd(
        keys=["image", "label"],
        label_key="label",
        spatial_size=config.data.crop_size,
        ratios=[0.0, 1.0 - ratio, ratio],
        num_classes=3,
        num_samples=1,
        indices_key="label_cls_indices",
        warn=False,
    )
    chain = Compose([crop, RandRotate90d(keys=["image", "label"], prob=0.1, spatial_axes=(0, 1))])
    augmentation, window = config.intensity_augmentation, config.data.window

    def transform(data: dict, rng: np.random.Generator) -> dict:
        sample = seeded_crop(chain, data, rng)
        image = augment_intensity(sample["image"], sample["label"] == 1, window, augmentation, rng)
        return {"image": image, "mask": (sample["label"] == 2).float()}

    return transform


def augment_intensity(
    image: torch.Tensor, organ: torch.Tensor, window: tuple[float, float], config: IntensityAugmentation, rng
) -> torch.Tensor:
    """:class:`IntensityAugmentation` on a window-scaled crop ([-1, 1]); the draws always happen, so the crops that
    follow do not depend on whether this one was augmented."""
    apply, target, scale = rng.random() < config.prob, rng.uniform(*config.organ_hu), rng.uniform(*config.scale)
    if not apply or int(organ.sum()) < 100:
        return image
    hu = unscale_window(image, window)
    mean = float(hu[organ].mean())
    return scale_window(target + scale * (hu - mean), window)


def organ_reference_hu(dataset: CropDataset, window: tuple[float, float]) -> list[float]:
    """Mean and standard deviation (HU) of the organ cores of the training cases, unaugmented, on the working grid
    (:func:`difftumor.spatial.organ_core`): the intensity the model's tumours are relative to, stored with the
    pipeline for the diffusion synthesizer's organ-relative mode."""
    from ..spatial import organ_core

    values = []
    for index in range(len(dataset.cases)):
        case = dataset.case(index)
        image, label = np.asarray(case["image"])[0], np.asarray(case["label"])[0]
        values.append(unscale_window(image[organ_core(label == 1, label >= 2)], window))
    joined = np.concatenate(values) if values else np.zeros(1)
    return [round(float(joined.mean()), 2), round(float(joined.std()), 2)]


def _relabel(stage: str):
    """Internal labels -> 0 background, 1 organ, 2 the tumours this model learns (other tumours count as organ)."""
    from monai.transforms import Lambdad

    selected = STAGE_LABELS[stage]

    def relabel(label):
        out = (label > 0).float()
        for value in selected:
            out[label == value] = 2.0
        return out

    return Lambdad(keys="label", func=relabel)


def _step(
    unet: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    pipeline: Any,
    noise_scheduler: Any,
    batch: dict,
    step: int,
    config: DiffusionConfig,
    run: TrainingRun,
) -> tuple[float, float]:
    """One optimisation step: encode the crop and its masked condition, noise the latent at a random t, regress the
    prediction target (ε, x0 or v). Returns the loss and the batch's tumour fraction."""
    accelerator, vqmodel = run.accelerator, pipeline.vqmodel
    image = batch["image"].to(run.device).permute(0, 1, 4, 2, 3).contiguous()
    mask = batch["mask"].to(run.device).permute(0, 1, 4, 2, 3).contiguous()
    generator = torch.Generator().manual_seed(config.run.seed * 1_000_003 + step * 101 + accelerator.process_index)
    with torch.no_grad():
        target_latent = vqmodel.normalize_latents(vqmodel.encode(image).latents)
    noise = torch.randn(target_latent.shape, generator=generator).to(run.device)
    steps_t = config.diffusion.num_train_timesteps
    timesteps = torch.randint(0, steps_t, (image.shape[0],), generator=generator).to(run.device)
    fill: torch.Tensor | float = 0.0
    if config.diffusion.random_mask_fill > 0:  # drawn after the noise: runs without it keep their noise stream
        values = torch.rand((image.shape[0], 1, 1, 1, 1), generator=generator) * 2 - 1
        drawn = torch.rand((image.shape[0], 1, 1, 1, 1), generator=generator) < config.diffusion.random_mask_fill
        fill = torch.where(drawn, values, 0.0).to(run.device)
    with torch.no_grad():
        condition = pipeline.encode_condition(image, mask, fill)
    noisy = noise_scheduler.add_noise(target_latent, noise, timesteps)
    if config.diffusion.prediction_type == "epsilon":
        target = noise
    elif config.diffusion.prediction_type == "sample":
        target = target_latent
    else:
        target = noise_scheduler.get_velocity(target_latent, noise, timesteps)
    loss_function = F.l1_loss if config.diffusion.loss == "l1" else F.mse_loss
    weights = tumor_loss_weights(mask, target_latent.shape[2:], config.diffusion.tumor_loss_weight)
    with accelerator.accumulate(unet):
        with accelerator.autocast():
            prediction = unet(noisy, timesteps, condition).sample
            errors = loss_function(prediction.float(), target, reduction="none")
            loss = (errors * weights).sum() / (weights.sum() * errors.shape[1])
        accelerator.backward(loss)
        if accelerator.sync_gradients and config.optim.gradient_clip:
            accelerator.clip_grad_norm_(unet.parameters(), config.optim.gradient_clip)
        optimizer.step()
        optimizer.zero_grad()
    return loss.item(), float(mask.mean())


def tumor_loss_weights(mask: torch.Tensor, latent_shape: Sequence[int], weight: float) -> torch.Tensor:
    """Per latent cell ``(B, 1, d, h, w)``: ``1 + weight`` where any voxel of the cell or of its 26 neighbours is
    tumour (``mask`` ``(B, 1, D, H, W)`` in model axes), 1 elsewhere."""
    if weight == 0:
        return torch.ones((mask.shape[0], 1, *latent_shape), device=mask.device)
    touched = F.max_pool3d(F.adaptive_max_pool3d(mask.float(), tuple(latent_shape)), 3, stride=1, padding=1)
    return 1.0 + weight * touched


def _cases_with_tumours(config: DiffusionConfig) -> list[dict]:
    """The datalist's cases that hold tumours of the configured stage (early, mid/late, or any)."""
    cases = read_cases(config.data.datalist, config.data.max_cases, require_label=True)
    key = {"early": "early_tumors", "midlate": "midlate_tumors"}.get(config.tumor_stage)
    with_tumors = [c for c in cases if (c.get(key) if key and c.get(key) is not None else c.get("has_tumor", True))]
    if not with_tumors:
        raise DiffTumorInputError(
            f"no case of {config.data.datalist} has {config.tumor_stage} tumours",
            "prepare it with --early-max-diameter-mm, or choose tumor_stage all",
        )
    return with_tumors


def _check_crop_size(config: DiffusionConfig, vqmodel: Any) -> None:
    factor = max(int(f) for f in vqmodel.config.downsample)
    multiple = factor * 2 ** (len(config.model.channel_multipliers) - 1)
    if any(size % multiple for size in config.data.crop_size):
        raise DiffTumorInputError(
            f"data.crop_size {config.data.crop_size} must be multiples of {multiple}",
            "the autoencoder and the UNet's levels divide it",
        )


def _build_pipeline(config: DiffusionConfig, vqmodel: Any) -> tuple[Any, Any, Any]:
    """The UNet (seeded by the caller), the DDPM noise scheduler of training, and the pipeline it will be saved
    in, with the sampler and step count it is stored with (:func:`difftumor.schedulers.default_sampling`)."""
    from ..models.unet_3d_inpaint import UNet3DInpaintModel
    from ..pipelines import TumorInpaintPipeline
    from ..schedulers import default_sampling, make_scheduler

    latent = vqmodel.config.latent_channels
    unet = UNet3DInpaintModel(
        sample_channels=latent, condition_channels=latent + 1, out_channels=latent, **vars(config.model)
    )
    steps_t = config.diffusion.num_train_timesteps
    noise_scheduler = make_scheduler(
        "ddpm", {"num_train_timesteps": steps_t, "prediction_type": config.diffusion.prediction_type}
    )
    default_name, default_steps = default_sampling(steps_t)
    pipeline = TumorInpaintPipeline(
        vqmodel=vqmodel,
        unet=unet,
        scheduler=make_scheduler(config.diffusion.sampler or default_name, noise_scheduler.config),
        mask_downsampling=config.diffusion.mask_downsampling,
        default_num_inference_steps=config.diffusion.num_inference_steps or default_steps,
        organ=config.organ,
        tumor_stage="early" if config.tumor_stage == "early" else "mid-late",
    )
    return unet, noise_scheduler, pipeline


def _preprocess(config: DiffusionConfig) -> Any:
    from monai.transforms import ClassesToIndicesd, Compose

    # Voxel indices of every class are computed once per case (cached), not at every crop.
    return Compose(
        [
            preprocessing(config.data.window, config.data.spacing, config.data.crop_size, True),
            _relabel(config.tumor_stage),
            ClassesToIndicesd(keys="label", num_classes=3),
        ]
    )


def train_diffusion(config: DiffusionConfig, resume: bool = False, inputs: tuple = ()) -> Path:
    """Run the training; returns the pipeline folder (``<output_dir>/pipeline``)."""
    from diffusers.training_utils import EMAModel

    from ..models.unet_3d_inpaint import UNet3DInpaintModel

    with_tumors = _cases_with_tumours(config)
    vqmodel = load_vqmodel(config.vqmodel)
    _check_crop_size(config, vqmodel)
    run = TrainingRun(config.run, config, "diffusion", resume=resume, inputs=inputs)
    accelerator = run.accelerator
    unet, noise_scheduler, pipeline = _build_pipeline(config, vqmodel)
    steps_t = config.diffusion.num_train_timesteps
    ema = EMAModel(
        unet.parameters(),
        decay=config.ema.decay,
        update_after_step=config.ema.start_step,
        model_cls=UNet3DInpaintModel,
        model_config=unet.config,
    )
    optimizer = torch.optim.Adam(unet.parameters(), lr=config.optim.lr, betas=config.optim.betas)
    unet, optimizer = accelerator.prepare(unet, optimizer)
    vqmodel.to(run.device)
    run.register_state("ema", ema)
    start = run.restore()
    ema.to(run.device)
    dataset = CropDataset(with_tumors, _preprocess(config), _crop_transform(config), config.run.seed)
    pipeline.register_to_config(
        organ_intensity_hu=organ_reference_hu(dataset, config.data.window),
        training_crop_size=[int(v) for v in config.data.crop_size],
    )
    loader = run_loader(
        dataset, config.data.batch_size, config.data.num_workers, start, config.run.max_steps, accelerator
    )
    run.start_progress(config.run.max_steps)
    step = start
    for batch in loader:
        loss, mask = _step(unet, optimizer, pipeline, noise_scheduler, batch, step, config, run)
        step = run.advance()
        if run.accelerator.sync_gradients and (step % config.ema.update_every == 0 or step <= config.ema.start_step):
            ema.step(unet.parameters())
        run.end_step({"loss": loss, "tumour_fraction": mask})

    def write(folder: Path) -> None:
        final_unet = UNet3DInpaintModel.from_config(accelerator.unwrap_model(unet).config)
        ema.copy_to(final_unet.parameters())
        pipeline.register_modules(unet=final_unet.eval().cpu())
        pipeline.vqmodel.cpu()
        pipeline.save_pretrained(folder)

    return run.conclude(
        unet,
        "pipeline",
        write,
        organ=config.organ,
        tumor_stage=config.tumor_stage,
        num_train_timesteps=steps_t,
        prediction_type=config.diffusion.prediction_type,
        loss=config.diffusion.loss,
        license=config.license,
        data_description=config.data_description,
        quality=config.quality,
        datasets=config.datasets,
    )


def load_diffusion_config(path, overrides) -> DiffusionConfig:
    return load_config(DiffusionConfig, path, overrides, trainer="diffusion")
