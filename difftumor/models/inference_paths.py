"""What the CPU inference paths of the models share: when they may run, scratch buffers, and caches of derived weights.

The fast paths (slab-by-slab residual blocks, Winograd convolutions, convolution by taps, the one-channel first
convolution, cached depth-attention weights) compute the same function as the plain modules but call their
layers' weights directly. They therefore run only where that is invisible: autograd off where they write in place,
no autocast (their transforms would round in bfloat16), and no hooks on the layers they bypass (accelerate's
offloading, PEFT wrappers and user hooks act through ``__call__``).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _module


def has_hooks(*modules: nn.Module) -> bool:
    """Whether calling any of ``modules`` would run a hook (their own or a global one; backward hooks only count
    with autograd on, the only time they can fire)."""
    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return True
    backward = torch.is_grad_enabled()
    if backward and (_module._global_backward_hooks or _module._global_backward_pre_hooks):
        return True
    return any(
        m._forward_hooks or m._forward_pre_hooks or (backward and (m._backward_hooks or m._backward_pre_hooks))
        for m in modules
    )


def plain_stride_one(layer: nn.Conv3d) -> bool:
    """A stride-1, undilated, ungrouped, unpadded 3-D convolution (padding is applied by the caller)."""
    return (
        layer.stride == (1, 1, 1) and layer.dilation == (1, 1, 1) and layer.groups == 1 and layer.padding == (0, 0, 0)
    )


def cpu_float_without_autocast(x: torch.Tensor) -> bool:
    """``x`` is a float32/float64 CPU tensor and CPU autocast is off."""
    return x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and not torch.is_autocast_enabled("cpu")


def scratch(
    workspace: dict[str, torch.Tensor] | None,
    name: str,
    shape: tuple[int, ...],
    like: torch.Tensor,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """A scratch tensor kept in ``workspace`` while its shape stays the same, so that the slabs of one layer reuse
    it (a fresh 20-30 MB allocation per slab pays its page faults every time: 5 % of a decode)."""
    buffer = None if workspace is None else workspace.get(name)
    if buffer is None or tuple(buffer.shape) != tuple(shape) or buffer.dtype != like.dtype:
        buffer = torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=memory_format)
        if workspace is not None:
            workspace[name] = buffer
    return buffer


# Derived weights per module, outside the module: they are neither saved, pickled nor deep-copied with it, and go
# when it goes.
_DERIVED: weakref.WeakKeyDictionary[nn.Module, tuple[weakref.ref, tuple, Any, Any]] = weakref.WeakKeyDictionary()


def derived_weights(owner: nn.Module, weight: torch.Tensor, extra_key: Any, compute: Callable[[], Any]) -> Any:
    """``compute()``, kept for ``owner`` until ``weight`` is replaced or changed, or ``extra_key`` changes.

    The weight is recognised by identity, version counter (bumped by every in-place update: ``load_state_dict``,
    optimiser steps, ``.data.copy_``), storage, dtype and device (``.to``, ``.half()`` and ``.data =`` swap the
    storage of the same parameter without bumping its version).
    """
    state = (weight._version, weight.data_ptr(), weight.dtype, weight.device)
    cached = _DERIVED.get(owner)
    if cached is not None:
        reference, cached_state, key, value = cached
        if reference() is weight and cached_state == state and key == extra_key:
            return value
    value = compute()
    _DERIVED[owner] = (weakref.ref(weight), state, extra_key, value)
    return value
