"""Samplers that are safe for DiffTumor's ε-prediction latent models, looked up by name.

Safe means: they run at DiffTumor's small ``T`` (4 for early tumours) without duplicate timesteps or index errors,
and they interpret an ε (or x0/v) prediction on the DDPM noise schedule the models were trained with. PNDM (broken
at small T and inaccurate), LCM (needs a consistency-distilled model) and flow-matching schedulers (a different
forward process) are deliberately absent. Third-party packages can add samplers through the entry-point group
``difftumor.schedulers`` (name -> a callable ``(config: dict) -> scheduler``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from diffusers import SchedulerMixin

from ..errors import DiffTumorInputError
from ..limits import check_train_timesteps
from .cosine import difftumor_cosine_betas
from .precise import (
    PreciseDDIMScheduler,
    PreciseDDPMScheduler,
    PreciseDPMSolverMultistepScheduler,
    PreciseEulerDiscreteScheduler,
    PreciseHeunDiscreteScheduler,
    PreciseUniPCMultistepScheduler,
)

logger = logging.getLogger(__name__)

# Below this many training steps the original's DDIM convention breaks (t = T at full steps, t = 1 as the only step,
# a final ᾱ_0 far from 1); see _ddim.
_ORIGINAL_DDIM_SPACING_MIN_T = 20

_UNSAFE = {
    "pndm": "PNDM's Runge-Kutta warm-up breaks at small T and is inaccurate for these models",
    "lcm": "LCM needs a consistency-distilled model",
    "flow": "flow-matching schedulers assume a different forward process than DDPM-trained models",
    "flowmatch": "flow-matching schedulers assume a different forward process than DDPM-trained models",
}
# The same, by the scheduler class a pipeline may be handed directly (``X.from_config(pipe.scheduler.config)``).
_UNSAFE_CLASSES = {"PNDMScheduler": "pndm", "LCMScheduler": "lcm", "FlowMatch": "flowmatch"}

# Samplers that need more training steps than the early-tumour models have. Heun's second-order correction across
# DiffTumor's few, huge σ steps overshoots even with x̂0 clipped (a tumour of −32 HU where the other samplers give
# 54 ± 3 HU on the bundled pipeline at T = 4).
_MIN_TRAIN_STEPS = {"heun": 20}
_MIN_TRAIN_STEPS_CLASSES = {"Heun": "heun"}

_ALIASES = {
    "dpmsolver++": "dpm++",
    "dpm-solver++": "dpm++",
    "dpmpp": "dpm++",
    "uni_pc": "unipc",
    "euler_discrete": "euler",
}


def _ddpm(common: dict[str, Any], train_steps: int) -> SchedulerMixin:
    # The original clamps x̂0 to [-1, 1] in its ancestral loop.
    return PreciseDDPMScheduler(
        **common, clip_sample=True, clip_sample_range=1.0, variance_type="fixed_small", timestep_spacing="trailing"
    )


def _ddim(common: dict[str, Any], train_steps: int) -> SchedulerMixin:
    # The original DDIM does not clip, visits arange(0, T, T // S) + 1 in reverse (diffusers' "leading" spacing with
    # steps_offset=1) and ends on ᾱ_0 rather than 1, leaving noise of std √(1 − ᾱ_0) (0.016 at T = 200). At small T
    # that convention breaks (ᾱ_0 = 0.85 at T = 4), so there the trajectory starts at T − 1 and ends on a clean x0.
    # At small T it also clips x̂0 to [-1, 1] like the original's DDPM: its first step starts from σ in the hundreds,
    # and one unclipped deterministic step from there leaves the codebook's range (−43…31 at T = 4).
    if train_steps >= _ORIGINAL_DDIM_SPACING_MIN_T:
        convention = {"timestep_spacing": "leading", "steps_offset": 1, "set_alpha_to_one": False, "clip_sample": False}
    else:
        convention = {"timestep_spacing": "trailing", "steps_offset": 0, "set_alpha_to_one": True, "clip_sample": True}
    return PreciseDDIMScheduler(**common, clip_sample_range=1.0, **convention)


def _dpm(common: dict[str, Any], train_steps: int) -> SchedulerMixin:
    # Thresholding with sample_max_value=1 is a static clip of x̂0 to [-1, 1], as in the DDPM path.
    return PreciseDPMSolverMultistepScheduler(
        **common,
        algorithm_type="dpmsolver++",
        solver_order=2,
        thresholding=True,
        sample_max_value=1.0,
        timestep_spacing="trailing",
    )


def _unipc(common: dict[str, Any], train_steps: int) -> SchedulerMixin:
    return PreciseUniPCMultistepScheduler(
        **common, thresholding=True, sample_max_value=1.0, timestep_spacing="trailing"
    )


def _euler(common: dict[str, Any], train_steps: int) -> SchedulerMixin:
    return PreciseEulerDiscreteScheduler(**common, timestep_spacing="trailing")


def _heun(common: dict[str, Any], train_steps: int) -> SchedulerMixin:
    return PreciseHeunDiscreteScheduler(**common, timestep_spacing="trailing")


_BUILTIN: dict[str, Callable[[dict[str, Any], int], SchedulerMixin]] = {
    "ddpm": _ddpm,
    "ddim": _ddim,
    "dpm++": _dpm,
    "unipc": _unipc,
    "euler": _euler,
    "heun": _heun,
}


#: Up to this many training steps a model is sampled with every step of ancestral DDPM (the original's early-tumour
#: models, T = 4); longer schedules with 50 DDIM steps (the original's mid/late models, T = 200).
_FULL_DDPM_MAX_T = 10
_DDIM_STEPS = 50


def default_sampling(train_steps: int) -> tuple[str, int]:
    """The sampler name and step count a model trained with ``train_steps`` steps is stored with, as the original
    samples it: ``("ddpm", T)`` for ``T <= 10``, else ``("ddim", 50)``. Used by training and conversion alike."""
    return ("ddpm", train_steps) if train_steps <= _FULL_DDPM_MAX_T else ("ddim", _DDIM_STEPS)


def _plugins() -> dict[str, Any]:
    return {entry.name.lower(): entry for entry in entry_points(group="difftumor.schedulers")}


def refusal(name: str, train_steps: int) -> str | None:
    """Why sampler ``name`` (a registry name or a scheduler class name) must not sample a model trained with
    ``train_steps`` steps, or ``None`` when it may. The one place both :func:`make_scheduler` and the pipeline ask."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    for fragment, registry_name in _UNSAFE_CLASSES.items():
        if fragment in name:
            key = registry_name
    if key in _UNSAFE:
        return _UNSAFE[key]
    for fragment, registry_name in _MIN_TRAIN_STEPS_CLASSES.items():
        if fragment in name:
            key = registry_name
    minimum = _MIN_TRAIN_STEPS.get(key)
    if minimum is not None and train_steps < minimum:
        return f"{key} needs a model trained with T >= {minimum} steps (this one has T = {train_steps})"
    return None


