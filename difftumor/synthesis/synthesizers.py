"""Tumour synthesizers: the plugin interface, the two built-ins and the registry.

A synthesizer paints tumours into batches of working-space crops (1 mm RAS, HU) whose tumour masks have already
been chosen. It must leave every voxel outside the tumour's (blurred) neighbourhood exactly as it was. Other
packages add synthesizers through the entry-point group ``difftumor.synthesizers``::

    [project.entry-points."difftumor.synthesizers"]
    mine = "my_package.module:MySynthesizer"

and ``get_synthesizer("mine", **kwargs)`` then constructs ``MySynthesizer(**kwargs)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ..devices import resolve_device
from ..errors import DiffTumorInputError, explain_load_failure
from ..spatial import organ_core, robust_statistics
from .intensity import CONTRAST_SPREAD, DEFAULT_REFERENCE_HU, expected_contrast_hu


@dataclass
class CropBatch:
    """Crops to synthesise into, all of the same size.

    Attributes:
        images: ``(B, 1, X, Y, Z)`` float32 HU in the 1 mm RAS working space.
        tumor_masks: ``(B, 1, X, Y, Z)`` bool, where each tumour goes.
        organ_masks: ``(B, 1, X, Y, Z)`` bool, the organ.
        organ: ``"liver"``, ``"pancreas"`` or ``"kidney"``.
        size_classes: per crop, ``tiny``/``small``/``medium``/``large``.
        seeds: per crop, the seed of every random draw for that tumour.
    """

    images: torch.Tensor
    tumor_masks: torch.Tensor
    organ_masks: torch.Tensor
    organ: str
    size_classes: list[str]
    seeds: list[int]


@dataclass
class SynthesisOutput:
    """What a synthesizer returns: new crops (HU) and, per crop, the parameters it drew (for the manifest)."""

    images: torch.Tensor
    parameters: list[dict[str, Any]] = field(default_factory=list)


class TumorSynthesizer(ABC):
    """Interface of every synthesizer. Subclasses set ``name`` and implement :meth:`synthesize`."""

    name: str = "synthesizer"
    #: how many crops one :meth:`synthesize` call may take
    max_batch_size: int = 8

    @abstractmethod
    def synthesize(self, batch: CropBatch) -> SynthesisOutput:
        """Return the crops with tumours; voxels away from the tumours must keep their exact input values."""

    def describe(self) -> dict[str, Any]:
        """Model identity and settings recorded in ``tumors.json``."""
        return {"synthesizer": self.name}

    def size_warning(self, size_class: str) -> str | None:
        """A warning when this synthesizer is not made for tumours of ``size_class`` (shown and recorded)."""
        return None

    def organ_warning(self, organ: str) -> str | None:
        """A warning when this synthesizer is not made for tumours of ``organ`` (shown and recorded)."""
        return None


# --------------------------------------------------------------------------------------------------------------
# Diffusion (DiffTumor)
# --------------------------------------------------------------------------------------------------------------


def blend_sigma(seed: int, blend_sigma_mm: tuple[float, float]) -> float:
    """σ (mm, = voxels of the working grid) of a tumour's blending blur, drawn from its seed: one draw shared by the
    diffusion synthesizer and its rule-only ablation, so both blend the same mask the same way."""
    return float(np.random.default_rng([seed, 1]).uniform(*blend_sigma_mm))


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
        from ..pipelines.tumor_inpaint.blending import BLEND_MODES

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
            from ..assets import bundled_pipeline_path

            pipeline = bundled_pipeline_path()
        self.pipeline = self._load(pipeline, scheduler, device)
        self.midlate_pipeline = self._load(midlate_pipeline, scheduler, device) if midlate_pipeline else None
        self.num_inference_steps = num_inference_steps
        self.max_batch_size = max_batch_size or (1 if str(self.pipeline.device) == "cpu" else 8)
        self._hashes: dict[int, str] = {}

    @staticmethod
    def _load(pipeline: Any, scheduler: str | None, device: str):
        from ..pipelines import TumorInpaintPipeline
        from ..schedulers import make_scheduler

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
            from ..models.hashing import parameters_sha256

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

    def _intensity_maps(self, batch: CropBatch, indices: list[int], pipeline) -> list[tuple[float, ...]]:
        """Per crop ``(a, b, k, c, μ, σ)``: the model sees ``a·HU + b``; the change it paints comes back multiplied
        by ``k`` (see the class doc); ``c`` is the real-lesion contrast of this organ (HU) and ``μ, σ`` its core's
        mean and standard deviation, NaN when not measured (and in ``native`` mode)."""
        nan = float("nan")
        unmeasured = (1.0, 0.0, 1.0, nan, nan, nan)
        if self.intensity == "native":
            return [unmeasured] * len(indices)
        reference_mean, reference_std = pipeline.config.get("organ_intensity_hu") or DEFAULT_REFERENCE_HU
        reference_contrast = expected_contrast_hu(reference_mean, reference_std)
        maps = []
        for index in indices:
            image, tumor = batch.images[index, 0].numpy(), batch.tumor_masks[index, 0].numpy().astype(bool)
            organ = batch.organ_masks[index, 0].numpy().astype(bool)
            mean, std = robust_statistics(image, organ_core(organ & ~tumor, tumor))
            if not (np.isfinite(mean) and np.isfinite(std)) or std <= 0:
                maps.append(unmeasured)  # no measurable organ core in this crop: paint it as it is
                continue
            scale = reference_std / std
            contrast = expected_contrast_hu(mean, std)
            maps.append((scale, reference_mean - scale * mean, contrast / reference_contrast, contrast, mean, std))
        return maps

    def _cap(self, change: torch.Tensor, tumor: torch.Tensor, expected: float) -> float:
        """Factor (≤ 1) that brings the tumour's mean drop down to ``max_contrast`` × the real-lesion contrast of
        this organ; 1 when it is within, in ``native`` mode, or without a measured organ."""
        if self.max_contrast is None or not np.isfinite(expected):
            return 1.0
        drop = -float(change[tumor.bool()].mean()) if bool(tumor.any()) else 0.0
        limit = self.max_contrast * expected
        return limit / drop if drop > limit else 1.0

    def _within_lesion_range(self, painted: torch.Tensor, before: torch.Tensor, maps) -> torch.Tensor:
        """Keep painted voxels within what an early lesion of this organ holds — from ``μ − max_contrast·c − 3σ`` to
        ``μ + 3σ`` — without moving any voxel past its own value before painting (bone, air and vessels near the
        tumour keep theirs). A model that decodes air or bone into a lesion at an organ border (the demo model does,
        rarely) then leaves a dark lesion, not a black-and-white blot. Only in ``relative`` mode with a measured
        organ and ``max_contrast`` set."""
        if self.max_contrast is None:
            return painted
        out = painted.clone()
        for position, (_, _, _, contrast, mean, std) in enumerate(maps):
            if not np.isfinite(contrast):
                continue
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
            scales = torch.tensor([m[0] for m in maps]).view(-1, 1, 1, 1, 1)
            offsets = torch.tensor([m[1] for m in maps]).view(-1, 1, 1, 1, 1)
            factors = torch.tensor([m[2] for m in maps]).view(-1, 1, 1, 1, 1)
            model_images = batch.images[indices] * scales + offsets
            output = pipeline(
                model_images,
                batch.tumor_masks[indices],
                num_inference_steps=self.num_inference_steps,
                generator=generators,
                blur_sigma=sigmas,
                suppress_stride_pattern=self.suppress_stride_pattern,
                fast=self.fast,
                blend=self.blend,
            )
            change = (output.images.double() - model_images.double()) * factors
            caps = [
                self._cap(change[position, 0], batch.tumor_masks[index, 0], maps[position][3])
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
                    "intensity_map": [round(v, 4) for v in maps[position][:3]],
                    "contrast_cap_scale": round(caps[position], 4),
                    "model_id": str(pipeline.source),
                    "model_hash": self._hash(pipeline),
                }
        return SynthesisOutput(images=images, parameters=parameters)


# --------------------------------------------------------------------------------------------------------------
# Rule only: the diffusion synthesizer's ablation
# --------------------------------------------------------------------------------------------------------------


class RuleOnlySynthesizer(TumorSynthesizer):
    """The diffusion synthesizer without its model: the ablation that shows what the model adds.

    Each tumour gets the same mask and the same blend as :class:`DiffusionSynthesizer` (blur σ from the same draw of
    its seed) and a drop of the real-lesion contrast rule for its organ
    (:func:`difftumor.synthesis.intensity.expected_contrast_hu` of the crop's organ core, × U(0.8, 1.2)):
    ``I' = I − c · w / mean(w over the tumour)`` with ``w`` the blurred mask (the mean drop over the tumour is
    ``c``). Texture, edge profile and shape of the intensity drop are then the rule's and the healthy crop's;
    whatever the diffusion model paints beyond that separates the two in ``difftumor realism``.

    Args:
        blend_sigma_mm: range of the blending blur σ (the diffusion synthesizer's default).
    """

    name = "rule-only"
    max_batch_size = 16

    def __init__(self, blend_sigma_mm: tuple[float, float] = (1.0, 3.0)):
        self.blend_sigma_mm = tuple(float(v) for v in blend_sigma_mm)

    def describe(self) -> dict[str, Any]:
        return {"synthesizer": self.name, "model_id": "rule-only", "blend_sigma_mm": list(self.blend_sigma_mm)}

    def synthesize(self, batch: CropBatch) -> SynthesisOutput:
        from ..pipelines.tumor_inpaint.blending import blend_weights

        sigmas = [blend_sigma(seed, self.blend_sigma_mm) for seed in batch.seeds]
        weights = blend_weights(batch.tumor_masks, sigmas).numpy()
        images = batch.images.clone()
        parameters = []
        for index, seed in enumerate(batch.seeds):
            image, tumor = batch.images[index, 0].numpy(), batch.tumor_masks[index, 0].numpy().astype(bool)
            organ = batch.organ_masks[index, 0].numpy().astype(bool)
            core = organ_core(organ & ~tumor, tumor)
            mean, std = robust_statistics(image, core if core.any() else organ & ~tumor)
            contrast = expected_contrast_hu(mean, std) * float(
                np.random.default_rng([seed, 3]).uniform(*CONTRAST_SPREAD)
            )
            weight = weights[index, 0]
            # The blur lowers the weight near the border: scaled so that the mean drop over the tumour is the contrast.
            inside = float(weight[tumor].mean()) if tumor.any() else 1.0
            painted = image.astype(np.float64) - contrast / max(inside, 1e-6) * weight
            images[index, 0] = torch.from_numpy(np.where(weight > 0, painted, image).astype(np.float32))
            parameters.append(
                {
                    "blend_sigma_mm": round(sigmas[index], 4),
                    "contrast_hu": round(contrast, 3),
                    "organ_core_hu": [round(mean, 2), round(std, 2)],
                    "model_id": "rule-only",
                }
            )
        return SynthesisOutput(images=images, parameters=parameters)


# --------------------------------------------------------------------------------------------------------------
# Handcrafted (Hu et al., CVPR 2023)
# --------------------------------------------------------------------------------------------------------------


def hu2023_texture(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, dict[str, float]]:
    """A tumour texture field ``T`` in [0, 1] (mean ≈ 0.5 where it matters), following Hu et al.'s texture bank:
    smoothed uniform noise as a probability field, Bernoulli-sampled, smoothed again and scaled."""
    sigma_a = float(rng.choice([3, 6, 9, 12, 15]))
    sigma_b = float(rng.choice([4, 7]))
    field_a = ndimage.gaussian_filter(rng.random(shape, dtype=np.float32), sigma_a)
    scale, base = rng.uniform(0.19, 0.21), rng.uniform(0.04, 0.06)
    span = float(field_a.max() - field_a.min()) or 1.0
    probability = scale * (field_a - field_a.min()) / span + base
    spots = ndimage.gaussian_filter((probability > rng.random(shape, dtype=np.float32)).astype(np.float32), sigma_b)
    target_mean = rng.uniform(0.5, 0.55)
    bright = spots[spots > 0.12]
    beta = target_mean / float(bright.mean()) if bright.size else 1.0
    texture = np.clip(beta * spots, 0.0, 1.0)
    return texture, {
        "texture_sigma_a": sigma_a,
        "texture_sigma_b": sigma_b,
        "texture_mean": round(float(target_mean), 4),
    }


#: Hu et al.'s training recipe (their released code): absolute drop, tumour type mix, counts per type, window.
HU2023_RECIPE = {
    "delta_hu": (65.0, 145.0),
    "size_mix": {"tiny": 0.2, "small": 0.2, "medium": 0.2, "large": 0.2, "mix": 0.2},
    "tumors_per_crop": {"tiny": (3, 10), "small": (3, 10), "medium": (2, 5), "large": (1, 3)},
    "window": (-21.0, 189.0),
}
RECIPES = ("relative", "hu2023")
#: How much of Hu et al.'s texture modulates the relative drop (0: uniform drop, 1: their full texture). Real early
#: lesions are about as uniform inside as the organ (internal std ≈ 0.95 × the organ's); the texture keeps some
#: heterogeneity without making the lesion noisier than that.
TEXTURE_STRENGTH = 0.3


class HandcraftedSynthesizer(TumorSynthesizer):
    """Training-free tumours (Hu et al., CVPR 2023, "Label-Free Liver Tumor Segmentation").

    Inside the organ, ``I' = I − T · g · Δ`` where ``T`` is a random texture, ``g`` the tumour mask blurred with
    ``σ ~ U(1, 2)`` mm (soft edge) and ``Δ`` the drop. Two recipes:

    - ``"relative"`` (default): the drop follows the scan — the mean drop inside the tumour is the contrast of a
      real early lesion in an organ with this crop's core mean and noise
      (:func:`difftumor.synthesis.intensity.expected_contrast_hu`, × U(0.8, 1.2)), the texture modulating it by
      :data:`TEXTURE_STRENGTH`;
    - ``"hu2023"``: Hu et al.'s exact drop, ``Δ ~ U(65, 145)`` HU, full texture (calibrated on enhanced scans, too
      strong for a non-contrast liver). Their type mix, counts and window (:data:`HU2023_RECIPE`) belong to
      segmentation training (``synthesis.recipe: hu2023``).

    Optional extra of the paper that the authors' training code leaves out: a brighter ``capsule`` rim.

    Args:
        recipe: ``"relative"`` or ``"hu2023"``.
        delta_hu: the ``hu2023`` drop range in HU.
        edge_sigma_mm: range of the edge blur ``σ``.
        capsule: add a thin hyper-attenuating rim (+``capsule_hu``) around the tumour.
        capsule_hu: rim brightness in HU.
    """

    name = "handcrafted"
    max_batch_size = 16

    def __init__(
        self,
        recipe: str = "relative",
        delta_hu: tuple[float, float] = HU2023_RECIPE["delta_hu"],
        edge_sigma_mm: tuple[float, float] = (1.0, 2.0),
        capsule: bool = False,
        capsule_hu: float = 20.0,
    ):
        if recipe not in RECIPES:
            raise DiffTumorInputError(f"unknown handcrafted recipe {recipe!r}", f"choose one of {', '.join(RECIPES)}")
        self.recipe = recipe
        self.delta_hu = tuple(float(v) for v in delta_hu)
        self.edge_sigma_mm = tuple(float(v) for v in edge_sigma_mm)
        self.capsule = capsule
        self.capsule_hu = float(capsule_hu)

    def describe(self) -> dict[str, Any]:
        info = {
            "synthesizer": self.name,
            "variant": self.recipe,
            "model_id": f"handcrafted-{self.recipe}",
            "edge_sigma_mm": list(self.edge_sigma_mm),
            "capsule": self.capsule,
        }
        if self.recipe == "hu2023":
            info["delta_hu"] = list(self.delta_hu)
        return info

    def _relative_drop(self, image, tumor, organ, texture, soft, rng, box) -> tuple[np.ndarray, dict[str, Any]]:
        """The HU removed per voxel of ``box`` by the ``relative`` recipe, and what was drawn. The organ's core is
        measured on the whole crop."""
        mean, std = robust_statistics(image, organ_core(organ & ~tumor, tumor))
        contrast = expected_contrast_hu(mean, std) * float(rng.uniform(*CONTRAST_SPREAD))
        inside = tumor[box]
        relative_texture = texture / max(float(texture[inside].mean()), 1e-6)
        modulation = np.clip(1.0 + TEXTURE_STRENGTH * (relative_texture - 1.0), 0.0, None)
        shape = modulation * soft
        # The soft edge lowers the drop near the border: scale so that the mean drop over the tumour is the contrast.
        return shape * (contrast / max(float(shape[inside].mean()), 1e-6)), {
            "contrast_hu": round(contrast, 3),
            "organ_core_hu": [round(mean, 2), round(std, 2)],
        }

    def _one(self, image: np.ndarray, tumor: np.ndarray, organ: np.ndarray, seed: int):
        rng = np.random.default_rng([seed, 2])
        edge_sigma = float(rng.uniform(*self.edge_sigma_mm))
        # Work in the tumour's neighbourhood only (truncate 4σ of the edge blur, plus texture context); the organ's
        # intensity is measured on the whole crop.
        margin = int(4 * edge_sigma + 0.5) + 2
        box = tuple(
            slice(max(int(lo) - margin, 0), min(int(hi) + margin + 1, size))
            for lo, hi, size in zip(np.argwhere(tumor).min(0), np.argwhere(tumor).max(0), tumor.shape)
        )
        draw_rng = np.random.default_rng([seed, 2, 1]) if self.recipe == "relative" else rng
        soft = ndimage.gaussian_filter(tumor[box].astype(np.float32), edge_sigma)
        if self.recipe == "hu2023":
            delta = float(rng.uniform(*self.delta_hu))  # drawn before the texture, as it always was
            texture, texture_parameters = hu2023_texture(tuple(s.stop - s.start for s in box), rng)
            change, drawn = texture * soft * delta, {"delta_hu": round(delta, 3)}
        else:
            texture, texture_parameters = hu2023_texture(tuple(s.stop - s.start for s in box), rng)
            change, drawn = self._relative_drop(image, tumor, organ, texture, soft, draw_rng, box)
        if self.capsule:
            rim = tumor[box] & ~ndimage.binary_erosion(tumor[box], iterations=1)
            change = change - ndimage.gaussian_filter(rim.astype(np.float32), 0.7) * self.capsule_hu
        change = np.where(organ[box], change, 0.0).astype(np.float32)
        out = image.copy()
        out[box] = np.where(change != 0, image[box] - change, image[box])
        return out, {
            "model_id": f"handcrafted-{self.recipe}",
            **drawn,
            "edge_sigma_mm": round(edge_sigma, 4),
            **texture_parameters,
        }

    def synthesize(self, batch: CropBatch) -> SynthesisOutput:
        images = batch.images.numpy()
        tumors = batch.tumor_masks.numpy()
        organs = batch.organ_masks.numpy()
        results, parameters = [], []
        for index, seed in enumerate(batch.seeds):
            image, drawn = self._one(images[index, 0], tumors[index, 0], organs[index, 0], seed)
            results.append(image[None])
            parameters.append(drawn)
        return SynthesisOutput(images=torch.from_numpy(np.stack(results)), parameters=parameters)


# --------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------

_BUILTIN = {
    "diffusion": DiffusionSynthesizer,
    "handcrafted": HandcraftedSynthesizer,
    "rule-only": RuleOnlySynthesizer,
}


def _plugins() -> dict[str, Any]:
    return {entry.name: entry for entry in entry_points(group="difftumor.synthesizers")}


def _construct(name: str, factory: Any, kwargs: dict[str, Any]) -> TumorSynthesizer:
    """``factory(**kwargs)``, with an unknown setting reported as the user's mistake, naming the accepted ones."""
    import inspect

    accepted = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = sorted(set(kwargs) - set(accepted)) if not takes_any else []
    if unknown:
        raise DiffTumorInputError(
            f"the {name} synthesizer has no setting {', '.join(unknown)}",
            f"its settings: {', '.join(k for k in accepted if k != 'self')}",
        )
    return factory(**kwargs)


def available_synthesizers() -> list[str]:
    """Names accepted by :func:`get_synthesizer`: the built-ins and every installed plugin."""
    return sorted(set(_BUILTIN) | set(_plugins()))


def get_synthesizer(name: str, **kwargs: Any) -> TumorSynthesizer:
    """Construct the synthesizer registered as ``name`` with ``kwargs``.

    Raises:
        DiffTumorInputError: unknown name (the message lists the available ones).
    """
    if name in _BUILTIN:
        return _construct(name, _BUILTIN[name], kwargs)
    plugins = _plugins()
    if name in plugins:
        factory = plugins[name].load()
        synthesizer = _construct(name, factory, kwargs)
        if not isinstance(synthesizer, TumorSynthesizer):
            raise TypeError(f"entry point {name!r} did not produce a TumorSynthesizer")
        return synthesizer
    raise DiffTumorInputError(f"unknown synthesizer {name!r}", f"choose one of {', '.join(available_synthesizers())}")
