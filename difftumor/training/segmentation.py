"""Train a tumour segmentation model with tumours synthesised on the fly into healthy CTs (DiffTumor's stage 3).

Real-tumour and healthy datalists are mixed; 96³ crops (half centred on organ/tumour voxels) get the original's
augmentations (flips, 90° rotations, intensity scale/shift); then, on the collated batch, healthy crops receive a
synthetic tumour with probability 0.5 from any registered synthesizer (created once per process). DiceCE loss,
AdamW with linear warm-up and cosine decay, sliding-window validation with best-checkpoint selection on tumour Dice.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch

from ..errors import DiffTumorInputError
from .config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Range, load_config
from .data import CropDataset, DataConfig, preprocessing, read_cases, run_loader, seeded_crop
from .run import RunConfig, TrainingRun


@dataclass
class SegmentationData(DataConfig):
    #: healthy cases (labels: organ only) that receive synthetic tumours; optional
    healthy_datalist: str = ""
    #: cases for sliding-window validation; optional
    validation_datalist: str = ""
    #: probability of drawing a healthy case (when both kinds are given)
    healthy_fraction: Fraction = 0.5
    #: probability that a crop is centred on an organ or tumour voxel (else anywhere)
    positive_fraction: Fraction = 0.5
    #: of those crops, in a case with tumour voxels, the fraction centred on a tumour voxel (the rest on the organ);
    #: a case without tumours centres them all on the organ, where ``synthesis.prob`` paints that same fraction —
    #: set the two equal to give real and synthetic tumours the same exposure
    tumor_crop_fraction: Fraction = 0.0
    #: probability of a random rotation (±15° per axis) and scaling (±15 %) of a crop, on top of the original's
    #: flips, 90° rotations and intensity scale/shift (0: the original's augmentations only)
    affine_prob: Fraction = 0.0
    #: probability of shifting a crop's intensities by up to ±``phase_shift_hu`` (uniform): one CT's organ enhancement
    #: then covers other contrast phases (liver: about 50 HU unenhanced, 100-130 HU portal venous) — 0: off
    phase_shift_prob: Fraction = 0.0
    phase_shift_hu: Annotated[float, Range(0, 500)] = 80.0

    def validate(self) -> None:
        if not self.datalist and not self.healthy_datalist:
            raise DiffTumorInputError(
                "no training data: data.datalist and data.healthy_datalist are both empty",
                "give real-tumour cases, healthy cases, or both",
            )
        self.validate_crops()


@dataclass
class BackboneSection:
    backbone: str = "unet"
    backbone_kwargs: dict = field(default_factory=dict)


@dataclass
class SynthesisSection:
    #: a registered synthesizer (handcrafted, diffusion, a plugin) or "none"
    synthesizer: str = "handcrafted"
    #: diffusion: pipeline folder or repo id (default: the bundled demo pipeline)
    pipeline: str | None = None
    #: probability that a candidate crop (healthy, with organ) receives tumours (the original: 0.5)
    prob: Fraction = 0.5
    size_mix: dict = field(default_factory=lambda: {"early": 0.8, "medium": 0.1, "large": 0.1})
    #: tumours per selected crop, inclusive (the original: 1-3)
    tumors_per_crop: tuple[PositiveInt, PositiveInt] = (1, 3)
    #: "hu2023": Hu et al.'s training recipe for the handcrafted arm — absolute drop, their type mix and counts,
    #: their window -21..189 (it replaces data.window, size_mix and tumors_per_crop)
    recipe: str | None = None
    #: more settings for the synthesizer's constructor, passed as they are (e.g. {intensity: native})
    options: dict = field(default_factory=dict)
    #: painted crops kept for reuse (0: paint every crop given tumours); see difftumor.synthesis.bank
    bank_size: NonNegativeInt = 0
    #: expected uses of each painted crop when bank_size > 0 (each use under a fresh flip and rotation)
    bank_reuse: Annotated[float, Range(1, 1000)] = 8.0

    def check_pipeline(self) -> None:
        """Checked when training starts, not minutes later when the first healthy crop needs a tumour (and not at
        config load: the packaged example configs name a placeholder folder)."""
        from ..hub import is_repo_id

        if self.pipeline and not Path(self.pipeline).is_dir() and not is_repo_id(self.pipeline):
            raise DiffTumorInputError(
                f"synthesis.pipeline folder {self.pipeline} does not exist (and it is not a Hub repo id owner/name)",
                "check the path, or pass a repo id such as 'owner/difftumor-liver-early'",
            )


@dataclass
class SegmentationOptim:
    lr: PositiveFloat = 4e-4
    weight_decay: NonNegativeFloat = 1e-5
    warmup_steps: NonNegativeInt = 100


@dataclass
class ValidationSection:
    every: NonNegativeInt = 0
    overlap: Annotated[float, Range(0, 0.99)] = 0.5


@dataclass
class SegmentationConfig:
    """``difftumor train segmentation`` configuration (examples: ``--config released|tiny_cpu``)."""

    run: RunConfig = field(default_factory=RunConfig)
    data: SegmentationData = field(default_factory=SegmentationData)
    model: BackboneSection = field(default_factory=BackboneSection)
    synthesis: SynthesisSection = field(default_factory=SynthesisSection)
    optim: SegmentationOptim = field(default_factory=SegmentationOptim)
    validation: ValidationSection = field(default_factory=ValidationSection)
    organ: str = "liver"
    #: Hub dataset ids of the training data, for the model card
    datasets: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if self.synthesis.synthesizer != "none" and abs(self.data.spacing - 1.0) > 1e-6:
            # Synthesizers draw tumour radii in voxels of a 1 mm grid (and the diffusion models were trained there):
            # on a 1.5 mm grid an "early" tumour of 20 mm would be painted 30 mm across.
            raise DiffTumorInputError(
                f"data.spacing is {self.data.spacing:g} mm but synthesis.synthesizer {self.synthesis.synthesizer} "
                "paints tumours sized on a 1 mm grid",
                "set data.spacing 1.0 (or synthesis.synthesizer none to train on real tumours only)",
            )
        recipe = self.synthesis.recipe
        if recipe not in (None, "hu2023"):
            raise DiffTumorInputError(f"synthesis.recipe {recipe!r} is unknown", "leave it empty, or use hu2023")
        if recipe == "hu2023":
            from ..synthesis.synthesizers import HU2023_RECIPE

            if self.synthesis.synthesizer != "handcrafted":
                raise DiffTumorInputError(
                    "synthesis.recipe hu2023 is the handcrafted synthesizer's", "set synthesis.synthesizer handcrafted"
                )
            self.data.window = HU2023_RECIPE["window"]


def _augment(config: SegmentationConfig):
    from monai.transforms import (
        Compose,
        RandAffined,
        RandCropByLabelClassesd,
        RandFlipd,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    keys = ["image", "label"]
    positive, tumor = config.data.positive_fraction, config.data.tumor_crop_fraction
    extra: list = []
    if config.data.affine_prob:
        extra.append(
            RandAffined(
                keys=keys,
                prob=config.data.affine_prob,
                rotate_range=(math.pi / 12,) * 3,
                scale_range=(0.15,) * 3,
                mode=("bilinear", "nearest"),
                padding_mode="border",
            )
        )
    if config.data.phase_shift_prob:
        low, high = config.data.window
        offset = config.data.phase_shift_hu / (high - low)  # the crops are window-scaled to [0, 1]
        extra.append(RandShiftIntensityd(keys="image", offsets=offset, prob=config.data.phase_shift_prob))
    augment = [
        *extra,
        RandFlipd(keys=keys, prob=0.2, spatial_axis=0),
        RandFlipd(keys=keys, prob=0.2, spatial_axis=1),
        RandFlipd(keys=keys, prob=0.2, spatial_axis=2),
        RandRotate90d(keys=keys, prob=0.2, max_k=3),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.15),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.15),
    ]

    def chain(ratios: list[float]) -> Compose:
        crop = RandCropByLabelClassesd(
            keys=keys,
            label_key="label",
            spatial_size=config.data.crop_size,
            ratios=ratios,
            num_classes=3,
            num_samples=1,
            indices_key="label_cls_indices",
            warn=False,
        )
        return Compose([crop, *augment])

    # Background, organ, tumour centres; a case without tumour voxels draws from the chain without the tumour class
    # so that its organ share stays ``positive`` (MONAI would otherwise renormalise the ratios).
    with_tumors = chain([1.0 - positive, positive * (1.0 - tumor), positive * tumor])
    without_tumors = chain([1.0 - positive, positive, 0.0])

    def transform(data: dict, rng: np.random.Generator) -> dict:
        has_tumor = len(data["label_cls_indices"][2]) > 0
        sample = seeded_crop(with_tumors if has_tumor else without_tumors, data, rng)
        return {
            "image": sample["image"],
            "label": sample["label"],
            "healthy": data["healthy"],
            "seed": int(rng.integers(2**31 - 1)),
        }

    return transform


def _preprocess(config: SegmentationConfig):
    from monai.transforms import ClassesToIndicesd, Compose, Lambdad

    return Compose(
        [
            preprocessing(config.data.window, config.data.spacing, config.data.crop_size, True, (0.0, 1.0)),
            # Internal labels: early (2) and mid/late (3) tumours are both "tumour" for segmentation.
            Lambdad(keys="label", func=lambda label: torch.clamp(label, max=2)),
            ClassesToIndicesd(keys="label", num_classes=3, image_key="image", image_threshold=0.0),
        ]
    )


class _MixedDataset(CropDataset):
    """CropDataset whose cases carry a ``healthy`` flag passed through to the batch."""

    def case(self, index: int) -> dict:
        data = super().case(index)
        data["healthy"] = bool(self.cases[index].get("_healthy", False))
        return data


def _cases(config: SegmentationConfig) -> tuple[list[dict], list[float]]:
    real = read_cases(config.data.datalist, config.data.max_cases, require_label=True) if config.data.datalist else []
    healthy = (
        read_cases(config.data.healthy_datalist, config.data.max_cases, require_label=True)
        if config.data.healthy_datalist
        else []
    )
    for case in healthy:
        case["_healthy"] = True
    cases = real + healthy
    if real and healthy:
        fraction = config.data.healthy_fraction
        weights = [(1 - fraction) / len(real)] * len(real) + [fraction / len(healthy)] * len(healthy)
    else:
        weights = [1.0] * len(cases)
    return cases, weights


def _validation_dice(model, cases, config: SegmentationConfig, device) -> float:
    """Mean tumour Dice over validation cases (sliding window in the working space)."""
    from monai.inferers import sliding_window_inference

    from ..evaluation.metrics import dice

    preprocess = preprocessing(config.data.window, config.data.spacing, config.data.crop_size, True, (0.0, 1.0))
    scores = []
    model.eval()
    with torch.no_grad():
        for case in cases:
            if "_working" not in case:  # preprocessed once, on the first validation
                case["_working"] = preprocess({"image": case["image"], "label": case["label"]})
            data = case["_working"]
            logits = sliding_window_inference(
                data["image"][None].to(device),
                tuple(config.data.crop_size),
                1,
                model,
                overlap=config.validation.overlap,
                mode="gaussian",
            )
            prediction = logits.argmax(1)[0].cpu().numpy() == 2
            truth = data["label"][0].numpy() >= 2
            value = dice(prediction, truth)
            scores.append(1.0 if math.isnan(value) else value)
    model.train()
    return float(np.mean(scores)) if scores else math.nan


def _on_the_fly_synthesis(config: SegmentationConfig, run: TrainingRun) -> Any:
    """The batch hook that paints tumours into healthy crops (``None`` for ``synthesizer: none``)."""
    from ..synthesis.transforms import TumorSynthesisOnBatch

    if config.synthesis.synthesizer == "none":
        return None
    kwargs: dict[str, Any] = {}
    if config.synthesis.synthesizer == "diffusion":
        kwargs = {"pipeline": config.synthesis.pipeline, "device": str(run.device)}
    placement: dict[str, Any] = {
        "size_mix": config.synthesis.size_mix,
        "tumors_per_crop": config.synthesis.tumors_per_crop,
    }
    if config.synthesis.recipe == "hu2023":
        from ..synthesis.synthesizers import HU2023_RECIPE

        kwargs["recipe"] = "hu2023"
        placement = {"size_mix": HU2023_RECIPE["size_mix"], "tumors_per_crop": HU2023_RECIPE["tumors_per_crop"]}
    bank = None
    if config.synthesis.bank_size:
        from ..synthesis.bank import PaintedCropBank

        bank = PaintedCropBank(config.synthesis.bank_size, config.synthesis.bank_reuse)
        run.register_state("synthesis_bank", bank)
    return TumorSynthesisOnBatch(
        bank=bank,
        synthesizer=config.synthesis.synthesizer,
        organ=config.organ,
        prob=config.synthesis.prob,
        window=config.data.window,
        intensity_range=(0.0, 1.0),
        synthesizer_kwargs={**kwargs, **config.synthesis.options},
        **placement,
    )


def _step(model, optimizer, schedule, loss_function, images, labels, run: TrainingRun) -> float:
    """One optimisation step (with the learning-rate schedule); returns the loss."""
    accelerator = run.accelerator
    images, labels = images.to(run.device), labels.to(run.device)
    with accelerator.accumulate(model):
        with accelerator.autocast():
            loss = loss_function(model(images), labels)
        accelerator.backward(loss)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
    return loss.item()


def _validate(model, validation: list, config: SegmentationConfig, run: TrainingRun, best: float, best_path: Path):
    """Tumour Dice on the validation cases; a new best is exported to ``best_path`` with its score and step.
    Returns the score and the best so far."""
    accelerator = run.accelerator
    score = _validation_dice(accelerator.unwrap_model(model), validation, config, run.device)
    if run.is_main and score > best:
        best = score

        def write_best(folder: Path, score: float = score, step: int = run.step) -> None:
            accelerator.unwrap_model(model).save_pretrained(folder)
            (folder / "validation.json").write_text(json.dumps({"step": step, "tumor_dice": score}))

        run.export(best_path.name, write_best)
    return score, best


# Build, loop, conclude: the loop body is _step and _validate; what remains is wiring the run's objects in the order
# resume-exactness needs.
def train_segmentation(config: SegmentationConfig, resume: bool = False, inputs: tuple = ()) -> Path:
    """Run the training; returns the final model folder (``<output_dir>/model``; the best is ``best_model``)."""
    from monai.losses import DiceCELoss
    from monai.optimizers import WarmupCosineSchedule

    from ..segmentation.model import SegmentationModel

    config.synthesis.check_pipeline()
    cases, weights = _cases(config)
    validation = (
        read_cases(config.data.validation_datalist, require_label=True) if config.data.validation_datalist else []
    )
    run = TrainingRun(config.run, config, "segmentation", resume=resume, inputs=inputs)
    accelerator = run.accelerator
    model = SegmentationModel(
        backbone=config.model.backbone,
        backbone_kwargs=config.model.backbone_kwargs,
        window=config.data.window,
        spacing=config.data.spacing,
        roi_size=config.data.crop_size,
        organ=config.organ,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay)
    schedule = WarmupCosineSchedule(optimizer, warmup_steps=config.optim.warmup_steps, t_total=config.run.max_steps)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=True, smooth_nr=0.0, smooth_dr=1e-6)
    model, optimizer, schedule = accelerator.prepare(model, optimizer, schedule)
    synthesis = _on_the_fly_synthesis(config, run)  # registers its bank's state before the restore
    start = run.restore()
    dataset = _MixedDataset(cases, _preprocess(config), _augment(config), config.run.seed, weights)
    loader = run_loader(
        dataset, config.data.batch_size, config.data.num_workers, start, config.run.max_steps, accelerator
    )
    best_path = Path(config.run.output_dir) / "best_model"
    best = (
        json.loads((best_path / "validation.json").read_text())["tumor_dice"]
        if (best_path / "validation.json").exists()
        else -1.0
    )
    run.start_progress(config.run.max_steps)
    step = start
    # Running totals (this process, since start or resume): one step's count is mostly 0 at batch size 2.
    synthesised_total = crops_total = 0
    for batch in loader:
        images, labels = batch["image"], batch["label"]
        synthesised = 0
        if synthesis is not None:
            images, labels, synthesised = synthesis(images, labels, batch["seed"].tolist(), batch["healthy"].tolist())
        synthesised_total += synthesised
        crops_total += images.shape[0]
        loss = _step(model, optimizer, schedule, loss_function, images, labels, run)
        step = run.advance()
        metrics = {
            "loss": loss,
            "synthetic_tumours_total": float(synthesised_total),
            "synthetic_fraction": synthesised_total / max(crops_total, 1),
            "synthesis_effective_rate": synthesis.effective_rate if synthesis is not None else 0.0,
            "painted_fraction": synthesis.painted / max(synthesis.synthesised, 1) if synthesis is not None else 0.0,
            "lr": schedule.get_last_lr()[0],
        }
        if (
            validation
            and config.validation.every
            and (step % config.validation.every == 0 or step == config.run.max_steps)
        ):
            metrics["val_tumor_dice"], best = _validate(model, validation, config, run, best, best_path)
        run.end_step(metrics)
    return run.conclude(
        model,
        "model",
        accelerator.unwrap_model(model).save_pretrained,
        synthesizer=config.synthesis.synthesizer,
        pipeline=config.synthesis.pipeline,
        datasets=config.datasets,
    )


def load_segmentation_config(path, overrides) -> SegmentationConfig:
    return load_config(SegmentationConfig, path, overrides, trainer="segmentation")
