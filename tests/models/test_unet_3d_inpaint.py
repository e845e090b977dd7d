"""UNet3DInpaintModel: parity with the original Unet3D, released-size shapes, save/load, checkpointing."""

from __future__ import annotations

import copy

import pytest
import torch

from difftumor import UNet3DInpaintModel
from tests.conftest import load_fixture


def test_forward_matches_the_original(original_small):
    io = load_fixture("unet3d_io.pt")
    with torch.no_grad():
        out = original_small["unet"](io["x"], io["time"], io["cond"]).sample
    torch.testing.assert_close(out, io["out"], atol=1e-5, rtol=1e-4)


def test_scalar_timestep_broadcasts_and_tuple_output(original_small):
    io = load_fixture("unet3d_io.pt")
    unet = original_small["unet"]
    with torch.no_grad():
        batched = unet(io["x"], torch.tensor([3, 3]), io["cond"]).sample
        scalar = unet(io["x"], 3, io["cond"], return_dict=False)[0]
    torch.testing.assert_close(batched, scalar, rtol=0, atol=0)


def test_released_configuration_shapes_and_parameter_count():
    unet = UNet3DInpaintModel().eval()
    # Original: 6,018,736 state-dict elements, of which 10 x 16 are copies of the shared rotary buffer.
    assert sum(p.numel() for p in unet.parameters()) == 6_018_736 - 10 * 16
    with torch.no_grad():
        out = unet(torch.randn(1, 8, 24, 24, 24), torch.tensor([2]), torch.randn(1, 9, 24, 24, 24)).sample
    assert out.shape == (1, 8, 24, 24, 24) and torch.isfinite(out).all()


def test_bad_condition_and_sizes_are_rejected():
    unet = UNet3DInpaintModel(
        base_channels=8, channel_multipliers=(1, 2), sample_channels=4, condition_channels=5, out_channels=4
    )
    with pytest.raises(ValueError, match="condition"):
        unet(torch.randn(1, 4, 8, 8, 8), 1, torch.randn(1, 5, 8, 8, 4))
    with pytest.raises(ValueError, match="divisible"):
        unet(torch.randn(1, 4, 8, 7, 7), 1, torch.randn(1, 5, 8, 7, 7))


def test_save_load_round_trip_and_gradient_checkpointing(original_small, tmp_path):
    io = load_fixture("unet3d_io.pt")
    unet = original_small["unet"]
    unet.save_pretrained(tmp_path / "unet")
    loaded = UNet3DInpaintModel.from_pretrained(tmp_path / "unet").eval()
    with torch.no_grad():
        assert torch.equal(unet(io["x"], io["time"], io["cond"]).sample, loaded(io["x"], io["time"], io["cond"]).sample)

    def gradients():
        loaded.zero_grad()
        loaded(io["x"], io["time"], io["cond"]).sample.abs().mean().backward()
        return [p.grad.clone() for p in loaded.parameters()]

    plain = gradients()
    loaded.enable_gradient_checkpointing()
    for a, b in zip(plain, gradients()):
        torch.testing.assert_close(a, b)


def test_inference_caches_follow_weight_changes(original_small):
    # The depth attention keeps its rotary-folded weights between inference calls: loading other weights (or any
    # in-place update) must take effect at the next call, as in a model that caches nothing.
    io = load_fixture("unet3d_io.pt")
    unet = original_small["unet"]
    torch.manual_seed(0)
    other = UNet3DInpaintModel.from_config(unet.config).eval()
    saved = {name: tensor.clone() for name, tensor in unet.state_dict().items()}
    with torch.no_grad():
        before = unet(io["x"], io["time"], io["cond"]).sample
        try:
            unet.load_state_dict(other.state_dict())
            changed = unet(io["x"], io["time"], io["cond"]).sample
            assert torch.equal(changed, other(io["x"], io["time"], io["cond"]).sample)
        finally:
            unet.load_state_dict(saved)
        assert torch.equal(unet(io["x"], io["time"], io["cond"]).sample, before)


def _assert_same_gradients(module, ours, plain, tokens):
    """``ours`` and ``plain`` (both of ``tokens``) have the same gradients for the tokens and every weight of
    ``module``."""
    leaf = tokens.clone().requires_grad_()
    inputs = [leaf, *module.parameters()]
    gradients = torch.autograd.grad(ours(leaf).square().sum(), inputs)
    for got, expected in zip(gradients, torch.autograd.grad(plain(leaf).square().sum(), inputs)):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("reassociated", [True, False])
