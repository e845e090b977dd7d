"""Read the authors' released checkpoint files without ever running a full unpickle.

Both formats are pickles: ``AutoencoderModel.ckpt`` (a PyTorch-Lightning checkpoint whose ``hyper_parameters['cfg']``
is an OmegaConf ``DictConfig``) and ``{organ}_{early,noearly}.pt`` (``{'step', 'model', 'ema', 'scaler'}`` holding
``GaussianDiffusion.state_dict()``). They are read with ``torch.load(weights_only=True)`` and an allow-list in which
every OmegaConf class is replaced by an inert stand-in that only records its pickled state, so OmegaConf need not
be installed and no code from the file can run. The stand-ins are then turned into plain dicts and lists.
"""

from __future__ import annotations

import collections
import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import DiffTumorInputError


class _PickledState:
    """Inert stand-in for an allow-listed class: ``BUILD`` hands it the pickled state, which it only stores."""

    def __setstate__(self, state: Any) -> None:
        self.pickled_state = state


class _DictConfig(_PickledState):
    pass


class _ListConfig(_PickledState):
    pass


class _ValueNode(_PickledState):
    pass


class _Metadata(_PickledState):
    pass


class _AttributeDict(dict):
    pass


def _default_dict(*_factory: Any) -> dict:
    # defaultdict(dict) appears as OmegaConf's (empty) resolver cache; the factory is irrelevant once loaded.
    return {}


_ANY = object()

_ALLOWED_GLOBALS: list[tuple[Any, str]] = [
    (_DictConfig, "omegaconf.dictconfig.DictConfig"),
    (_ListConfig, "omegaconf.listconfig.ListConfig"),
    (_Metadata, "omegaconf.base.Metadata"),
    (_Metadata, "omegaconf.base.ContainerMetadata"),
    *[
        (_ValueNode, f"omegaconf.nodes.{node}")
        for node in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode")
    ],
    (_ANY, "typing.Any"),
    (_default_dict, "collections.defaultdict"),
    (collections.Counter, "collections.Counter"),
    (_AttributeDict, "pytorch_lightning.utilities.parsing.AttributeDict"),
    (_AttributeDict, "lightning_fabric.utilities.data.AttributeDict"),
    (_AttributeDict, "lightning.fabric.utilities.data.AttributeDict"),
    (dict, "builtins.dict"),
    (list, "builtins.list"),
    (int, "builtins.int"),
]
_ALLOWED_NAMES = sorted({name for _, name in _ALLOWED_GLOBALS})


#: Bounds on the config a checkpoint carries: the released ones hold a few hundred values, a few levels deep. A pickle
#: can share one list between many parents (each copy doubles the walk: 64 levels are 2⁶⁴ nodes) or hold itself.
MAX_CONFIG_NODES = 100_000
MAX_CONFIG_DEPTH = 50


def to_plain(value: Any) -> Any:
    """Turn loaded OmegaConf stand-ins (and containers holding them) into plain dicts, lists and scalars.

    Raises:
        DiffTumorInputError: a config of more than :data:`MAX_CONFIG_NODES` values or deeper than
            :data:`MAX_CONFIG_DEPTH` (a shared-reference bomb, or a config that contains itself).
    """
    visited = [0]

    def walk(item: Any, depth: int) -> Any:
        visited[0] += 1
        if visited[0] > MAX_CONFIG_NODES or depth > MAX_CONFIG_DEPTH:
            raise DiffTumorInputError(
                f"the checkpoint's config holds more than {MAX_CONFIG_NODES:,} values or nests deeper than "
                f"{MAX_CONFIG_DEPTH} levels (the released configs hold a few hundred, a few levels deep)",
                "convert the released AutoencoderModel.ckpt / {organ}_{early,noearly}.pt; this file is not one",
            )
        if isinstance(item, _DictConfig):
            content = item.pickled_state.get("_content")
            return None if content is None else {key: walk(entry, depth + 1) for key, entry in content.items()}
        if isinstance(item, _ListConfig):
            content = item.pickled_state.get("_content")
            return None if content is None else [walk(entry, depth + 1) for entry in content]
        if isinstance(item, _ValueNode):
            return walk(item.pickled_state.get("_val"), depth + 1)
        if isinstance(item, Mapping):
            return {key: walk(entry, depth + 1) for key, entry in item.items()}
        if isinstance(item, (list, tuple)):
            return [walk(entry, depth + 1) for entry in item]
        return item

    return walk(value, 0)


