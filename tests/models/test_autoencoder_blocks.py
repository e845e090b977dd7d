"""The inference path of the residual block (slab by slab, in place) computes what the autograd path computes."""

from __future__ import annotations

import pytest
import torch

from difftumor.models import autoencoder_blocks_3d
from difftumor.models.autoencoder_blocks_3d import ResnetBlock3D


@pytest.mark.parametrize("depth", [5, 8, 18, 20])
def test_in_place_slabs_match_the_autograd_path(monkeypatch, depth):
    # 8-plane slabs over 20 planes: two full slabs and a short last one, so both volume ends and inner halos occur;
    # 5 planes is not a multiple of the Winograd group and takes the direct convolution; 18 ends with a direct
    # 2-plane slab after two Winograd ones.
    monkeypatch.setattr(autoencoder_blocks_3d, "_SLAB_PLANES", 8)
    torch.manual_seed(0)
    block = ResnetBlock3D(32).eval()
    for parameter in block.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    x = (torch.randn(2, 32, depth, 6, 7) * 3 + 1).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        exact = block.double()(x.double())
        block.float()
        direct = block(x.clone())
        owned = x.clone()
        result = block.forward_in_place_(owned)
    assert result.data_ptr() == owned.data_ptr()  # written into the caller's tensor, no new activation
    # Winograd's transforms round about 3x more than the direct convolution (module docstring): bound the slab
    # path's error against float64 by the direct path's, and both by float32 accumulation over 864 products.
    direct_error, slab_error = (direct - exact).abs().max().item(), (result - exact).abs().max().item()
    assert direct_error < 1e-6 * exact.abs().max().item()
    assert slab_error <= 10 * direct_error  # measured 1-2.2x here, up to 6x for other weights (test_winograd.py)
    if depth == 5:  # direct convolution on every slab: the same arithmetic as the autograd path
        torch.testing.assert_close(result, direct, rtol=0, atol=2e-6)


@pytest.mark.parametrize("mode", ["replicate", "reflect", "constant"])
def test_padding_filled_in_place_equals_f_pad(mode):
    inside = torch.randn(2, 3, 5, 6, 7)
    pads = (1, 2, 2, 1, 1, 0)
    expected = torch.nn.functional.pad(inside, pads, mode=mode)
    padded = torch.full_like(expected, float("nan")).contiguous(memory_format=torch.channels_last_3d)
    padded[:, :, 1:6, 2:8, 1:8] = inside
    autoencoder_blocks_3d._fill_padding_(padded, pads, mode)
    assert torch.equal(padded, expected)


def test_in_place_path_is_not_taken_when_gradients_are_needed():
    block = ResnetBlock3D(32)
    x = torch.randn(1, 32, 4, 4, 4).contiguous(memory_format=torch.channels_last_3d)
    before = x.clone()
    result = block.forward_in_place_(x)
    assert result.requires_grad and torch.equal(x, before)


def test_circular_padding_falls_back_to_the_whole_volume():
    block = ResnetBlock3D(32, padding_mode="circular").eval()
    x = torch.randn(1, 32, 20, 4, 4).contiguous(memory_format=torch.channels_last_3d)
    expected = block(x.clone())
    with torch.no_grad():
        result = block.forward_in_place_(x.clone())
    torch.testing.assert_close(result, expected.detach(), rtol=0, atol=2e-6)


def test_nearest_codes_ignore_autocast():
    from difftumor.models.ema_codebook import nearest_code_indices

    generator = torch.Generator().manual_seed(0)
    codebook, vectors = torch.randn(512, 8, generator=generator), torch.randn(2000, 8, generator=generator)
    expected = nearest_code_indices(vectors, codebook)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(nearest_code_indices(vectors, codebook), expected)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_channels_last_forward_equals_forward(in_channels):
    from difftumor.models.autoencoder_blocks_3d import SamePadConv3d

    torch.manual_seed(0)
    conv = SamePadConv3d(in_channels, 16, 3)
    x = torch.randn(2, in_channels, 7, 9, 10)
    with torch.no_grad():
        expected = conv(x)
        result = conv.forward_channels_last(x)
    assert result.shape == expected.shape
    assert result.is_contiguous(memory_format=torch.channels_last_3d) and not result.is_contiguous()
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("out_channels", "mode"), [(1, "replicate"), (2, "reflect"), (1, "constant")])
def test_convolution_by_taps_equals_the_convolution(out_channels, mode):
    from difftumor.models.autoencoder_blocks_3d import SamePadConv3d, conv_by_taps

    torch.manual_seed(0)
    conv = SamePadConv3d(8, out_channels, 3, padding_mode=mode)
    # 20 planes: one 16-plane slab and a short last one, both volume ends and an inner halo.
    x = torch.randn(2, 8, 20, 6, 7).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        expected = conv.double()(x.double())
        result = conv_by_taps(conv, x.double())
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-12)


