"""Building blocks of the DiffTumor denoising UNet (a video-diffusion UNet whose "frames" are axial slices).

All convolutions act in-plane (kernels ``1 × k × k``); depth is mixed only by the softmax attention along ``D``
(rotary embedding + T5 relative position bias) and by the bottleneck's attention over each slice. See
``tests/data/original_difftumor`` for the recorded outputs this reproduces.

Inside the UNet, activations are kept as **tokens** ``(B, D, H, W, C)`` (channels last). In that layout every
1×1 projection is a plain matrix product, the channel LayerNorm reduces a contiguous axis, the in-plane convolutions are
channels-last 2-D convolutions over the slices without any copy, and the slice attention needs no reshuffling —
several times faster on CPU than the ``(B, C, D, H, W)`` layout at latent sizes.

The attentions read their ``to_qkv`` weights (and the plane attention its ``to_out`` weight) directly, to fold rotary
embeddings, scales and products of weights: an adapter that replaces those modules (PEFT's LoRA) is not applied
there, nor are hooks on them; ``DepthAttention.to_out`` is called as a module unless it is a plain ``nn.Linear``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .inference_paths import cpu_float_without_autocast, derived_weights, has_hooks
from .normalization import GroupNorm, accurate_group_norm


def _as_slices(tokens: torch.Tensor) -> torch.Tensor:
    """``(B, D, H, W, C)`` tokens -> ``(B·D, C, H, W)`` channels-last images (a view)."""
    batch, depth, height, width, channels = tokens.shape
    return tokens.reshape(batch * depth, height, width, channels).permute(0, 3, 1, 2)


def _from_slices(images: torch.Tensor, batch: int) -> torch.Tensor:
    """``(B·D, C, H, W)`` images -> ``(B, D, H, W, C)`` tokens (a view when the images are channels-last)."""
    tokens = images.permute(0, 2, 3, 1)
    return tokens.reshape(batch, -1, *tokens.shape[1:])


class _SliceWise(nn.Module):
    """Applies ``self.conv`` (a 2-D layer) to every axial slice of tokens ``(B, D, H, W, C)``, channels-last."""

    conv: nn.Module

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        images = _as_slices(tokens).contiguous(memory_format=torch.channels_last)
        return _from_slices(self.conv(images).contiguous(memory_format=torch.channels_last), tokens.shape[0])


class InPlaneConv(_SliceWise):
    """A ``1 × k × k`` convolution of every axial slice, on tokens ``(B, D, H, W, C)``.

    Equivalent to the original's ``nn.Conv3d(in, out, (1, k, k), padding=(0, k//2, k//2))``; the weight is stored
    without the unit depth axis.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)


class InPlaneDownsample(_SliceWise):
    """Halve H and W with a 4×4 stride-2 convolution per slice; depth is never downsampled."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 4, stride=2, padding=1)


class InPlaneUpsample(_SliceWise):
    """Double H and W with a 4×4 stride-2 transposed convolution per slice."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)