def load_checkpoint_safely(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` a released checkpoint with ``weights_only=True`` and the OmegaConf allow-list, on CPU.

    Raises:
        DiffTumorInputError: missing, unreadable, truncated or non-PyTorch files, or files that reference Python
            objects outside the allow-list.
    """
    path = Path(path)
    if not path.exists():
        raise DiffTumorInputError(f"checkpoint {path} does not exist", "check the path")
    if path.is_dir():
        raise DiffTumorInputError(f"checkpoint {path} is a folder", "pass the .ckpt/.pt file itself")
    if not os.access(path, os.R_OK):
        raise DiffTumorInputError(f"checkpoint {path} is not readable", "check the file's permissions")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(_ALLOWED_GLOBALS):
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before failing with a clear error
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "GLOBAL" in str(error) or "global" in str(error):
            raise DiffTumorInputError(
                f"checkpoint {path} contains Python objects outside the safe allow-list",
                "only the released DiffTumor formats (weights + OmegaConf config) can be converted",
            ) from None
        raise DiffTumorInputError(
            f"{path} is not a PyTorch checkpoint (its pickle cannot be read as weights)",
            "pass the released .ckpt/.pt file",
        ) from None
    except Exception as error:  # noqa: BLE001 — torch raises many types for non-checkpoint files
        raise DiffTumorInputError(
            f"{path} is not a readable PyTorch checkpoint ({_first_line(str(error))})",
            "the file may be truncated or of another format; re-download it",
        ) from None
    if not isinstance(checkpoint, Mapping):
        raise DiffTumorInputError(
            f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict",
            "pass the released AutoencoderModel.ckpt / {organ}_{early,noearly}.pt",
        )
    return dict(checkpoint)


def _first_line(message: str) -> str:
    line = message.strip().splitlines()[0] if message.strip() else "unknown error"
    return line[:160]


@dataclass
class OriginalAutoencoder:
    """Contents of ``AutoencoderModel.ckpt``: the VQ-GAN ``state_dict`` and its ``cfg`` as plain dicts."""

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]


@dataclass
class OriginalDiffusion:
    """Contents of ``{organ}_{early,noearly}.pt``.

    Attributes:
        unet_state_dict: the ``denoise_fn.`` weights (prefix removed).
        vqgan_state_dict: the ``vqgan.`` weights (prefix removed), or ``None`` if the file has none.
        schedule: the 12 schedule buffers (``betas``, ``alphas_cumprod``, ...).
        num_train_timesteps: ``T``, the schedule buffers' length (4 early, 200 mid/late).
        step: the training step it was saved at, if recorded.
    """

    unet_state_dict: dict[str, torch.Tensor]
    vqgan_state_dict: dict[str, torch.Tensor] | None
    schedule: dict[str, torch.Tensor]
    num_train_timesteps: int
    step: int | None


def read_autoencoder_checkpoint(path: str | os.PathLike) -> OriginalAutoencoder:
    """Read a Lightning ``AutoencoderModel.ckpt`` (``state_dict`` + ``hyper_parameters['cfg']``)."""
    checkpoint = load_checkpoint_safely(path)
    state_dict = checkpoint.get("state_dict")
    hyper_parameters = to_plain(checkpoint.get("hyper_parameters") or {})
    config = hyper_parameters.get("cfg") if isinstance(hyper_parameters, Mapping) else None
    if not isinstance(state_dict, Mapping) or not any(k.startswith("encoder.") for k in state_dict):
        raise DiffTumorInputError(
            f"{path} is not a DiffTumor autoencoder checkpoint (no encoder weights in 'state_dict')",
            "pass AutoencoderModel.ckpt to --autoencoder",
        )
    if not isinstance(config, Mapping) or "model" not in config:
        raise DiffTumorInputError(
            f"{path} has no hyper_parameters['cfg'] with a 'model' section",
            "pass the Lightning checkpoint AutoencoderModel.ckpt as released",
        )
    return OriginalAutoencoder(state_dict=dict(state_dict), config=dict(config))


_SCHEDULE_KEYS = ("betas", "alphas_cumprod", "alphas_cumprod_prev")


def read_diffusion_checkpoint(path: str | os.PathLike, use_ema: bool = True) -> OriginalDiffusion:
    """Read a released diffusion checkpoint, taking the ``ema`` weights (default) or the online ``model`` weights."""
    checkpoint = load_checkpoint_safely(path)
    which = "ema" if use_ema else "model"
    weights = checkpoint.get(which)
    if not isinstance(weights, Mapping) or not any(k.startswith("denoise_fn.") for k in weights):
        raise DiffTumorInputError(
            f"{path} is not a DiffTumor diffusion checkpoint (no '{which}' dict with denoise_fn.* weights)",
            "pass a released {organ}_{early,noearly}.pt to --diffusion",
        )
    unet = {k[len("denoise_fn.") :]: v for k, v in weights.items() if k.startswith("denoise_fn.")}
    vqgan = {k[len("vqgan.") :]: v for k, v in weights.items() if k.startswith("vqgan.")} or None
    schedule = {k: v for k, v in weights.items() if "." not in k}
    if not all(key in schedule for key in _SCHEDULE_KEYS):
        raise DiffTumorInputError(
            f"{path} lacks the diffusion schedule buffers (betas, alphas_cumprod, ...)",
            "pass a released {organ}_{early,noearly}.pt to --diffusion",
        )
    step = checkpoint.get("step")
    return OriginalDiffusion(
        unet_state_dict=unet,
        vqgan_state_dict=vqgan,
        schedule=schedule,
        num_train_timesteps=int(schedule["betas"].shape[0]),
        step=int(step) if isinstance(step, int) else None,
    )


__all__ = [
    "OriginalAutoencoder",
    "OriginalDiffusion",
    "load_checkpoint_safely",
    "read_autoencoder_checkpoint",
    "read_diffusion_checkpoint",
    "to_plain",
]