def test_blocked_attention_equals_whole_attention(monkeypatch, reassociated):
    # On CPU the attentions run in blocks of positions / slices; several blocks (and a short last one) must give
    # what one block gives, to float32 rounding — in both association orders of each attention.
    from difftumor.models import unet_3d_blocks

    monkeypatch.setattr(unet_3d_blocks, "_mixes_tokens", lambda *_: reassociated)
    monkeypatch.setattr(unet_3d_blocks, "_folds_values", lambda *_: reassociated)
    torch.manual_seed(0)
    depth_attention = unet_3d_blocks.DepthAttention(16, 4, 8).eval()
    plane_attention = unet_3d_blocks.PlaneLinearAttention(16, 4, 8).eval()
    tokens = torch.randn(2, 6, 5, 7, 16)
    rotary = unet_3d_blocks.RotaryEmbedding(8).tables(6, tokens.device, tokens.dtype)
    bias = unet_3d_blocks.RelativePositionBias(4)(6)
    with torch.no_grad():
        monkeypatch.setattr(unet_3d_blocks, "_DEPTH_ATTENTION_POSITIONS", 10**6)  # one block, as on a GPU
        monkeypatch.setattr(unet_3d_blocks, "_PLANE_ATTENTION_TOKENS", 10**6)
        whole = depth_attention(tokens, bias, rotary), plane_attention(tokens)
        monkeypatch.setattr(unet_3d_blocks, "_DEPTH_ATTENTION_POSITIONS", 16)  # 70 positions: 5 blocks
        monkeypatch.setattr(unet_3d_blocks, "_PLANE_ATTENTION_TOKENS", 80)  # 35 per slice: 2 slices per block
        blocked = depth_attention(tokens, bias, rotary), plane_attention(tokens)
    for a, b in zip(whole, blocked):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_attentions_reassociate_where_the_released_levels_save_work():
    """The cost rules pick the re-associated products at the released 24- and 48-channel levels (24², 12² slices) and
    the written order at 96 and 192 channels (6², 3²), depth 24 and 32 channels per head."""
    from difftumor.models.unet_3d_blocks import _folds_values, _mixes_tokens

    assert [_folds_values(n, c, 32) for n, c in ((576, 24), (144, 48), (36, 96), (9, 192))] == [1, 1, 0, 0]
    assert [_mixes_tokens(24, c, 32) for c in (24, 48, 96, 192)] == [1, 1, 0, 0]


