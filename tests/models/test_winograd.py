"""Depth-axis Winograd F(4, 3) computes the 3×3×3 convolution: exactly in float64, within its rounding in float32."""

from __future__ import annotations

import pytest
import torch

from difftumor.models.winograd import conv3d_depth_winograd, supports_depth_winograd


def _layer(bias: bool, in_channels: int = 6, out_channels: int = 5) -> torch.nn.Conv3d:
    torch.manual_seed(0)
    return torch.nn.Conv3d(in_channels, out_channels, 3, bias=bias)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("accumulate", [True, False])
def test_equals_the_direct_convolution_in_float64(bias, accumulate):
    conv = _layer(bias).double()
    padded = torch.randn(2, 6, 12 + 2, 7, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last_3d)
    start = torch.randn(2, 5, 12, 5, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last_3d)
    out = start.clone()
    with torch.no_grad():
        conv3d_depth_winograd(conv, padded, out, accumulate=accumulate)
        expected = conv(padded) + (start if accumulate else 0)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_writes_into_a_depth_slice_of_a_larger_volume_only():
    conv = _layer(True)
    volume = torch.zeros(1, 5, 20, 5, 7).contiguous(memory_format=torch.channels_last_3d)
    padded = torch.randn(1, 6, 8 + 2, 7, 9).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        conv3d_depth_winograd(conv, padded, volume[:, :, 4:12])
        expected = conv(padded)
    assert volume[:, :, :4].abs().max() == 0 and volume[:, :, 12:].abs().max() == 0
    torch.testing.assert_close(volume[:, :, 4:12], expected, rtol=0, atol=1e-5)


def test_float32_rounding_stays_within_a_small_multiple_of_the_direct_convolution():
    conv = _layer(True, 32, 32)
    padded = torch.randn(1, 32, 16 + 2, 18, 18).contiguous(memory_format=torch.channels_last_3d)
    out = torch.empty(1, 32, 16, 16, 16).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        conv3d_depth_winograd(conv, padded, out)
        direct = conv(padded)
        exact = conv.double()(padded.double())
    winograd_error, direct_error = (out - exact).abs().max().item(), (direct - exact).abs().max().item()
    assert winograd_error <= 10 * direct_error  # measured 2-3x at unit-variance weights, 6x at the default init


def test_kernels_follow_weight_updates():
    conv = _layer(True)
    padded = torch.randn(1, 6, 4 + 2, 7, 9).contiguous(memory_format=torch.channels_last_3d)
    out = torch.empty(1, 5, 4, 5, 7).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        conv3d_depth_winograd(conv, padded, out)
        conv.weight.mul_(2)  # an in-place update (optimizer step, load_state_dict) must not leave stale kernels
        conv3d_depth_winograd(conv, padded, out)
        expected = conv(padded)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
        conv.weight.data = conv.weight.flip(0).clone()  # a storage swap bumps no version counter
        conv3d_depth_winograd(conv, padded, out)
        expected = conv(padded)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_refuses_what_it_cannot_compute():
    conv = _layer(True)
    x = torch.randn(1, 6, 8, 7, 9)
    assert supports_depth_winograd(conv, x)
    assert not supports_depth_winograd(conv, x.bfloat16())
    assert not supports_depth_winograd(torch.nn.Conv3d(6, 5, 3, stride=2), x)
    assert not supports_depth_winograd(torch.nn.Conv3d(6, 5, 3, padding=1), x)
    assert not supports_depth_winograd(torch.nn.Conv3d(6, 5, (1, 3, 3)), x)
    with pytest.raises(ValueError, match="multiple of 4"):
        conv3d_depth_winograd(conv, torch.randn(1, 6, 5 + 2, 7, 9), torch.empty(1, 5, 5, 5, 7))