def safe_schedulers(train_steps: int) -> list[str]:
    """The registry's samplers that may sample a model trained with ``train_steps`` steps."""
    return [name for name in available_schedulers() if refusal(name, train_steps) is None]


#: Stock diffusers scheduler classes of the families difftumor samples with (and the precise subclasses of them):
#: adopted, i.e. rebuilt by :func:`make_scheduler` from their config. Every other class is refused.
_FAMILIES = {
    "DDPMScheduler": "ddpm",
    "DDIMScheduler": "ddim",
    "DPMSolverMultistepScheduler": "dpm++",
    "UniPCMultistepScheduler": "unipc",
    "EulerDiscreteScheduler": "euler",
    "HeunDiscreteScheduler": "heun",
}
#: Set on every scheduler :func:`make_scheduler` builds (and on those a pipeline loads from its own folder): it
#: carries DiffTumor's settings and is used as it is.
SAMPLER_MARK = "_difftumor_sampler"


def adopt_scheduler(scheduler: Any) -> SchedulerMixin:
    """The scheduler a pipeline samples with when handed ``scheduler``.

    A scheduler from :func:`make_scheduler` (or loaded with a pipeline) is returned as it is. A stock diffusers
    scheduler of a supported family — e.g. ``DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)``, the
    diffusers way of swapping samplers — is rebuilt by :func:`make_scheduler` from its config (training steps, betas,
    prediction type) with the settings DiffTumor's latents need: x̂0 clipped to the codebook's range, ᾱ accumulated in
    float64, trailing timesteps; its own other settings (solver order, spacing) are replaced. Without them the stock
    samplers leave the codebook's range at T = 4 (latents in ±32, tumours 60 HU darker).

    Raises:
        DiffTumorInputError: any other scheduler class, naming what works.
    """
    if getattr(scheduler, SAMPLER_MARK, None):
        return scheduler
    name = type(scheduler).__name__
    family = _FAMILIES.get(name.removeprefix("Precise"))
    if family is None:
        reason = refusal(name, int(getattr(scheduler, "config", {}).get("num_train_timesteps", 1000)))
        raise DiffTumorInputError(
            f"scheduler {name} is not one difftumor samples its models with" + (f" ({reason})" if reason else ""),
            "swap samplers with difftumor.schedulers.make_scheduler(name, pipe.scheduler.config), name one of "
            + ", ".join(available_schedulers()),
        )
    logger.info("sampling with %s rebuilt as difftumor's %r (x̂0 clipped, float64 ᾱ, trailing steps)", name, family)
    return make_scheduler(family, dict(scheduler.config))