@pytest.mark.parametrize("mixes_tokens", [True, False])
@pytest.mark.parametrize("dim_head", [8, 64])
def test_depth_attention_rotates_the_first_32_channels_of_each_head(monkeypatch, dim_head, mixes_tokens):
    """Against a plain computation: rotary on the first min(32, d) channels of the scaled queries and the keys (the
    rest of a wider head unrotated), the position bias, softmax over depth — in float64, grad on and off (and the
    gradients), mixing projected values or the tokens themselves (then mapped out by ``W_out W_v``); a bfloat16 model
    runs in inference; a hook on the output projection fires (the tokens are then not mixed)."""
    from difftumor.models import unet_3d_blocks

    monkeypatch.setattr(unet_3d_blocks, "_mixes_tokens", lambda *_: mixes_tokens)

    torch.manual_seed(0)
    heads, channels, depth = 2, 12, 5
    attention = unet_3d_blocks.DepthAttention(channels, heads, dim_head).eval().double()
    tokens = torch.randn(1, depth, 3, 4, channels, dtype=torch.float64)
    rotary = unet_3d_blocks.RotaryEmbedding(min(32, dim_head)).tables(depth, tokens.device, tokens.dtype)
    bias = unet_3d_blocks.RelativePositionBias(heads)(depth).double()

    width = rotary[0].shape[1]
    cos, sin = (t.view(depth, 1, 1, 1, width) for t in rotary)

    def rotate(x):
        part = x[..., :width]
        pairs = part.unflatten(-1, (-1, 2))
        turned = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return torch.cat([part * cos + turned * sin, x[..., width:]], dim=-1)

    def plain(tokens):
        q, k, v = attention.to_qkv(attention.norm(tokens)).view(1, depth, 3, 4, 3, heads, dim_head).unbind(4)
        q, k = rotate(q * attention.scale), rotate(k)
        logits = torch.einsum("bihwnd,bjhwnd->bhwnij", q, k) + bias
        out = torch.einsum("bhwnij,bjhwnd->bihwnd", logits.softmax(-1), v).flatten(-2)
        return tokens + attention.to_out(out)

    expected = plain(tokens)
    with torch.no_grad():
        torch.testing.assert_close(attention(tokens, bias, rotary), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(attention(tokens, bias, rotary), expected, rtol=0, atol=1e-12)
    _assert_same_gradients(attention, lambda x: attention(x, bias, rotary), plain, tokens)
    calls = []
    handle = attention.to_out.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        torch.testing.assert_close(attention(tokens, bias, rotary), expected, rtol=0, atol=1e-12)
    handle.remove()
    assert calls

    class Adapted(torch.nn.Module):  # replaces the module, as PEFT's LoRA does: its weight is not the whole map
        def __init__(self, base):
            super().__init__()
            self.base, self.delta = base, torch.nn.Linear(base.in_features, base.out_features, bias=False).double()
            self.weight, self.in_features = base.weight, base.in_features

        def forward(self, x):
            return self.base(x) + self.delta(x)

    attention.to_out = Adapted(attention.to_out)
    with torch.no_grad():
        torch.testing.assert_close(attention(tokens, bias, rotary), plain(tokens), rtol=0, atol=1e-12)
    with torch.no_grad():
        low = attention.to(torch.bfloat16)
        tables = tuple(t.to(torch.bfloat16) for t in rotary)
        assert torch.isfinite(low(tokens.to(torch.bfloat16), bias.to(torch.bfloat16), tables)).all()


@pytest.mark.parametrize("fold_values", [True, False])
def test_plane_linear_attention_matches_a_plain_computation(monkeypatch, fold_values):
    """Both association orders of each head's context (``(kᵀ x)(W_vᵀ W_out)`` and ``(kᵀ (x W_vᵀ)) W_out``) against
    the original's formula written out — queries soft-maxed over their head channels, keys over positions, output
    ``W_out ((k vᵀ)ᵀ q) · d^-0.5 + b`` — in float64 without autograd (in-place softmax) and with it (gradients of
    the input and every weight), and in float32 with logits beyond its exponential's range."""
    from difftumor.models import unet_3d_blocks

    monkeypatch.setattr(unet_3d_blocks, "_folds_values", lambda *_: fold_values)
    torch.manual_seed(0)
    heads, dim, channels = 3, 8, 10
    attention = unet_3d_blocks.PlaneLinearAttention(channels, heads, dim).eval().double()
    torch.nn.init.normal_(attention.to_out.bias)
    with torch.no_grad():  # float32 exp overflows beyond 88: the softmax must subtract its maximum
        attention.to_qkv.weight *= 60  # logits up to 127
    tokens = torch.randn(2, 3, 4, 5, channels, dtype=torch.float64) * 3

    def plain(tokens):
        sequences = attention.norm(tokens).reshape(6, 20, channels)
        q, k, v = (t.view(6, 20, heads, dim) for t in attention.to_qkv(sequences).chunk(3, dim=-1))
        q, k = q.softmax(dim=-1), k.softmax(dim=1)
        context = torch.einsum("snhd,snhe->shde", k, v)
        out = torch.einsum("shde,snhd->snhe", context, q).flatten(2) * attention.scale
        return tokens + attention.to_out(out).view(tokens.shape)

    expected = plain(tokens)
    with torch.no_grad():
        torch.testing.assert_close(attention(tokens), expected, rtol=0, atol=1e-12)
        single = copy.deepcopy(attention).float()(tokens.float())
        torch.testing.assert_close(single.double(), expected, rtol=0, atol=1e-4)  # 2.2e-5 measured
    _assert_same_gradients(attention, attention, plain, tokens)


def test_resnet_block_folds_the_time_modulation_into_its_group_norm(monkeypatch):
    """The CPU float32 block (modulation folded into the normalisation, one fused pass) computes the plain
    norm → ·(scale + 1) + shift → SiLU composition: against float64, grad on and off, with one time embedding for the
    whole batch too; forward and backward hooks on a norm send the call through the module as usual."""
    from difftumor.models import normalization, unet_3d_blocks

    torch.manual_seed(0)
    block = unet_3d_blocks.ResnetBlockInPlane(12, 16, temb_channels=8, norm_num_groups=4).eval()
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.normal_(0, 0.5)
    tokens, temb = torch.randn(2, 5, 6, 7, 12), torch.randn(2, 8)
    references = {rows: block.double()(tokens.double(), temb[:rows].double()) for rows in (2, 1)}
    block.float()

    folded = []
    plain = normalization.group_norm_scale_shift

    def spy(*args, **kwargs):
        folded.append(args[-1] if len(args) == 6 else kwargs.get("modulation"))
        return plain(*args, **kwargs)

    monkeypatch.setattr(normalization, "group_norm_scale_shift", spy)
    for rows, reference in references.items():
        folded.clear()
        with torch.no_grad():
            fused = block(tokens, temb[:rows])
        assert len(folded) == 2 and folded[0] is not None and folded[1] is None  # the fused path ran, norm1 modulated
        with_grad = block(tokens, temb[:rows])
        torch.testing.assert_close(fused.double(), reference, rtol=0, atol=2e-5)
        torch.testing.assert_close(with_grad, fused, rtol=0, atol=0)

    calls = []
    for register in (block.norm1.register_forward_hook, block.norm1.register_full_backward_hook):
        handle = register(lambda *args: calls.append(1))
        try:
            folded.clear()
            hooked = block(tokens, temb)
            hooked.sum().backward()
        finally:
            handle.remove()
        assert folded == [None, None]  # both norms accurate, the hooked norm1 without the modulation folded in
        torch.testing.assert_close(hooked.detach().double(), references[2], rtol=0, atol=2e-5)
    assert calls == [1, 1]
