"""Tumour synthesizers: the plugin interface, the two built-ins and the registry.

A synthesizer paints tumours into batches of working-space crops (1 mm RAS, HU) whose tumour masks have already
been chosen. It must leave every voxel outside the tumour's (blurred) neighbourhood exactly as it was. Other
packages add synthesizers through the entry-point group ``difftumor.synthesizers``::

    [project.entry-points."difftumor.synthesizers"]
    mine = "my_package.module:MySynthesizer"

and ``get_synthesizer("mine", **kwargs)`` then constructs ``MySynthesizer(**kwargs)``.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ..errors import DiffTumorInputError


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


# --------------------------------------------------------------------------------------------------------------
# Diffusion (DiffTumor)
# --------------------------------------------------------------------------------------------------------------


def _weights_hash(pipeline) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(pipeline.unet.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class DiffusionSynthesizer(TumorSynthesizer):
    """DiffTumor: latent diffusion inpainting with a :class:`TumorInpaintPipeline`.

    Args:
        pipeline: the early-tumour pipeline (or a path / Hub repo id to load it from).
        midlate_pipeline: optional pipeline for medium and large tumours (the original's ``noearly`` models);
            without it every size uses ``pipeline``.
        scheduler: sampler name to swap in (see :func:`difftumor.schedulers.make_scheduler`).
        num_inference_steps: sampler steps (default: the pipeline's).
        device: ``"cpu"``/``"cuda"``.
        max_batch_size: crops per pipeline call (default: 1 on CPU, where batching measured slower and doubles the
            memory — see BENCHMARKS.md — and 8 on GPU).
    """

    name = "diffusion"

    def __init__(
        self,
        pipeline: Any = None,
        midlate_pipeline: Any = None,
        scheduler: str | None = None,
        num_inference_steps: int | None = None,
        device: str = "cpu",
        max_batch_size: int | None = None,
    ):
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
                pipeline = TumorInpaintPipeline.from_pretrained(str(pipeline))
            except DiffTumorInputError:
                raise
            except Exception as error:  # noqa: BLE001 — diffusers raises many types for broken folders
                raise DiffTumorInputError(
                    f"cannot load the pipeline {source} ({str(error).strip().splitlines()[0][:150]})",
                    "the folder may be incomplete or corrupt; re-download or re-convert it",
                ) from None
            finally:
                diffusers_logging.enable_progress_bar()
        if scheduler:
            pipeline.scheduler = make_scheduler(scheduler, pipeline.scheduler.config)
        pipeline.set_progress_bar_config(disable=True)
        pipeline = pipeline.to(device)
        pipeline.source = source or getattr(pipeline, "name_or_path", None) or "in-memory"
        return pipeline

    def _pipeline_for(self, size_class: str):
        if self.midlate_pipeline is not None and size_class in ("medium", "large"):
            return self.midlate_pipeline
        return self.pipeline

    def _hash(self, pipeline) -> str:
        key = id(pipeline)
        if key not in self._hashes:
            self._hashes[key] = _weights_hash(pipeline)
        return self._hashes[key]

    def describe(self) -> dict[str, Any]:
        info = {
            "synthesizer": self.name,
            "model_id": str(self.pipeline.source),
            "model_hash": self._hash(self.pipeline),
            "scheduler": type(self.pipeline.scheduler).__name__,
            "num_inference_steps": self.num_inference_steps or self.pipeline.config.default_num_inference_steps,
        }
        if self.midlate_pipeline is not None:
            info["midlate_model_id"] = str(self.midlate_pipeline.source)
            info["midlate_model_hash"] = self._hash(self.midlate_pipeline)
        return info

    def synthesize(self, batch: CropBatch) -> SynthesisOutput:
        images = batch.images.clone()
        parameters: list[dict[str, Any]] = [{} for _ in batch.seeds]
        groups: dict[int, list[int]] = {}
        for index, size_class in enumerate(batch.size_classes):
            groups.setdefault(id(self._pipeline_for(size_class)), []).append(index)
        for indices in groups.values():
            pipeline = self._pipeline_for(batch.size_classes[indices[0]])
            generators = [torch.Generator().manual_seed(batch.seeds[i]) for i in indices]
            # σ of the blending blur, drawn per tumour from its own seed (the original: U(0, 4)).
            sigmas = [float(np.random.default_rng([batch.seeds[i], 1]).uniform(0.0, 4.0)) for i in indices]
            output = pipeline(
                batch.images[indices],
                batch.tumor_masks[indices],
                num_inference_steps=self.num_inference_steps,
                generator=generators,
                blur_sigma=sigmas,
            )
            images[indices] = output.images
            for position, index in enumerate(indices):
                parameters[index] = {
                    "blend_sigma_mm": round(sigmas[position], 4),
                    "model_id": str(pipeline.source),
                    "model_hash": self._hash(pipeline),
                }
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


class HandcraftedSynthesizer(TumorSynthesizer):
    """Training-free tumours (Hu et al., CVPR 2023, "Label-Free Liver Tumor Segmentation").

    Inside the organ, ``I' = I − T · g · Δ`` where ``T`` is a random texture, ``g`` the tumour mask blurred with
    ``σ ~ U(1, 2)`` mm (soft edge) and ``Δ ~ U(65, 145)`` HU (hypo-attenuation). Optional extras of the paper that
    the authors' training code leaves out: a brighter ``capsule`` rim.

    Args:
        delta_hu: range of the attenuation drop ``Δ`` in HU.
        edge_sigma_mm: range of the edge blur ``σ``.
        capsule: add a thin hyper-attenuating rim (+``capsule_hu``) around the tumour.
        capsule_hu: rim brightness in HU.
    """

    name = "handcrafted"
    max_batch_size = 16

    def __init__(
        self,
        delta_hu: tuple[float, float] = (65.0, 145.0),
        edge_sigma_mm: tuple[float, float] = (1.0, 2.0),
        capsule: bool = False,
        capsule_hu: float = 20.0,
    ):
        self.delta_hu = tuple(float(v) for v in delta_hu)
        self.edge_sigma_mm = tuple(float(v) for v in edge_sigma_mm)
        self.capsule = capsule
        self.capsule_hu = float(capsule_hu)

    def describe(self) -> dict[str, Any]:
        return {
            "synthesizer": self.name,
            "model_id": "handcrafted-hu2023",
            "delta_hu": list(self.delta_hu),
            "edge_sigma_mm": list(self.edge_sigma_mm),
            "capsule": self.capsule,
        }

    def _one(self, image: np.ndarray, tumor: np.ndarray, organ: np.ndarray, seed: int):
        rng = np.random.default_rng([seed, 2])
        edge_sigma = float(rng.uniform(*self.edge_sigma_mm))
        delta = float(rng.uniform(*self.delta_hu))
        # Work in the tumour's neighbourhood only (truncate 4σ of the edge blur, plus texture context).
        margin = int(4 * edge_sigma + 0.5) + 2
        box = tuple(
            slice(max(int(lo) - margin, 0), min(int(hi) + margin + 1, size))
            for lo, hi, size in zip(np.argwhere(tumor).min(0), np.argwhere(tumor).max(0), tumor.shape)
        )
        texture, texture_parameters = hu2023_texture(tuple(s.stop - s.start for s in box), rng)
        soft = ndimage.gaussian_filter(tumor[box].astype(np.float32), edge_sigma)
        change = texture * soft * delta
        if self.capsule:
            rim = tumor[box] & ~ndimage.binary_erosion(tumor[box], iterations=1)
            change = change - ndimage.gaussian_filter(rim.astype(np.float32), 0.7) * self.capsule_hu
        change = np.where(organ[box], change, 0.0).astype(np.float32)
        out = image.copy()
        out[box] = np.where(change != 0, image[box] - change, image[box])
        return out, {
            "model_id": "handcrafted-hu2023",
            "delta_hu": round(delta, 3),
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

_BUILTIN = {"diffusion": DiffusionSynthesizer, "handcrafted": HandcraftedSynthesizer}


def _plugins() -> dict[str, Any]:
    return {entry.name: entry for entry in entry_points(group="difftumor.synthesizers")}


def available_synthesizers() -> list[str]:
    """Names accepted by :func:`get_synthesizer`: the built-ins and every installed plugin."""
    return sorted(set(_BUILTIN) | set(_plugins()))


def get_synthesizer(name: str, **kwargs: Any) -> TumorSynthesizer:
    """Construct the synthesizer registered as ``name`` with ``kwargs``.

    Raises:
        DiffTumorInputError: unknown name (the message lists the available ones).
    """
    if name in _BUILTIN:
        return _BUILTIN[name](**kwargs)
    plugins = _plugins()
    if name in plugins:
        factory = plugins[name].load()
        synthesizer = factory(**kwargs)
        if not isinstance(synthesizer, TumorSynthesizer):
            raise TypeError(f"entry point {name!r} did not produce a TumorSynthesizer")
        return synthesizer
    raise DiffTumorInputError(f"unknown synthesizer {name!r}", f"choose one of {', '.join(available_synthesizers())}")
