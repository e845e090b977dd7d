"""SegmentationModel: a MONAI backbone with its preprocessing settings, saved and shared like any diffusers model."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ..limits import check_patch_size
from ..models.loading import AlignedLoadingMixin
from .backbones import make_backbone


class SegmentationModel(AlignedLoadingMixin, ModelMixin, ConfigMixin):
    r"""Organ + tumour segmentation network (``out_channels`` = 3: background, organ, tumour).

    The config records everything needed to apply it to a new CT: the working-space spacing, the HU window (mapped
    to [0, 1], as DiffTumor's segmentation stage does), the patch size for sliding-window inference and the label
    names. ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` come from diffusers.

    Parameters:
        backbone (`str`): registry name (``unet``, ``dynunet``, ``swinunetr``, ``segresnet`` or a plugin).
        backbone_kwargs (`dict`): extra arguments of the backbone.
        in_channels (`int`, defaults to 1), out_channels (`int`, defaults to 3).
        window (`tuple[float, float]`): HU window mapped to [0, 1].
        spacing (`float`): working-space voxel size in mm.
        roi_size (`tuple[int, int, int]`): patch size of training and sliding-window inference.
        organ (`str`): organ name; ``labels`` names the output channels.
    """

    @register_to_config
    def __init__(
        self,
        backbone: str = "unet",
        backbone_kwargs: dict[str, Any] | None = None,
        in_channels: int = 1,
        out_channels: int = 3,
        window: tuple[float, float] | list[float] = (-175.0, 250.0),
        spacing: float = 1.0,
        roi_size: tuple[int, int, int] | list[int] = (96, 96, 96),
        organ: str = "liver",
        labels: tuple[str, ...] | list[str] = ("background", "organ", "tumor"),
    ):
        super().__init__()
        check_patch_size(roi_size, "roi_size of the segmentation model")
        self.network = make_backbone(backbone, in_channels, out_channels, **(backbone_kwargs or {}))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, X, Y, Z)`` for window-scaled images ``(B, in_channels, X, Y, Z)`` in [0, 1]."""
        return self.network(image)
