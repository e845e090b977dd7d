"""The synthesizer interface: a batch of crops in, the same crops with tumours out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


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


def blend_sigma(seed: int, blend_sigma_mm: tuple[float, float]) -> float:
    """σ (mm, = voxels of the working grid) of a tumour's blending blur, drawn from its seed: one draw shared by the
    diffusion synthesizer and its rule-only ablation, so both blend the same mask the same way."""
    return float(np.random.default_rng([seed, 1]).uniform(*blend_sigma_mm))
