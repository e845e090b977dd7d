"""One fingerprint of a model's weights, for manifests, training records and replica checks."""

from __future__ import annotations

import hashlib

import torch


def parameters_sha256(model: torch.nn.Module) -> str:
    """SHA-256 (hex) of a model's parameters and buffers: names in sorted order and their values as float32 bytes,
    so the same weights give the same digest on any device."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
