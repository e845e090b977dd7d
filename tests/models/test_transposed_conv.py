"""The sub-pixel form of a strided transposed convolution (what SamePadConvTranspose3d runs on CUDA in inference)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from difftumor.models import transposed_conv
from difftumor.models.autoencoder_blocks_3d import SamePadConvTranspose3d
from difftumor.models.transposed_conv import conv_transpose3d_by_phases
from difftumor.pipelines.tumor_inpaint.pipeline_tumor_inpaint import reproducible_float32
from tests.conftest import DEVICE


@pytest.mark.parametrize(
    ("kernel", "stride", "padding", "shape"),
    [
        ((4, 4, 4), (2, 2, 2), (3, 3, 3), (5, 6, 7)),  # the autoencoder's up-sampling after its replicate padding
        ((4, 4, 4), (1, 2, 2), (3, 3, 3), (4, 5, 6)),  # stride 1 along depth
        ((3, 4, 5), (2, 3, 1), (1, 0, 2), (4, 5, 6)),  # taps that leave the input (zeros), uneven phases
        ((2, 2, 2), (2, 2, 2), (0, 0, 0), (3, 4, 5)),
    ],
)
def test_equals_the_transposed_convolution_in_float64(kernel, stride, padding, shape):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *shape, generator=generator, dtype=torch.float64)
    weight = torch.randn(3, 5, *kernel, generator=generator, dtype=torch.float64)
    bias = torch.randn(5, generator=generator, dtype=torch.float64)
    expected = F.conv_transpose3d(x, weight, bias, stride=stride, padding=padding)
    ours = conv_transpose3d_by_phases(x.to(DEVICE), weight.to(DEVICE), bias.to(DEVICE), stride, padding).cpu()
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12)


def test_the_layer_uses_it_in_inference_only_and_gives_the_same(monkeypatch):
    """Inference without hooks takes the phase form on the listed devices (CUDA; here also this test's device),
    autograd and hooked layers the transposed convolution — with the same result."""
    calls = []
    original = transposed_conv.conv_transpose3d_by_phases

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(transposed_conv, "conv_transpose3d_by_phases", counted)
    monkeypatch.setattr(transposed_conv, "DEVICE_TYPES", {"cuda", DEVICE.type})
    torch.manual_seed(0)
    layer = SamePadConvTranspose3d(8, 4, 4, stride=(1, 2, 2)).to(DEVICE)
    x = torch.randn(1, 8, 6, 7, 8, device=DEVICE)
    with reproducible_float32(DEVICE):
        with torch.no_grad():
            inference = layer(x)
        assert len(calls) == 1
        training = layer(x.requires_grad_()).detach()
        assert len(calls) == 1
        handle = layer.convt.register_forward_hook(lambda *args: None)
        with torch.no_grad():
            hooked = layer(x)
        handle.remove()
        assert len(calls) == 1
    assert inference.shape == (1, 4, 6, 14, 16)
    torch.testing.assert_close(inference, training, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hooked, training, rtol=1e-5, atol=1e-5)


def test_kernels_shorter_than_the_stride_are_refused():
    x, weight = torch.randn(1, 2, 4, 4, 4), torch.randn(2, 3, 1, 2, 2)
    with pytest.raises(ValueError, match="kernel >= stride"):
        conv_transpose3d_by_phases(x, weight, None, (2, 2, 2), (0, 0, 0))
