"""An example third-party plugin, one file: a synthesizer, a sampler, a segmentation backbone and a dataset layout
(registered in ``pyproject.toml``; see ``docs/extending.md``)."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from difftumor.data.registry import Layout, TruthLabels
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


def tiny_convnet(in_channels: int, out_channels: int, width: int = 4) -> torch.nn.Module:
    """A segmentation backbone: two 3×3×3 convolutions (a toy; any ``nn.Module`` mapping (B, C, X, Y, Z) to
    (B, classes, X, Y, Z) works)."""
    return torch.nn.Sequential(
        torch.nn.Conv3d(in_channels, width, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv3d(width, out_channels, 3, padding=1),
    )


def _scan_flat(root, organ, options):
    """``<case>_ct.nii.gz`` beside ``<case>_seg.nii.gz`` in one folder; 1 organ, 2 tumour."""
    from difftumor.data.layouts import SourceCase, label_from_values

    def cases():
        for image in sorted(root.glob("*_ct.nii.gz")):
            label = image.with_name(image.name.replace("_ct.nii.gz", "_seg.nii.gz"))
            if label.exists():
                yield SourceCase(image.name[: -len("_ct.nii.gz")], image, label_from_values(label, (1,), (2,)))

    return organ or "liver", cases()


FLAT_LAYOUT = Layout(
    name="flat",
    description="<case>_ct.nii.gz + <case>_seg.nii.gz in one folder",
    scanner=_scan_flat,
    truth_labels=TruthLabels(organ=(1,), tumor=(2,)),
)