def test_reflect_padding_too_wide_is_refused_like_f_pad():
    block = ResnetBlock3D(32, padding_mode="reflect").eval()
    x = torch.randn(1, 32, 8, 1, 6).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad(), pytest.raises((ValueError, RuntimeError)):
        block.forward_in_place_(x.clone())


def test_hooks_on_bypassed_layers_still_fire():
    from difftumor.models.vq_model_3d import VQModel3D

    torch.manual_seed(0)
    vq = VQModel3D(hidden_channels=8, norm_num_groups=4, num_codes=16, latent_channels=4).eval()
    layers = [vq.encoder.conv_in.conv, vq.decoder.conv_out.conv, vq.decoder.up_blocks[-1].resnets[0].conv1.conv]
    calls = []
    for layer in layers:
        layer.register_forward_hook(lambda module, args, output: calls.append(module))
    with torch.no_grad():
        vq.decode(vq.encode(torch.randn(1, 1, 16, 16, 16)).latents)
    assert all(layer in calls for layer in layers)


def test_decode_with_gradients_through_the_quantiser():
    from difftumor.models.vq_model_3d import VQModel3D

    torch.manual_seed(0)
    vq = VQModel3D(hidden_channels=8, norm_num_groups=4, num_codes=16, latent_channels=4)
    latents = vq.encode(torch.randn(1, 1, 16, 16, 16)).latents
    vq.decode(latents).sample.mean().backward()  # the code search must not break autograd
    assert vq.decoder.conv_out.conv.weight.grad is not None


def test_fast_paths_step_aside_under_autocast():
    from difftumor.models.autoencoder_blocks_3d import SamePadConv3d, _conv_by_taps_applies
    from difftumor.models.winograd import supports_depth_winograd

    conv = SamePadConv3d(8, 1, 3)
    x = torch.randn(1, 8, 8, 6, 6).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        assert _conv_by_taps_applies(conv, x) and supports_depth_winograd(torch.nn.Conv3d(8, 8, 3), x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not _conv_by_taps_applies(conv, x)
            assert not supports_depth_winograd(torch.nn.Conv3d(8, 8, 3), x)


@pytest.mark.parametrize("mode", ["replicate", "reflect", "constant"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pad_volume_is_f_pad_and_keeps_channels_last(mode, dtype, monkeypatch):
    """Its own fill for channels-last CPU tensors in inference (F.pad is not called), equal to F.pad."""
    from difftumor.models.autoencoder_blocks_3d import pad_volume

    generator = torch.Generator().manual_seed(0)
    cases = []
    for pads in ((1, 1, 1, 1, 1, 1), (2, 1, 1, 2, 0, 3), (1, 2, 0, 0, 1, 1)):
        x = torch.randn(2, 5, 6, 7, 8, generator=generator).to(dtype)
        x = x.contiguous(memory_format=torch.channels_last_3d)
        cases.append((x, pads, torch.nn.functional.pad(x, pads, mode=mode)))
    monkeypatch.setattr(autoencoder_blocks_3d.F, "pad", None)
    for x, pads, expected in cases:
        with torch.no_grad():
            padded = pad_volume(x, pads, mode)
        assert torch.equal(padded, expected)
        assert padded.is_contiguous(memory_format=torch.channels_last_3d)


def test_pad_volume_leaves_what_it_does_not_handle_to_f_pad():
    from difftumor.models.autoencoder_blocks_3d import pad_volume

    x = torch.randn(1, 2, 3, 4, 5).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad(), pytest.raises(RuntimeError):  # F.pad's own error for reflect wider than the axis
        pad_volume(x, (1, 1, 1, 1, 3, 3), "reflect")
    with torch.no_grad():
        assert torch.equal(pad_volume(x, (1, 1), "constant"), torch.nn.functional.pad(x, (1, 1), mode="constant"))
    grad = x.clone().requires_grad_()
    pad_volume(grad, (1, 1, 1, 1, 1, 1), "replicate").sum().backward()
    assert grad.grad is not None
