"""Tumour synthesis: geometry, synthesizer plugins and whole-CT synthesis."""

from .cases import synthesize_ct, synthesize_datalist
from .engine import SynthesisResult, SynthesizedTumor, synthesize_tumors
from .geometry import SIZE_CLASSES, TumorSpec, parse_size, place_tumor
from .synthesizers import (
    CropBatch,
    DiffusionSynthesizer,
    HandcraftedSynthesizer,
    SynthesisOutput,
    TumorSynthesizer,
    available_synthesizers,
    get_synthesizer,
)

__all__ = [
    "SIZE_CLASSES",
    "CropBatch",
    "DiffusionSynthesizer",
    "HandcraftedSynthesizer",
    "SynthesisOutput",
    "SynthesisResult",
    "SynthesizedTumor",
    "TumorSpec",
    "TumorSynthesizer",
    "available_synthesizers",
    "get_synthesizer",
    "parse_size",
    "place_tumor",
    "synthesize_ct",
    "synthesize_datalist",
    "synthesize_tumors",
]
