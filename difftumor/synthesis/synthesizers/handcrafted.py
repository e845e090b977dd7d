"""The training-free synthesizer of Hu et al. (CVPR 2023), with the organ-relative contrast rule."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy import ndimage

from ...errors import DiffTumorInputError
from ...spatial import organ_core, robust_statistics
from ..intensity import CONTRAST_SPREAD, expected_contrast_hu
from .base import CropBatch, SynthesisOutput, TumorSynthesizer


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
