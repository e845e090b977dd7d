"""One device option for every command: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""

from __future__ import annotations

import re

from .errors import DiffTumorInputError

DEVICE_HELP = "auto (CUDA when available), cpu, cuda or cuda:N."


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is available, else ``cpu``; ``cuda``/``cuda:N`` only when available."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or re.fullmatch(r"cuda:\d+", device):
        if not torch.cuda.is_available():
            raise DiffTumorInputError("CUDA is not available on this machine", "use --device cpu (or auto)")
        return device
    raise DiffTumorInputError(f"unknown device {device!r}", "use auto, cpu, cuda or cuda:N")
