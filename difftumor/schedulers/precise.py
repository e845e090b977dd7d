"""diffusers schedulers whose cumulative ᾱ is accumulated in float64 from ``trained_betas``.

diffusers computes ``ᾱ = cumprod(1 − β)`` in float32. With DiffTumor's last beta of 0.9999, ``1 − β`` in float32 is
1.00017e-4 instead of 1e-4, so ᾱ at the last step is 1.7e-4 off and the 4-step sampler drifts past the parity
tolerance. The original computes the schedule in float64 and stores it in float32; these subclasses do the same.
Everything else (config, ``from_config`` swapping, ``step``) is the parent class untouched: every parent derives its
sigmas/alphas from the one ``self.alphas_cumprod`` assignment in ``__init__``, which is where the correction happens.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    SchedulerMixin,
    UniPCMultistepScheduler,
)

# DiffusionPipeline.from_pretrained finds the loading method of a third-party component by looking its base class
# names (``SchedulerMixin``, ``ModelMixin``...) up in the component's module, so the name must live here.
__all__ = ["SchedulerMixin"]


class Float64AlphasCumprodMixin:
    """Replace the float32 ``alphas_cumprod`` computed by the parent ``__init__`` by the float64 product of the
    configured ``trained_betas`` (cast to the parent's dtype). Later assignments (device moves) are kept as given."""

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas_cumprod

    @alphas_cumprod.setter
    def alphas_cumprod(self, value: torch.Tensor) -> None:
        betas = self.config.get("trained_betas") if hasattr(self, "config") else None
        if betas is not None and not hasattr(self, "_alphas_cumprod"):
            exact = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
            value = torch.from_numpy(exact).to(dtype=value.dtype, device=value.device)
        self._alphas_cumprod = value


class PreciseDDPMScheduler(Float64AlphasCumprodMixin, DDPMScheduler):
    """:class:`diffusers.DDPMScheduler` with ᾱ accumulated in float64 from ``trained_betas``."""


class PreciseDDIMScheduler(Float64AlphasCumprodMixin, DDIMScheduler):
    """:class:`diffusers.DDIMScheduler` with ᾱ accumulated in float64 from ``trained_betas``."""


class PreciseDPMSolverMultistepScheduler(Float64AlphasCumprodMixin, DPMSolverMultistepScheduler):
    """:class:`diffusers.DPMSolverMultistepScheduler` with ᾱ accumulated in float64 from ``trained_betas``."""


class PreciseUniPCMultistepScheduler(Float64AlphasCumprodMixin, UniPCMultistepScheduler):
    """:class:`diffusers.UniPCMultistepScheduler` with ᾱ accumulated in float64 from ``trained_betas``."""


class PreciseEulerDiscreteScheduler(Float64AlphasCumprodMixin, EulerDiscreteScheduler):
    """:class:`diffusers.EulerDiscreteScheduler` with ᾱ accumulated in float64 from ``trained_betas``."""


class PreciseHeunDiscreteScheduler(Float64AlphasCumprodMixin, HeunDiscreteScheduler):
    """:class:`diffusers.HeunDiscreteScheduler` with ᾱ accumulated in float64 from ``trained_betas``."""


__all__ += [name for name in dict(globals()) if name.startswith("Precise")]
