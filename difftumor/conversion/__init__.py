"""Conversion of the authors' released DiffTumor checkpoints into difftumor models and pipeline folders."""

from .state_dicts import (
    infer_unet_kwargs,
    unet_config_from_original,
    unet_from_original,
    vqmodel_config_from_original,
    vqmodel_from_original,
)

__all__ = [
    "infer_unet_kwargs",
    "unet_config_from_original",
    "unet_from_original",
    "vqmodel_config_from_original",
    "vqmodel_from_original",
]
