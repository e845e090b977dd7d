"""Tumour synthesizers: the plugin interface, the two built-ins and the registry.

A synthesizer paints tumours into batches of working-space crops (1 mm RAS, HU) whose tumour masks have already
been chosen. It must leave every voxel outside the tumour's (blurred) neighbourhood exactly as it was. Other
packages add synthesizers through the entry-point group ``difftumor.synthesizers``::

    [project.entry-points."difftumor.synthesizers"]
    mine = "my_package.module:MySynthesizer"

and ``get_synthesizer("mine", **kwargs)`` then constructs ``MySynthesizer(**kwargs)``.
"""

from __future__ import annotations

from .base import CropBatch, SynthesisOutput, TumorSynthesizer, blend_sigma
from .diffusion import DiffusionSynthesizer, IntensityMap
from .handcrafted import HU2023_RECIPE, RECIPES, TEXTURE_STRENGTH, HandcraftedSynthesizer, hu2023_texture
from .registry import available_synthesizers, get_synthesizer
from .rule_only import RuleOnlySynthesizer

__all__ = [
    "CropBatch",
    "DiffusionSynthesizer",
    "HU2023_RECIPE",
    "HandcraftedSynthesizer",
    "IntensityMap",
    "RECIPES",
    "RuleOnlySynthesizer",
    "SynthesisOutput",
    "TEXTURE_STRENGTH",
    "TumorSynthesizer",
    "available_synthesizers",
    "blend_sigma",
    "get_synthesizer",
    "hu2023_texture",
]
