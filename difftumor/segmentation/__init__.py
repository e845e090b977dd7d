"""Tumour segmentation: backbone registry, the SegmentationModel wrapper and whole-CT inference."""

from .backbones import available_backbones, make_backbone
from .inference import postprocess, segment_volume
from .model import SegmentationModel

__all__ = ["SegmentationModel", "available_backbones", "make_backbone", "postprocess", "segment_volume"]
