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


class ClippedSigmaStepMixin:
    """Clip the predicted clean latent x̂0 to ``[-clip_range, clip_range]`` before a σ-space (Euler/Heun) step.

    The ancestral DDPM of the original clamps x̂0 at every step; diffusers' Euler and Heun have no such option. With
    DiffTumor's cosine schedule the first σ at small T is in the hundreds, so one unclipped step from there puts the
    latents far outside the codebook's range (−43…31 at T = 4, a tumour of −106 HU). The model output is rewritten
    into the one whose x̂0 is the clipped x̂0 (for ε-, x0- and v-prediction alike) and handed to the parent's step, so
    the step itself — derivative, dt, Heun's correction — is diffusers' own.
    """

    clip_range: float = 1.0

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, *args, **kwargs):
        if self.step_index is None:
            self._init_step_index(timestep)
        # The σ the parent turns the output into x̂0 with: Euler's σ̂ = σ (difftumor never sets s_churn); Heun's σ on
        # its first stage and σ_next on its second, which are both sigmas[step_index] (the index advances per call).
        sigma = self.sigmas[self.step_index].to(sample.device, torch.float32)
        kind = self.config.prediction_type
        if kind in ("sample", "original_sample"):
            model_output = model_output.clamp(-self.clip_range, self.clip_range)
        elif float(sigma) > 0:
            sample32, output32 = sample.to(torch.float32), model_output.to(torch.float32)
            if kind == "epsilon":
                x0 = (sample32 - sigma * output32).clamp(-self.clip_range, self.clip_range)
                output32 = (sample32 - x0) / sigma
            elif kind == "v_prediction":
                c_out, c_skip = -sigma / (sigma**2 + 1) ** 0.5, 1 / (sigma**2 + 1)
                x0 = (output32 * c_out + sample32 * c_skip).clamp(-self.clip_range, self.clip_range)
                output32 = (x0 - sample32 * c_skip) / c_out
            model_output = output32.to(model_output.dtype)
        return super().step(model_output, timestep, sample, *args, **kwargs)


class PreciseEulerDiscreteScheduler(ClippedSigmaStepMixin, Float64AlphasCumprodMixin, EulerDiscreteScheduler):
    """:class:`diffusers.EulerDiscreteScheduler` with ᾱ accumulated in float64 and x̂0 clipped to [-1, 1]."""


class PreciseHeunDiscreteScheduler(ClippedSigmaStepMixin, Float64AlphasCumprodMixin, HeunDiscreteScheduler):
    """:class:`diffusers.HeunDiscreteScheduler` with ᾱ accumulated in float64 and x̂0 clipped to [-1, 1]."""


__all__ += [name for name in dict(globals()) if name.startswith("Precise")]
