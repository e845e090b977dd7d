"""DiffTumor's synthesizer: a :class:`~difftumor.TumorInpaintPipeline` paints each tumour, relative to its organ."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...devices import resolve_device
from ...errors import DiffTumorInputError, explain_load_failure
from ...spatial import organ_core, robust_statistics
from ..intensity import CONTRAST_SPREAD, DEFAULT_REFERENCE_HU, expected_contrast_hu
from .base import CropBatch, SynthesisOutput, TumorSynthesizer, blend_sigma


@dataclass(frozen=True)
class IntensityMap:
    """How one crop is shown to the model and how its painting comes back (``intensity="relative"``).

    The model sees ``scale · HU + offset`` (the crop's organ core moved to the model's training organ); the change it
    paints comes back multiplied by ``factor`` (the real-lesion contrast rule of this organ over that of the training
    organ). ``contrast_hu``, ``organ_mean_hu`` and ``organ_std_hu`` are the rule's contrast and the core's statistics
    of this crop, NaN when not measured (and in ``native`` mode)."""

    scale: float = 1.0
    offset: float = 0.0
    factor: float = 1.0
    contrast_hu: float = float("nan")
    organ_mean_hu: float = float("nan")
    organ_std_hu: float = float("nan")

    @property
    def measured(self) -> bool:
        return bool(np.isfinite(self.contrast_hu))


class DiffusionSynthesizer(TumorSynthesizer):
    """DiffTumor: latent diffusion inpainting with a :class:`TumorInpaintPipeline`.

    Args:
        pipeline: the early-tumour pipeline (or a path / Hub repo id to load it from).
        midlate_pipeline: optional pipeline for medium and large tumours (the original's ``noearly`` models);
            without it every size uses ``pipeline``.
        scheduler: sampler name to swap in (see :func:`difftumor.schedulers.make_scheduler`).
        num_inference_steps: sampler steps (default: the pipeline's).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        max_batch_size: crops per pipeline call (default: 1 on CPU, where batching measured slower and doubles the
            memory — see BENCHMARKS.md — and 8 on GPU).
        intensity: ``"relative"`` (default): the crop is mapped so that its organ core has the mean and standard
            deviation of the model's training organ (``organ_intensity_hu`` of the pipeline; contrast-enhanced
            parenchyma, :data:`DEFAULT_REFERENCE_HU`, for converted checkpoints), the model paints there, and the
            change it made is brought back scaled by the ratio of the real-lesion contrast rule
            (:func:`difftumor.synthesis.intensity.expected_contrast_hu`) of this organ to that of the reference.
            A non-contrast liver then gets the lesion a non-contrast liver has. ``"native"``: the model sees the
            crop as it is (the original).
        blend_sigma_mm: range of the blending blur σ (the original draws U(0, 4); below 1 the edge becomes a voxel
            staircase that real lesions do not have).
        blend: the pipeline's ``blend``: ``"blur"`` (the original) shows a tumour a few σ wide at a fraction of the
            contrast the model painted; ``"outside"`` keeps what the model painted inside the mask.
        suppress_stride_pattern: remove the decoder's stride pattern where the tumour is blended
            (:func:`difftumor.pipelines.tumor_inpaint.pipeline_tumor_inpaint.remove_stride_pattern`).
        max_contrast: in ``relative`` mode, a tumour whose mean drop exceeds this multiple of the real-lesion
            contrast of its organ has its whole change scaled down to it (recorded as ``contrast_cap_scale``): a model
            asked for a lesion unlike those it learned (the bundled demo model saw 24 lesions, most under 1 cm)
            overshoots, and a black hole teaches a segmentation model nothing. ``None`` leaves the model's output.
        fast: the pipeline's fast mode (the tumour's neighbourhood only, bfloat16 where native; see
            :class:`~difftumor.pipelines.TumorInpaintPipeline`); ``--option fast=true`` on the command line.
        noise_seed: added to each tumour's seed for the sampler's noise only: the same tumours (place, shape,
            blur) drawn again.
    """

    name = "diffusion"

    def __init__(
        self,
        pipeline: Any = None,
        midlate_pipeline: Any = None,
        scheduler: str | None = None,
        num_inference_steps: int | None = None,
        device: str = "auto",
        max_batch_size: int | None = None,
        intensity: str = "relative",
        blend_sigma_mm: tuple[float, float] = (1.0, 3.0),
        blend: str = "blur",
        suppress_stride_pattern: bool = True,
        max_contrast: float | None = CONTRAST_SPREAD[1],
        fast: bool = False,
        noise_seed: int = 0,
    ):
        if intensity not in ("relative", "native"):
            raise DiffTumorInputError(f"unknown intensity mode {intensity!r}", "choose relative or native")
        self.intensity = intensity
        self.blend_sigma_mm = tuple(float(v) for v in blend_sigma_mm)
        from ...pipelines.tumor_inpaint.blending import BLEND_MODES

        if blend not in BLEND_MODES:
            raise DiffTumorInputError(f"unknown blend {blend!r}", f"choose one of {', '.join(BLEND_MODES)}")
        self.blend = blend
        self.suppress_stride_pattern = bool(suppress_stride_pattern)
        self.max_contrast = None if max_contrast is None else float(max_contrast)
        if not isinstance(fast, bool):
            raise DiffTumorInputError(f"fast must be true or false, got {fast!r}", "e.g. --option fast=true or --fast")
        self.fast = fast
        self.noise_seed = int(noise_seed)
        if pipeline is None:
            from ...assets import bundled_pipeline_path

            pipeline = bundled_pipeline_path()
        self.pipeline = self._load(pipeline, scheduler, device)
        self.midlate_pipeline = self._load(midlate_pipeline, scheduler, device) if midlate_pipeline else None
        self.num_inference_steps = num_inference_steps
        self.max_batch_size = max_batch_size or (1 if str(self.pipeline.device) == "cpu" else 8)
        self._hashes: dict[int, str] = {}

    @staticmethod
    def _load(pipeline: Any, scheduler: str | None, device: str):
        from ...pipelines import TumorInpaintPipeline
        from ...schedulers import make_scheduler

        source = None
        if isinstance(pipeline, (str, Path)):
            source = str(pipeline)
            folder = Path(pipeline)
            if folder.is_dir() and not (folder / "model_index.json").exists():
                raise DiffTumorInputError(
                    f"pipeline folder {folder} has no model_index.json",
                    "pass a folder written by TumorInpaintPipeline.save_pretrained or `difftumor convert`",
                )
            from diffusers.utils import logging as diffusers_logging

            diffusers_logging.disable_progress_bar()  # a one-line error must stay one line
            try:
                with explain_load_failure(
                    f"the pipeline {source}", "the folder may be incomplete or corrupt; re-download or re-convert it"
                ):
                    pipeline = TumorInpaintPipeline.from_pretrained(str(pipeline))
            finally:
                diffusers_logging.enable_progress_bar()
        if scheduler:
            pipeline.scheduler = make_scheduler(scheduler, pipeline.scheduler.config)
        pipeline.set_progress_bar_config(disable=True)
        pipeline = pipeline.to(resolve_device(device))
        pipeline.source = source or getattr(pipeline, "name_or_path", None) or "in-memory"
        return pipeline

    def organ_warning(self, organ: str) -> str | None:
        trained = self.pipeline.config.get("organ")
        if trained and trained != organ:
            return (
                f"the pipeline was trained on {trained} tumours; {organ} tumours from it rest on the paper's finding "
                f"that early tumours of the liver, pancreas and kidney look alike: check them with difftumor "
                f"realism, or pass a pipeline trained on the {organ}"
            )
        return None

    def size_warning(self, size_class: str) -> str | None:
        stage = self.pipeline.config.get("tumor_stage")
        if size_class in ("medium", "large") and self.midlate_pipeline is None and stage == "early":
            return (
                f"the pipeline was trained on early (< 2 cm) tumours only; {size_class} tumours from it are outside "
                "what it learned: pass --midlate-pipeline with a mid/late model (difftumor train diffusion "
                "--config midlate_released)"
            )
        return None

    def _pipeline_for(self, size_class: str):
        if self.midlate_pipeline is not None and size_class in ("medium", "large"):
            return self.midlate_pipeline
        return self.pipeline

    def _hash(self, pipeline) -> str:
        key = id(pipeline)
        if key not in self._hashes:
            from ...models.hashing import parameters_sha256

            # the denoiser's digest by the one weight fingerprint of the project, shortened for manifests
            self._hashes[key] = parameters_sha256(pipeline.unet)[:16]
        return self._hashes[key]

    def describe(self) -> dict[str, Any]:
        info = {
            "synthesizer": self.name,
            "variant": self.intensity,
            "blend_sigma_mm": list(self.blend_sigma_mm),
            "blend": self.blend,
            "suppress_stride_pattern": self.suppress_stride_pattern,
            "max_contrast": self.max_contrast,
            "fast": self.fast,
            "noise_seed": self.noise_seed,
            "model_id": str(self.pipeline.source),
            "model_hash": self._hash(self.pipeline),
            "scheduler": type(self.pipeline.scheduler).__name__,
            "num_inference_steps": self.num_inference_steps or self.pipeline.config.default_num_inference_steps,
        }
        if self.midlate_pipeline is not None:
            info["midlate_model_id"] = str(self.midlate_pipeline.source)
            info["midlate_model_hash"] = self._hash(self.midlate_pipeline)
        return info

    def _intensity_maps(self, batch: CropBatch, indices: list[int], pipeline) -> list[IntensityMap]:
        """One :class:`IntensityMap` per crop of ``indices`` (identity where the organ core cannot be measured)."""
        if self.intensity == "native":
            return [IntensityMap()] * len(indices)
        reference_mean, reference_std = pipeline.config.get("organ_intensity_hu") or DEFAULT_REFERENCE_HU
        reference_contrast = expected_contrast_hu(reference_mean, reference_std)
        maps = []
        for index in indices:
            image, tumor = batch.images[index, 0].numpy(), batch.tumor_masks[index, 0].numpy().astype(bool)
            organ = batch.organ_masks[index, 0].numpy().astype(bool)
            mean, std = robust_statistics(image, organ_core(organ & ~tumor, tumor))
            if not (np.isfinite(mean) and np.isfinite(std)) or std <= 0:
                maps.append(IntensityMap())  # no measurable organ core in this crop: paint it as it is
                continue
            scale = reference_std / std
            contrast = expected_contrast_hu(mean, std)
            maps.append(
                IntensityMap(scale, reference_mean - scale * mean, contrast / reference_contrast, contrast, mean, std)
            )
        return maps

    def _cap(self, change: torch.Tensor, tumor: torch.Tensor, expected: float) -> float:
        """Factor (≤ 1) that brings the tumour's mean drop down to ``max_contrast`` × the real-lesion contrast of
        this organ; 1 when it is within, in ``native`` mode, or without a measured organ."""
        if self.max_contrast is None or not np.isfinite(expected):
            return 1.0
        drop = -float(change[tumor.bool()].mean()) if bool(tumor.any()) else 0.0
        limit = self.max_contrast * expected
        return limit / drop if drop > limit else 1.0

    def _within_lesion_range(
        self, painted: torch.Tensor, before: torch.Tensor, maps: list[IntensityMap]
    ) -> torch.Tensor:
        """Keep painted voxels within what an early lesion of this organ holds — from ``μ − max_contrast·c − 3σ`` to
        ``μ + 3σ`` — without moving any voxel past its own value before painting (bone, air and vessels near the
        tumour keep theirs). A model that decodes air or bone into a lesion at an organ border (the demo model does,
        rarely) then leaves a dark lesion, not a black-and-white blot. Only in ``relative`` mode with a measured
        organ and ``max_contrast`` set."""
        if self.max_contrast is None:
            return painted
        out = painted.clone()
        for position, intensity_map in enumerate(maps):
            if not intensity_map.measured:
                continue
            contrast, mean, std = intensity_map.contrast_hu, intensity_map.organ_mean_hu, intensity_map.organ_std_hu
            low = torch.minimum(before[position], torch.tensor(mean - self.max_contrast * contrast - 3 * std))
            high = torch.maximum(before[position], torch.tensor(mean + 3 * std))
            out[position] = torch.maximum(torch.minimum(painted[position], high.to(painted)), low.to(painted))
        return out

    def synthesize(self, batch: CropBatch) -> SynthesisOutput:
        images = batch.images.clone()
        parameters: list[dict[str, Any]] = [{} for _ in batch.seeds]
        groups: dict[int, list[int]] = {}
        for index, size_class in enumerate(batch.size_classes):
            groups.setdefault(id(self._pipeline_for(size_class)), []).append(index)
        for indices in groups.values():
            pipeline = self._pipeline_for(batch.size_classes[indices[0]])
            generators = [torch.Generator().manual_seed(batch.seeds[i] + self.noise_seed) for i in indices]
            # σ of the blending blur, drawn per tumour from its own seed.
            sigmas = [blend_sigma(batch.seeds[i], self.blend_sigma_mm) for i in indices]
            maps = self._intensity_maps(batch, indices, pipeline)
            scales = torch.tensor([m.scale for m in maps]).view(-1, 1, 1, 1, 1)
            offsets = torch.tensor([m.offset for m in maps]).view(-1, 1, 1, 1, 1)
            factors = torch.tensor([m.factor for m in maps]).view(-1, 1, 1, 1, 1)
            model_images = batch.images[indices] * scales + offsets
            padded_images, padded_masks, inside = _with_context(pipeline, model_images, batch.tumor_masks[indices])
            output = pipeline(
                padded_images,
                padded_masks,
                num_inference_steps=self.num_inference_steps,
                generator=generators,
                blur_sigma=sigmas,
                suppress_stride_pattern=self.suppress_stride_pattern,
                fast=self.fast,
                blend=self.blend,
            )
            change = (output.images[inside].double() - model_images.double()) * factors
            caps = [
                self._cap(change[position, 0], batch.tumor_masks[index, 0], maps[position].contrast_hu)
                for position, index in enumerate(indices)
            ]
            change = change * torch.tensor(caps, dtype=change.dtype).view(-1, 1, 1, 1, 1)
            before = batch.images[indices].double()
            painted = self._within_lesion_range(before + change, before, maps)
            # Outside the blend the pipeline returns its input exactly: the change there is exactly 0.
            images[indices] = torch.where(change != 0, painted, before).to(images.dtype)
            for position, index in enumerate(indices):
                parameters[index] = {
                    "blend_sigma_mm": round(sigmas[position], 4),
                    "intensity_map": [
                        round(v, 4) for v in (maps[position].scale, maps[position].offset, maps[position].factor)
                    ],
                    "contrast_cap_scale": round(caps[position], 4),
                    "model_id": str(pipeline.source),
                    "model_hash": self._hash(pipeline),
                }
        return SynthesisOutput(images=images, parameters=parameters)


#: The crops converted checkpoints were trained on (the original's 96³).
ORIGINAL_TRAINING_CROP = (96, 96, 96)


def _with_context(
    pipeline: Any, images: torch.Tensor, masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, tuple[slice, ...]]:
    """Crops ``(B, 1, X, Y, Z)`` padded (edge values; masks with zeros) to at least the crops the model was trained
    on, and the slices that cut the originals back out. The model needs that context: the bundled model's early
    tumours come out about a fifth as dark in 48³ crops as in 64³ ones, and replicate padding to 64³ restores them
    (the segmentation trainer's 48³ crops; ``tests/synthesis/test_diffusion_context.py``)."""
    import torch.nn.functional as F

    trained = pipeline.config.get("training_crop_size") or ORIGINAL_TRAINING_CROP
    factors = getattr(pipeline, "latent_factor", (4, 4, 4))
    shape = images.shape[2:]
    targets = [max(int(size), int(need)) for size, need in zip(shape, trained)]
    targets = [-(-target // int(factor)) * int(factor) for target, factor in zip(targets, factors)]
    if list(shape) == targets:
        return images, masks, (slice(None),) * 5
    before = [(target - size) // 2 for target, size in zip(targets, shape)]
    after = [target - size - low for target, size, low in zip(targets, shape, before)]
    padding = [amount for axis in (2, 1, 0) for amount in (before[axis], after[axis])]
    padded_images = F.pad(images, padding, mode="replicate")
    padded_masks = F.pad(masks.to(torch.uint8), padding).to(masks.dtype)
    inside = (slice(None), slice(None), *(slice(low, low + size) for low, size in zip(before, shape)))
    return padded_images, padded_masks, inside
