"""The diffusion synthesizer without its model: its ablation."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ...spatial import organ_core, robust_statistics
from ..intensity import CONTRAST_SPREAD, expected_contrast_hu
from .base import CropBatch, SynthesisOutput, TumorSynthesizer, blend_sigma


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
        from ...pipelines.tumor_inpaint.blending import blend_weights

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
