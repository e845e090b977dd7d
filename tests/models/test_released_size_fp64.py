"""Released-size models in float32 (the fast channels-last path) against the same weights in float64.

The released VQ-GAN and UNet configurations (the defaults of VQModel3D and UNet3DInpaintModel) with seeded random
weights, on a 32 × 64 × 64 window-scaled crop of real CT (an 8 × 16 × 16 latent): small enough for a float64
reference in CI, large enough to expose a layout-dependent GroupNorm error (PyTorch's channels-last CPU kernel is
1.7e-4 off at 64 channels × 48³ and 2e-3 at 96³, above the 1e-4 parity tolerance).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from difftumor import UNet3DInpaintModel, VQModel3D
from difftumor.assets import DEMO_CASE
from difftumor.models.normalization import accurate_group_norm
from difftumor.pipelines.tumor_inpaint.pipeline_tumor_inpaint import reproducible_float32
from difftumor.schedulers import make_scheduler
from difftumor.windowing import to_window
from tests.conftest import DEVICE

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def crop() -> torch.Tensor:
    ct = np.asanyarray(nib.load(str(DEMO_CASE / "ct.nii.gz")).dataobj).astype(np.float32)
    box = ct[30:94, 20:84, 50:82].transpose(2, 0, 1)  # (D, H, W) = (z, x, y), as the models take it
    return to_window(torch.from_numpy(np.ascontiguousarray(box))[None, None])


@pytest.mark.parametrize(("channels", "size", "groups"), [(16, 96, 16), (32, 48, 32), (64, 48, 32), (128, 24, 32)])
def test_group_norm_is_accurate_in_channels_last(channels, size, groups):
    generator = torch.Generator().manual_seed(channels)
    x = torch.randn(1, channels, size, size, size, generator=generator) * 3 + 5
    weight, bias = torch.randn(channels, generator=generator), torch.randn(channels, generator=generator)
    reference = torch.nn.functional.group_norm(x.double(), groups, weight.double(), bias.double(), 1e-6)
    fast = accurate_group_norm(x.contiguous(memory_format=torch.channels_last_3d), groups, weight, bias, 1e-6)
    assert fast.is_contiguous(memory_format=torch.channels_last_3d)
    assert (fast.double() - reference).abs().max() < 1e-5


@pytest.mark.slow
def test_released_size_encode_decode_unet_and_loop_match_float64(crop):
    """float32 on :data:`DEVICE` (without TF32 on a GPU, as the pipeline runs its models) against float64 on the CPU."""
    torch.manual_seed(0)
    vq32 = VQModel3D().eval()
    unet32 = UNet3DInpaintModel().eval()
    vq64 = VQModel3D.from_config(vq32.config).eval().double()
    vq64.load_state_dict(vq32.state_dict())
    unet64 = UNet3DInpaintModel.from_config(unet32.config).eval().double()
    unet64.load_state_dict(unet32.state_dict())
    vq32, unet32 = vq32.to(DEVICE), unet32.to(DEVICE)
    with torch.no_grad(), reproducible_float32(DEVICE):
        latents32 = vq32.encode(crop.to(DEVICE)).latents.cpu()
        latents64 = vq64.encode(crop.double()).latents
        assert (latents32.double() - latents64).abs().max() < TOLERANCE
        decoded32 = vq32.decode(latents32.to(DEVICE), force_not_quantize=True).sample.cpu()
        decoded64 = vq64.decode(latents64, force_not_quantize=True).sample
        assert (decoded32.double() - decoded64).abs().max() < TOLERANCE

        generator = torch.Generator().manual_seed(1)
        condition = torch.cat([latents32.clamp(-1, 1), torch.ones_like(latents32[:, :1])], dim=1)
        sample32 = torch.randn(latents32.shape, generator=generator)
        sample64 = sample32.double()
        scheduler = make_scheduler("ddim", 4)  # deterministic: both paths take the same steps
        scheduler.set_timesteps(4)
        unet_error = 0.0
        for t in scheduler.timesteps:
            out32 = unet32(sample32.to(DEVICE), t, condition.to(DEVICE)).sample.cpu()
            out64 = unet64(sample64, t, condition.double()).sample
            unet_error = max(unet_error, (out32.double() - out64).abs().max().item())
            assert unet_error < TOLERANCE
            sample32 = scheduler.step(out32, t, sample32).prev_sample
            sample64 = scheduler.step(out64, t, sample64).prev_sample
        # The loop itself is ill-conditioned, in any precision and in the original alike: the first step predicts
        # x0 = (x − √(1−ᾱ)·ε̂)/√ᾱ with ᾱ_3 = 1.4e-5 at T = 4, a gain of 1/√ᾱ_3 ≈ 263 on any error in ε̂. So the
        # bound is that gain times the UNet's own error (measured: 3e-6 -> 4.7e-4 after four steps), not 1e-4.
        gain = float(scheduler.alphas_cumprod[int(scheduler.timesteps[0])]) ** -0.5
        assert (sample32.double() - sample64).abs().max() < TOLERANCE + 2 * gain * unet_error
