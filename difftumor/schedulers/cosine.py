"""DiffTumor's cosine noise schedule (Nichol & Dhariwal, s = 0.008), computed in float64 like the original."""

from __future__ import annotations

import math

import numpy as np


def difftumor_cosine_betas(num_train_timesteps: int, s: float = 0.008, max_beta: float = 0.9999) -> np.ndarray:
    """``β_t = clip(1 − ᾱ_t / ᾱ_{t−1}, 0, max_beta)`` with ``ᾱ(x) = cos²((x/T + s) / (1 + s) · π/2)``, in float64.

    For ``T = 4`` this gives ``[0.152988, 0.416958, 0.707859, 0.9999]``.
    """
    if num_train_timesteps < 1:
        raise ValueError(f"num_train_timesteps must be positive, got {num_train_timesteps}")
    steps = np.linspace(0, num_train_timesteps, num_train_timesteps + 1, dtype=np.float64)
    alphas_cumprod = np.cos(((steps / num_train_timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    betas = 1 - (alphas_cumprod[1:] / alphas_cumprod[:-1])
    return np.clip(betas, 0, max_beta)


def difftumor_alphas_cumprod(num_train_timesteps: int) -> np.ndarray:
    """``ᾱ_t = Π (1 − β)`` of :func:`difftumor_cosine_betas`, in float64."""
    return np.cumprod(1.0 - difftumor_cosine_betas(num_train_timesteps))
