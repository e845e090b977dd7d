"""Loading behaviour shared by every difftumor model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..limits import check_model_size

# CPU kernels (oneDNN) pick different vectorised paths for weights that are not 64-byte aligned, which changes the
# rounding of the outputs. Tensors memory-mapped from safetensors sit at arbitrary file offsets, so a loaded model
# would not reproduce the saved one bit for bit; copying them into fresh (aligned) memory does.
_ALIGNMENT = 64


def realign_tensors(module: torch.nn.Module) -> None:
    """Copy every parameter and buffer of ``module`` that is not 64-byte aligned into fresh memory."""
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if tensor.device.type == "cpu" and tensor.numel() and tensor.data_ptr() % _ALIGNMENT:
                tensor.data = tensor.data.clone()


class AlignedLoadingMixin:
    """``from_pretrained`` that checks the size its config asks for before allocating anything
    (:func:`difftumor.limits.check_model_size`) and leaves the weights 64-byte aligned, so save -> load round trips
    are bit-exact."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any):
        folder = Path(pretrained_model_name_or_path) / (kwargs.get("subfolder") or "")
        if (folder / "config.json").is_file():
            check_model_size(cls, cls.load_config(folder), f"the {cls.__name__} in {folder}")
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        realign_tensors(model)
        return model

    def to(self, *args: Any, **kwargs: Any):
        # diffusers warns on every dtype cast that modules "should be kept in float32: []" even when a model lists
        # none, as ours: that one warning is silenced, a model that lists some keeps it.
        if getattr(self, "_keep_in_fp32_modules", None):
            return super().to(*args, **kwargs)
        logger = logging.getLogger("diffusers.models.modeling_utils")
        level = logger.level
        logger.setLevel(logging.ERROR)
        try:
            return super().to(*args, **kwargs)
        finally:
            logger.setLevel(level)
