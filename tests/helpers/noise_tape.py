"""Replay recorded noise in diffusers' DDPM step (the original draws its ancestral noise with torch.randn_like)."""

from __future__ import annotations

import contextlib
from unittest import mock

import diffusers.schedulers.scheduling_ddpm as scheduling_ddpm


@contextlib.contextmanager
def replay_ddpm_noise(noises):
    """Make every ``randn_tensor`` call inside ``DDPMScheduler.step`` return the next tensor of ``noises``."""
    tape = list(noises)

    def next_noise(shape, generator=None, device=None, dtype=None, **kwargs):
        noise = tape.pop(0)
        assert tuple(noise.shape) == tuple(shape)
        return noise.to(device=device, dtype=dtype)

    with mock.patch.object(scheduling_ddpm, "randn_tensor", next_noise):
        yield tape