def available_schedulers() -> list[str]:
    """Names accepted by :func:`make_scheduler` (built-in and installed through entry points)."""
    return sorted(set(_BUILTIN) | set(_plugins()))


def make_scheduler(name: str, config: Mapping[str, Any] | int) -> SchedulerMixin:
    """Create a sampler configured for a DiffTumor diffusion model.

    Args:
        name: one of :func:`available_schedulers` (``ddpm``, ``ddim``, ``dpm++``, ``unipc``, ``euler``, ``heun``).
        config: the number of training steps ``T``, or a mapping with ``num_train_timesteps`` and optionally
            ``prediction_type`` (default ``"epsilon"``) and ``trained_betas`` — for instance the ``config`` of the
            pipeline's current scheduler. Without ``trained_betas``, DiffTumor's cosine schedule for ``T`` is used.

    Returns:
        A diffusers scheduler (ᾱ accumulated in float64) ready for ``set_timesteps``.

    Raises:
        DiffTumorInputError: for an unknown or unsafe name, or a config without ``num_train_timesteps``.
    """
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    supported = ", ".join(available_schedulers())
    if isinstance(config, int):
        config = {"num_train_timesteps": config}
    if "num_train_timesteps" not in config:
        raise DiffTumorInputError(
            "scheduler config lacks num_train_timesteps", "pass T or the pipeline's scheduler.config"
        )
    check_train_timesteps(config["num_train_timesteps"], "the scheduler config")
    train_steps = int(config["num_train_timesteps"])
    reason = refusal(key, train_steps)
    if reason is not None:
        raise DiffTumorInputError(
            f"scheduler {name!r} is not safe here: {reason}", f"choose one of {', '.join(safe_schedulers(train_steps))}"
        )
    betas = config.get("trained_betas")
    common = {
        "num_train_timesteps": train_steps,
        "trained_betas": [float(b) for b in betas]
        if betas is not None
        else difftumor_cosine_betas(train_steps).tolist(),
        "prediction_type": config.get("prediction_type", "epsilon"),
    }
    if key in _BUILTIN:
        scheduler = _BUILTIN[key](common, train_steps)
    elif key in _plugins():
        scheduler = _plugins()[key].load()(common)
    else:
        raise DiffTumorInputError(f"unknown scheduler {name!r}", f"choose one of {supported}")
    setattr(scheduler, SAMPLER_MARK, key)
    return scheduler