class ChannelLayerNorm(nn.Module):
    """Normalise over channels at every voxel: ``(x − mean) / sqrt(var + eps) · weight`` (biased variance, no bias)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # Written out rather than F.layer_norm: the original's order of operations, so rounding matches it better.
        # The variance in two passes over the centred values, not torch.var: on CPU its kernel is far slower on a
        # 24-wide last axis (the UNet's share of bench/bench_models.py), and this agrees with it to 3e-7.
        centred = tokens - torch.mean(tokens, dim=-1, keepdim=True)
        var = centred.square().mean(dim=-1, keepdim=True)
        return centred / (var + self.eps).sqrt() * self.weight


class TokenGroupNorm(GroupNorm):
    """GroupNorm over ``(C/G) × D × H × W`` for tokens ``(B, D, H, W, C)`` (run as channels-last 3-D)."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return super().forward(tokens.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)

    def modulated_silu(
        self, tokens: torch.Tensor, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``silu(norm(tokens) · (scale + 1) + shift)`` for tokens ``(B, D, H, W, C)``, same shape out; ``scale`` and
        ``shift`` ``(B or 1, 1, 1, 1, C)``, or neither.

        Where the accurate GroupNorm applies (CPU float32), the modulation is folded into the normalisation's
        per-channel scale and shift (:func:`~.normalization.accurate_group_norm`), so normalising, modulating and
        activating is one fused multiply-add and one activation pass over the tokens instead of four passes, and
        three fewer temporaries of the tokens' size.
        """
        # In place only without autograd (SiLU's backward needs its input) and only on tensors made here.
        in_place = not torch.is_grad_enabled()
        if has_hooks(self):  # hooks act through __call__
            hidden = self(tokens)  # may be an output a hook kept: never overwritten
            if scale is not None:
                hidden = hidden * (scale + 1) + shift
            return F.silu(hidden, inplace=in_place and scale is not None)
        modulation = None if scale is None else (scale, shift)
        volume = tokens.permute(0, 4, 1, 2, 3)
        hidden = accurate_group_norm(volume, self.num_groups, self.weight, self.bias, self.eps, modulation)
        return F.silu(hidden, inplace=in_place).permute(0, 2, 3, 4, 1)


class ResnetBlockInPlane(nn.Module):
    """Two ``conv(1×3×3) -> GroupNorm -> SiLU`` blocks plus a residual; the time embedding scales and shifts the
    first block's normalised activations (``x · (scale + 1) + shift``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int | None = None,
        norm_num_groups: int = 8,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        self.time_emb_proj = nn.Linear(temb_channels, out_channels * 2) if temb_channels else None
        self.conv1 = InPlaneConv(in_channels, out_channels, 3)
        self.norm1 = TokenGroupNorm(norm_num_groups, out_channels, eps=norm_eps)
        self.conv2 = InPlaneConv(out_channels, out_channels, 3)
        self.norm2 = TokenGroupNorm(norm_num_groups, out_channels, eps=norm_eps)
        self.conv_shortcut = nn.Linear(in_channels, out_channels) if in_channels != out_channels else None

    def forward(self, tokens: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        scale = shift = None
        if self.time_emb_proj is not None and temb is not None:
            scale, shift = self.time_emb_proj(F.silu(temb))[:, None, None, None, :].chunk(2, dim=-1)
        hidden = self.norm1.modulated_silu(self.conv1(tokens), scale, shift)
        hidden = self.norm2.modulated_silu(self.conv2(hidden))
        residual = self.conv_shortcut(tokens) if self.conv_shortcut is not None else tokens
        return hidden + residual


class RotaryEmbedding(nn.Module):
    """Rotary position embedding with interleaved pairs and 'lang' frequencies ``1 / 10000^(2i / dim)``.

    The frequencies are constants, not weights, so they are not saved.
    """

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.register_buffer("freqs", freqs, persistent=False)

    def tables(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin)`` of shape ``(length, dim)`` for positions ``0 … length − 1``."""
        positions = torch.arange(length, device=device, dtype=torch.float32)
        angles = torch.outer(positions, self.freqs.float()).repeat_interleave(2, dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


class RelativePositionBias(nn.Module):
    """T5 bidirectional bucketed relative position bias: returns ``(heads, N, N)`` to add to attention logits."""

    def __init__(self, heads: int = 8, num_buckets: int = 32, max_distance: int = 32):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.relative_attention_bias = nn.Embedding(num_buckets, heads)

    def _bucket(self, relative_position: torch.Tensor) -> torch.Tensor:
        half = self.num_buckets // 2
        n = -relative_position
        bucket = (n < 0).long() * half
        n = n.abs()
        max_exact = half // 2
        is_small = n < max_exact
        large = (
            max_exact
            + (torch.log(n.float() / max_exact) / math.log(self.max_distance / max_exact) * (half - max_exact)).long()
        )
        large = torch.minimum(large, torch.full_like(large, half - 1))
        return bucket + torch.where(is_small, n, large)

    def forward(self, length: int, device: torch.device | None = None) -> torch.Tensor:
        positions = torch.arange(length, dtype=torch.long, device=device)
        relative = positions[None, :] - positions[:, None]
        return self.relative_attention_bias(self._bucket(relative)).permute(2, 0, 1)


def _pair_rotation(weight: torch.Tensor) -> torch.Tensor:
    """Rows of ``weight`` ``(H, d, C)`` mapped as the rotary "rotate half" does: (a, b) pairs -> (−b, a)."""
    pairs = weight.unflatten(1, (-1, 2))
    return torch.stack((-pairs[:, :, 1], pairs[:, :, 0]), dim=2).flatten(1, 2)


class DepthAttention(nn.Module):
    """Pre-normalised residual softmax attention along depth for every in-plane position.

    Queries (scaled by ``dim_head^-0.5``, then rotated) and keys carry the rotary embedding, and the T5 relative
    position bias is added to the logits, as in the original. Because a rotary rotation is linear, it is folded into
    per-depth projection weights (``R_f · W_q``): the projection of each slice already yields rotated queries and
    keys, and no elementwise pass over the 32-channels-per-head activations is needed. The per-position attention
    is then a strided batched matrix product over ``(position, head)`` pairs with no reshuffling of activations.

    Where that is fewer multiply-adds (``_mixes_tokens``: the released 24- and 48-channel levels), values are never
    projected: ``W_out Σ_j p_ij (W_v x_j) = (W_out W_v) Σ_j p_ij x_j`` per head, so the attention mixes the tokens
    themselves and one ``C × C`` product of weights per head maps them out.
    """

    def __init__(self, channels: int, heads: int, dim_head: int):
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        self.norm = ChannelLayerNorm(channels)
        self.to_qkv = nn.Linear(channels, heads * dim_head * 3, bias=False)
        self.to_out = nn.Linear(heads * dim_head, channels, bias=False)

    def _depth_weights(self, cos: torch.Tensor, sin: torch.Tensor, values: bool = True) -> torch.Tensor:
        """``(D, H·3·d, C)`` projection weights (``(D, H·2·d, C)`` without ``values``): rotary (and the query scale)
        folded into queries and keys.

        In CPU inference they are kept until the weight or the rotary tables change (a sampler calls the UNet with
        the same ones at every step; at 192 channels building them is a 14 MB tensor per call).
        """
        if torch.is_grad_enabled() or cos.device.type != "cpu":
            return self._fold_rotary(cos, sin, values)
        # 3 KB, cheaper than a fold; float64 holds every dtype's values exactly (NumPy has no bfloat16).
        tables = (cos.dtype, cos.shape, cos.double().numpy().tobytes(), sin.double().numpy().tobytes(), values)
        return derived_weights(self, self.to_qkv.weight, tables, lambda: self._fold_rotary(cos, sin, values))

    def _fold_rotary(self, cos: torch.Tensor, sin: torch.Tensor, values: bool = True) -> torch.Tensor:
        depth = cos.shape[0]
        query, key, value = self.to_qkv.weight.view(3, self.heads, -1, self.to_qkv.in_features).unbind(0)
        unrotated = query.shape[1] - cos.shape[1]
        if unrotated:  # heads wider than the rotary (32): the rest of each head passes unrotated, as in the original
            cos = torch.cat([cos, cos.new_ones(depth, unrotated)], dim=1)
            sin = torch.cat([sin, sin.new_zeros(depth, unrotated)], dim=1)
        cos, sin = cos[:, None, :, None], sin[:, None, :, None]
        rotated_query = (cos * query + sin * _pair_rotation(query)) * self.scale
        rotated_key = cos * key + sin * _pair_rotation(key)
        # Output rows ordered (head, q/k/v, d) — not the checkpoint's (q/k/v, head, d) — so that each head's
        # queries, keys and values of all positions form one strided batch (position · head) with no copy.
        parts = (rotated_query, rotated_key) + ((value.expand(depth, *value.shape),) if values else ())
        return torch.stack(parts, dim=2).reshape(depth, -1, self.to_qkv.in_features)

    def forward(
        self, tokens: torch.Tensor, position_bias: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        batch, depth, height, width, channels = tokens.shape
        positions, heads = batch * height * width, self.heads
        dim = self.to_qkv.weight.shape[0] // (3 * heads)
        # to_out's own call where it is not a plain Linear (an adapter such as PEFT's LoRA replaces the module) or
        # hooks act through it; its weight is read directly otherwise.
        plain_out = type(self.to_out) is nn.Linear and not has_hooks(self.to_out)
        mixes_tokens = _mixes_tokens(depth, channels, dim) and plain_out
        columns = self.norm(tokens).transpose(0, 1).reshape(depth, positions, channels)
        weights = self._depth_weights(*rotary, values=not mixes_tokens).transpose(1, 2)
        if mixes_tokens:  # (H·C, C): per head W_v,hᵀ W_out,hᵀ, stacked; 0.3 MFLOP at the released top level
            w_value = self.to_qkv.weight.chunk(3)[2]
            w_mix = _value_output_product(w_value, self.to_out.weight.view(channels, heads, dim))
            w_mix = w_mix.reshape(heads * channels, channels)
        blocks = []
        # By blocks of positions on CPU: at the released top level the whole qkv is 42 MB (fresh pages on every call,
        # out of cache); 64 positions keep it at 4.7 MB (blocks of 128 made one attention 3x faster than none).
        # GPUs want the whole batch at once (blocks measured 3-12x slower on an H200).
        step = _DEPTH_ATTENTION_POSITIONS if tokens.device.type == "cpu" else positions
        for start in range(0, positions, step):
            block = columns[:, start : start + step]
            count = block.shape[1]
            projected = torch.bmm(block, weights)  # (D, count, H·(2 or 3)·d)
            parts = [  # (count·H, D, d) each: strided views
                part.reshape(depth, count * heads, -1).transpose(0, 1)
                for part in projected.view(depth, count, heads, 2 if mixes_tokens else 3, -1).unbind(3)
            ]
            logits = torch.bmm(parts[0], parts[1].transpose(1, 2)).view(count, heads, depth, depth) + position_bias
            probabilities = logits.softmax(dim=-1)
            if mixes_tokens:  # (count, H·D, C): each head's mix of the tokens themselves
                mixed = torch.bmm(probabilities.view(count, heads * depth, depth), block.transpose(0, 1))
            else:  # (count·H, D, d): each head's mix of its values
                mixed = torch.bmm(probabilities.view(count * heads, depth, depth), parts[2])
            mixed = mixed.view(count, heads, depth, -1).permute(2, 0, 1, 3).reshape(depth, count, -1)
            blocks.append(torch.matmul(mixed, w_mix) if mixes_tokens else self.to_out(mixed))
        out = torch.cat(blocks, dim=1)  # (D, positions, C): small, and autograd-friendly unlike out=
        return tokens + out.view(depth, batch, height, width, channels).transpose(0, 1)


def _mixes_tokens(depth: int, channels: int, dim: int) -> bool:
    """Whether :class:`DepthAttention` mixes the tokens and maps them out with ``W_out W_v`` rather than mixing
    projected values: multiply-adds per position and head ``D·D·C + D·C·C`` against ``D·C·d + D·D·d + D·d·C``."""
    return channels * (depth + channels) < dim * (2 * channels + depth)


def _value_output_product(w_value: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    """Per head ``W_v,hᵀ W_out,hᵀ`` ``(H, C, C)`` from the value rows ``(H·d, C)`` of a qkv weight and the output
    weight viewed ``(C, H, d)``: what the attentions apply to token sums in place of values."""
    heads, dim = w_out.shape[1:]
    return torch.einsum("hec,khe->hck", w_value.view(heads, dim, -1), w_out)


#: Positions per block of :class:`DepthAttention`: 64 was 3-9 % faster per UNet evaluation than 128 (the best while
#: the heads were still copied out) and than 32-48, with AVX2 and AVX-512 kernels; 3² and 6² are one block anyway.
_DEPTH_ATTENTION_POSITIONS = 64


class PlaneAttention(nn.Module):
    """Pre-normalised residual full softmax attention over the H×W positions of each slice (the bottleneck)."""

    def __init__(self, channels: int, heads: int = 8, dim_head: int = 32):
        super().__init__()
        self.heads = heads
        self.norm = ChannelLayerNorm(channels)
        self.to_qkv = nn.Linear(channels, heads * dim_head * 3, bias=False)
        self.to_out = nn.Linear(heads * dim_head, channels, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, depth, height, width, channels = tokens.shape
        sequences = self.norm(tokens).reshape(batch * depth, height * width, channels)
        query, key, value = self.to_qkv(sequences).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(query, key, value)  # scale dim_head^-0.5, as the original
        return tokens + self.to_out(out.transpose(1, 2).flatten(2)).view(tokens.shape)


class PlaneLinearAttention(nn.Module):
    """Pre-normalised residual linear attention over the H×W positions of each slice.

    Queries are soft-maxed over their head channels, keys over positions; ``out = (k vᵀ)ᵀ q``. Always 32 channels
    per head, whatever the UNet's ``attention_head_dim`` (a quirk of the original kept for weight compatibility).
    """

    def __init__(self, channels: int, heads: int = 8, dim_head: int = 32):
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        self.norm = ChannelLayerNorm(channels)
        self.to_qkv = nn.Linear(channels, heads * dim_head * 3, bias=False)
        self.to_out = nn.Linear(heads * dim_head, channels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # The same sums as ``(softmax_n(k)ᵀ v)ᵀ softmax_d(q)`` per head, arranged so that nothing 256 channels wide is
        # permuted and the 256-wide per-position output is never materialised: the output projection and scale are
        # folded into each head's ``d × C`` context, and one batched product with the queries gives the output. The
        # context is ``kᵀ (x W_vᵀ) W_out'``; where ``_folds_values`` counts fewer multiply-adds (the released 24² and
        # 12² levels) it is ``(kᵀ x)(W_vᵀ W_out')`` — no values at all, and the ``C × C`` product of weights made once
        # per call —, elsewhere (6², 3²) in the written order.
        batch, depth, height, width, channels = tokens.shape
        slices, positions = batch * depth, height * width
        normed = self.norm(tokens).reshape(slices, positions, channels)
        w_query, w_key, w_value = self.to_qkv.weight.chunk(3)
        dim = w_query.shape[0] // self.heads
        w_out = self.to_out.weight.view(channels, self.heads, dim) * self.scale
        values_folded = _folds_values(positions, channels, dim)
        if values_folded:
            w_fold = _value_output_product(w_value, w_out)  # (H, C, C)
        blocks = []
        # On CPU a few slices at a time (about 2304 tokens): at 24² the 256-wide queries and keys of all slices are
        # 14 MB each; in blocks they stay in cache (2x faster there, the same at the smaller levels).
        step = max(1, _PLANE_ATTENTION_TOKENS // positions) if tokens.device.type == "cpu" else slices
        for start in range(0, slices, step):
            block = normed[start : start + step]
            count = block.shape[0]
            query = _softmax_(torch.matmul(block, w_query.t()).view(count, positions, self.heads, -1), dim=-1)
            key = _softmax_(torch.matmul(block, w_key.t()), dim=1)  # (count, positions, H·d)
            if values_folded:
                summed = torch.bmm(key.transpose(1, 2), block).view(count, self.heads, dim, channels)
                folded = torch.matmul(summed, w_fold)
            else:
                value = torch.matmul(block, w_value.t())
                key, value = (t.view(count, positions, self.heads, -1).transpose(1, 2) for t in (key, value))
                context = torch.matmul(key.transpose(2, 3), value)  # (count, heads, d, e)
                folded = torch.einsum("shde,che->shdc", context, w_out)
            folded = folded.reshape(count, self.heads * dim, channels)
            blocks.append(torch.baddbmm(self.to_out.bias.view(1, 1, -1), query.reshape(count, positions, -1), folded))
        return tokens + torch.cat(blocks).view(tokens.shape)


def _folds_values(positions: int, channels: int, dim: int) -> bool:
    """Whether :class:`PlaneLinearAttention` computes each head's context as ``(kᵀ x)(W_vᵀ W_out')`` rather than
    ``(kᵀ (x W_vᵀ)) W_out'``: multiply-adds per slice and head ``d·N·C + d·C²`` against ``N·C·d + d·N·d + d·d·C``."""
    return channels * channels < dim * (positions + channels)


def _softmax_(scores: torch.Tensor, dim: int) -> torch.Tensor:
    """``scores.softmax(dim)``, in place in CPU float inference (``scores`` must be a temporary of the caller's).

    There as ``exp(s − max) / sum`` in three in-place passes: PyTorch's CPU softmax kernel took 2–3x as long on the
    plane attention's short rows (32 head channels; 576 positions with 256-wide rows).
    """
    if torch.is_grad_enabled() or not cpu_float_without_autocast(scores):
        return scores.softmax(dim)
    scores.sub_(scores.amax(dim, keepdim=True)).exp_()
    return scores.div_(scores.sum(dim, keepdim=True))


#: Tokens per block of :class:`PlaneLinearAttention` (4 slices at 24², 16 at 12²; measured fastest on AVX2 and
#: AVX-512).
_PLANE_ATTENTION_TOKENS = 2304
