"""Gradient checkpointing in the diffusers convention, shared by every model of the package."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def call_block(owner: nn.Module, block: nn.Module, *args: Any) -> Any:
    """Run ``block(*args)``, through ``owner._gradient_checkpointing_func`` when ``owner.gradient_checkpointing`` is on.

    ``ModelMixin.enable_gradient_checkpointing`` sets both attributes on every sub-module that has a
    ``gradient_checkpointing`` attribute; the owners here are the encoder, decoder and UNet.
    """
    if getattr(owner, "gradient_checkpointing", False) and torch.is_grad_enabled():
        return owner._gradient_checkpointing_func(block, *args)
    return block(*args)
