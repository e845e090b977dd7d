"""An example third-party plugin: a synthesizer that paints hyper-attenuating tumours, and a sampler."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from difftumor.synthesis import CropBatch, SynthesisOutput, TumorSynthesizer


class BrightSpotSynthesizer(TumorSynthesizer):
    """Adds ``boost_hu`` inside the tumour mask (a toy hyper-attenuating lesion)."""

    name = "bright"

    def __init__(self, boost_hu: float = 60.0):
        self.boost_hu = boost_hu

    def describe(self):
        return {"synthesizer": self.name, "model_id": "bright-spot-example", "boost_hu": self.boost_hu}

    def synthesize(self, batch: CropBatch) -> SynthesisOutput:
        images = torch.where(batch.tumor_masks, batch.images + self.boost_hu, batch.images)
        return SynthesisOutput(images=images, parameters=[{"boost_hu": self.boost_hu} for _ in batch.seeds])


def trailing_ddim(common: dict) -> DDIMScheduler:
    return DDIMScheduler(**common, clip_sample=False, timestep_spacing="trailing", set_alpha_to_one=True)
