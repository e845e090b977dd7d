"""Registry of diffusers schedulers safe for DiffTumor latents, and DiffTumor's cosine noise schedule."""

from .cosine import difftumor_alphas_cumprod, difftumor_cosine_betas
from .precise import (
    PreciseDDIMScheduler,
    PreciseDDPMScheduler,
    PreciseDPMSolverMultistepScheduler,
    PreciseEulerDiscreteScheduler,
    PreciseHeunDiscreteScheduler,
    PreciseUniPCMultistepScheduler,
)
from .registry import available_schedulers, default_sampling, make_scheduler

__all__ = [
    "PreciseDDIMScheduler",
    "PreciseDDPMScheduler",
    "PreciseDPMSolverMultistepScheduler",
    "PreciseEulerDiscreteScheduler",
    "PreciseHeunDiscreteScheduler",
    "PreciseUniPCMultistepScheduler",
    "available_schedulers",
    "default_sampling",
    "difftumor_alphas_cumprod",
    "difftumor_cosine_betas",
    "make_scheduler",
]
