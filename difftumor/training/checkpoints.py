"""Training checkpoints: what one may hold, and how it is checked before anything in it is loaded.

Nothing in a checkpoint can run code when it is loaded: weights are safetensors, extra state (the EMA copy) is
safetensors + JSON (:func:`save_plain_state`) instead of Accelerate's pickled custom objects, and the files Accelerate
pickles (optimiser, learning-rate schedule, RNG states) are first checked against the SHA-256 recorded when they were
written and opened with PyTorch's allow-listed ``weights_only`` unpickler (:func:`verify_checkpoint`). A modified,
unexpected or unreadable file is an error naming it, never a silent partial resume.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import DiffTumorInputError

#: A checkpoint folder's name: ``step_<N>``.
CHECKPOINT_FOLDER = re.compile(r"^step_(\d+)$")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


# What Accelerate's save_state and TrainingRun write into a checkpoint; anything else is refused on resume.
_CHECKPOINT_FILE = re.compile(
    r"^(model(_\d+)?\.safetensors|(optimizer|scheduler|sampler|dl_state_dict)(_\d+)?\.bin|scaler\.pt"
    r"|random_states_\d+\.pkl|state_\w+\.(safetensors|json)|trainer_state\.json|COMPLETE)$"
)
_RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")


def broken_checkpoint(path: Path, error: BaseException | str) -> DiffTumorInputError:
    """The one-line refusal of a checkpoint that cannot be resumed safely, naming the file and the problem."""
    text = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
    return DiffTumorInputError(
        f"checkpoint {path} cannot be resumed safely ({text})",
        "it was modified or is damaged: delete that checkpoint folder to resume from an earlier one, or start anew",
    )


def verify_checkpoint(folder: Path, process_index: int = 0) -> dict[str, Any]:
    """Check a checkpoint before anything in it is loaded; returns ``trainer_state.json``.

    Every file must be one difftumor writes and have the SHA-256 recorded at save time; pickled files (optimiser,
    schedule, RNG states) must open with the allow-listed ``weights_only`` unpickler; this process's RNG state must
    be complete. Raises :class:`DiffTumorInputError` naming the first problem.
    """
    from accelerate.utils import load as accelerate_load
    from safetensors.torch import load_file

    try:
        state = json.loads((folder / "trainer_state.json").read_text())
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step {step!r}")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise broken_checkpoint(folder / "trainer_state.json", error) from None
    recorded = state.get("files")
    match = CHECKPOINT_FOLDER.match(folder.name)
    if not isinstance(recorded, dict) or (match is not None and int(match.group(1)) != step):
        raise broken_checkpoint(folder / "trainer_state.json", "its record of the saved files or step is wrong")
    for path in sorted(folder.iterdir()):
        if not path.is_file() or not _CHECKPOINT_FILE.match(path.name):
            raise broken_checkpoint(path, "difftumor never writes this file into a checkpoint")
        if path.name in ("trainer_state.json", "COMPLETE"):
            continue
        if recorded.get(path.name) != file_sha256(path):
            raise broken_checkpoint(path, "its content differs from what was saved")
        try:  # reading them whole is what the load will do anyway; a damaged file fails here, before any write
            if path.suffix == ".safetensors":
                load_file(str(path))
            elif path.name.startswith("state_"):
                load_plain_state(folder, path.stem)
        except Exception as error:  # noqa: BLE001 — safetensors and json raise their own error types
            raise broken_checkpoint(path, error) from None
        if path.suffix in (".bin", ".pkl", ".pt"):
            try:
                with warnings.catch_warnings():  # torch warns about the pickle protocol: not the user's business
                    warnings.simplefilter("ignore")
                    content = accelerate_load(path, map_location="cpu")
            except pickle.UnpicklingError as error:  # the allow-list refused it: never fall back to full pickle
                refused = re.search(r"Unsupported global: GLOBAL [\w.]+", str(error))
                reason = refused.group(0) if refused else "an object outside the allow-list"
                raise broken_checkpoint(path, f"the weights-only unpickler refused {reason}") from None
            except Exception as error:  # noqa: BLE001 — torch raises many types for damaged files
                raise broken_checkpoint(path, error) from None
            if path.name.startswith("random_states_") and not (
                isinstance(content, dict) and all(key in content for key in _RNG_KEYS)
            ):
                raise broken_checkpoint(path, "it does not hold the random states")
    missing = sorted(name for name in recorded if not (folder / name).is_file())
    if missing:
        raise broken_checkpoint(folder / missing[0], "the file is missing")
    rng = folder / f"random_states_{process_index}.pkl"
    if not rng.is_file():
        raise broken_checkpoint(rng, "the random states of this process are missing (resume with as many processes)")
    return state


def save_plain_state(state: dict[str, Any], folder: Path, name: str) -> None:
    """Write a state dict of tensors, lists of tensors and JSON scalars as ``<name>.safetensors`` + ``<name>.json``."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, Any] = {"scalars": {}, "tensor_lists": {}, "tensors": []}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[key] = value
            layout["tensors"].append(key)
        elif isinstance(value, (list, tuple)) and all(isinstance(item, torch.Tensor) for item in value):
            for index, item in enumerate(value):
                tensors[f"{key}.{index}"] = item
            layout["tensor_lists"][key] = len(value)
        elif value is None or isinstance(value, (bool, int, float, str)):
            layout["scalars"][key] = value
        else:
            raise TypeError(f"state {name}: {key} of type {type(value).__name__} cannot be saved without pickle")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(layout, indent=1))


def load_plain_state(folder: Path, name: str) -> dict[str, Any]:
    """Read what :func:`save_plain_state` wrote; raises ``ValueError`` when the two files do not agree."""
    from safetensors.torch import load_file

    layout = json.loads((folder / f"{name}.json").read_text())
    tensors = load_file(str(folder / f"{name}.safetensors"))
    expected = set(layout["tensors"])
    for key, length in layout["tensor_lists"].items():
        expected |= {f"{key}.{index}" for index in range(length)}
    if expected != set(tensors):
        raise ValueError(f"{name}.safetensors and {name}.json do not match")
    state: dict[str, Any] = dict(layout["scalars"])
    for key in layout["tensors"]:
        state[key] = tensors[key]
    for key, length in layout["tensor_lists"].items():
        state[key] = [tensors[f"{key}.{index}"] for index in range(length)]
    return state
