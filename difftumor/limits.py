"""Memory bounds checked before anything is allocated: volume sizes read from headers, and network patch sizes.

A file's header can claim any size (a 2 MB ``.nii.gz`` of zeros can hold a 1024³ volume); reading it first and
failing in the allocator gives an empty ``MemoryError`` minutes later, or takes the machine down. The defaults fit
a 24 GB machine with room for the working copies synthesis and inference make; both can be raised through
environment variables for larger machines.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from .errors import DiffTumorInputError

#: Default voxel limit of one input volume: 512 × 512 × 2048 (a whole-body CT at 0.5 mm slices).
DEFAULT_MAX_VOLUME_VOXELS = 512 * 512 * 2048
#: Default voxel limit of one network patch times its batch: the activations of a 3-D U-Net grow with it.
DEFAULT_MAX_PATCH_VOXELS = 2 * 192**3


def _limit(variable: str, default: int) -> int:
    text = os.environ.get(variable)
    if not text:
        return default
    try:
        value = int(float(text))
    except ValueError:
        raise DiffTumorInputError(f"{variable}={text!r} is not a number", "unset it or give a voxel count") from None
    if value < 1:
        raise DiffTumorInputError(f"{variable}={text!r} must be positive", "unset it or give a voxel count")
    return value


def max_volume_voxels() -> int:
    """The voxel limit of one input volume (``DIFFTUMOR_MAX_VOXELS`` overrides the default)."""
    return _limit("DIFFTUMOR_MAX_VOXELS", DEFAULT_MAX_VOLUME_VOXELS)


def check_volume_size(shape: Sequence[int], what: str, path: object, fix: str | None = None) -> None:
    """Refuse a volume whose header claims more voxels than :func:`max_volume_voxels`, before reading it (or a
    grid derived from a header, before sampling it; ``fix`` then says what to check)."""
    voxels = math.prod(int(v) for v in shape)
    limit = max_volume_voxels()
    if voxels > limit:
        size = " × ".join(str(int(v)) for v in shape)
        raise DiffTumorInputError(
            f"{what} {path} has {size} = {voxels:,} voxels, over the limit of {limit:,} "
            f"(about {4 * voxels / 2**30:.0f} GB per float copy)",
            fix or "crop or resample it first, or raise the limit with DIFFTUMOR_MAX_VOXELS=N on a larger machine",
        )


def check_patch_size(size: Sequence[int], what: str, batch: int = 1) -> None:
    """Refuse a network patch (times its batch) over ``DIFFTUMOR_MAX_PATCH_VOXELS`` (default 2 × 192³)."""
    voxels = math.prod(int(v) for v in size) * max(int(batch), 1)
    limit = _limit("DIFFTUMOR_MAX_PATCH_VOXELS", DEFAULT_MAX_PATCH_VOXELS)
    if voxels > limit:
        raise DiffTumorInputError(
            f"{what} {list(size)} (× batch {batch}) is {voxels:,} voxels, over the limit of {limit:,}",
            "use a smaller patch or batch, or raise the limit with DIFFTUMOR_MAX_PATCH_VOXELS=N on a larger machine",
        )


#: Default bound on the weights and buffers of one model built from a config file (200 M values, 0.8 GB in float32;
#: the released DiffTumor models hold 1.7 M and 6 M).
DEFAULT_MAX_MODEL_PARAMETERS = 200_000_000
#: Default bound on a diffusion schedule's training steps (schedulers allocate arrays of that length).
DEFAULT_MAX_TRAIN_TIMESTEPS = 100_000


def check_model_size(model_class: type, config: dict, what: str) -> None:
    """Refuse a model config (read from a file) whose model would hold more values than
    ``DIFFTUMOR_MAX_MODEL_PARAMETERS``, counted on PyTorch's meta device: nothing is allocated."""
    import torch

    try:
        with torch.device("meta"):
            probe = model_class.from_config(config) if hasattr(model_class, "from_config") else model_class(**config)
    except DiffTumorInputError:
        raise
    except Exception as error:  # noqa: BLE001 — a malformed config fails in many ways inside the constructors
        first = str(error).strip().splitlines()[0][:150] if str(error).strip() else type(error).__name__
        raise DiffTumorInputError(
            f"{what} has a config its model cannot be built from ({first})",
            "the folder may be corrupt or from another program; re-download or re-convert it",
        ) from None
    count = sum(tensor.numel() for tensor in [*probe.parameters(), *probe.buffers()])
    limit = _limit("DIFFTUMOR_MAX_MODEL_PARAMETERS", DEFAULT_MAX_MODEL_PARAMETERS)
    if count > limit:
        raise DiffTumorInputError(
            f"{what} would hold {count:,} values ({4 * count / 2**30:.1f} GB in float32), over the limit of {limit:,}",
            "check its config.json (a corrupt or hostile file?), or raise DIFFTUMOR_MAX_MODEL_PARAMETERS=N",
        )


def check_train_timesteps(value: object, what: str) -> None:
    """Refuse a schedule length that is not a positive integer up to ``DIFFTUMOR_MAX_TRAIN_TIMESTEPS``."""
    limit = _limit("DIFFTUMOR_MAX_TRAIN_TIMESTEPS", DEFAULT_MAX_TRAIN_TIMESTEPS)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or not 1 <= value:
        raise DiffTumorInputError(f"{what} num_train_timesteps is {value!r}", "it must be a positive integer")
    if value > limit:
        raise DiffTumorInputError(
            f"{what} has num_train_timesteps = {value:,.0f}, over the limit of {limit:,}",
            "check the scheduler config (DiffTumor uses 4 or 200), or raise DIFFTUMOR_MAX_TRAIN_TIMESTEPS=N",
        )
