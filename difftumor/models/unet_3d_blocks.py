"""Building blocks of the DiffTumor denoising UNet (a video-diffusion UNet whose "frames" are axial slices).

Tensors are ``(B, C, D, H, W)``. All convolutions act in-plane (kernels ``1 × k × k``); depth is mixed only by the
softmax attention along ``D`` (rotary embedding + T5 relative position bias) and by the bottleneck's full spatial
attention. See ``docs/original-difftumor.md`` §2.2 for the arithmetic this reproduces.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class InPlaneConv3d(nn.Module):
    """A ``1 × k × k`` 3-D convolution, run as a 2-D convolution over the depth slices folded into the batch.

    Equivalent to ``nn.Conv3d(in, out, (1, k, k), padding=(0, k//2, k//2))`` (the weight is stored without the unit
    depth axis). Folding is ~10-30x faster on CPU at latent sizes, where PyTorch would pick its slow im2col kernel.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, channels, depth, height, width = hidden_states.shape
        folded = hidden_states.transpose(1, 2).reshape(batch * depth, channels, height, width)
        folded = self.conv(folded)
        return folded.view(batch, depth, *folded.shape[1:]).transpose(1, 2)


class InPlaneDownsample(nn.Module):
    """Halve H and W with a ``1 × 4 × 4`` stride-``(1, 2, 2)`` convolution; depth is never downsampled."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 4, stride=2, padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, channels, depth, height, width = hidden_states.shape
        folded = self.conv(hidden_states.transpose(1, 2).reshape(batch * depth, channels, height, width))
        return folded.view(batch, depth, *folded.shape[1:]).transpose(1, 2)


class InPlaneUpsample(nn.Module):
    """Double H and W with a ``1 × 4 × 4`` stride-``(1, 2, 2)`` transposed convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, channels, depth, height, width = hidden_states.shape
        folded = self.conv(hidden_states.transpose(1, 2).reshape(batch * depth, channels, height, width))
        return folded.view(batch, depth, *folded.shape[1:]).transpose(1, 2)


class ChannelLayerNorm(nn.Module):
    """Normalise over channels at every voxel, ``(x − mean) / sqrt(var + eps) · weight`` (no bias)."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1, 1))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(hidden_states, dim=1, unbiased=False, keepdim=True)
        return (hidden_states - mean) / (var + self.eps).sqrt() * self.weight


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
        self.conv1 = InPlaneConv3d(in_channels, out_channels, 3)
        self.norm1 = nn.GroupNorm(norm_num_groups, out_channels, eps=norm_eps)
        self.conv2 = InPlaneConv3d(out_channels, out_channels, 3)
        self.norm2 = nn.GroupNorm(norm_num_groups, out_channels, eps=norm_eps)
        self.conv_shortcut = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        residual = hidden_states
        hidden_states = self.norm1(self.conv1(hidden_states))
        if self.time_emb_proj is not None and temb is not None:
            scale, shift = self.time_emb_proj(F.silu(temb))[:, :, None, None, None].chunk(2, dim=1)
            hidden_states = hidden_states * (scale + 1) + shift
        hidden_states = F.silu(hidden_states)
        hidden_states = F.silu(self.norm2(self.conv2(hidden_states)))
        if self.conv_shortcut is not None:
            residual = self.conv_shortcut(residual)
        return hidden_states + residual


class RotaryEmbedding(nn.Module):
    """Rotary position embedding over the last-but-one axis with interleaved pairs and 'lang' frequencies
    ``1 / 10000^(2i / dim)``. The frequencies are constants, not weights, so they are not saved."""

    def __init__(self, dim: int, theta: float = 10000.0):
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        """Rotate ``tensor`` ``(..., N, dim)`` by position along ``N``."""
        positions = torch.arange(tensor.shape[-2], device=tensor.device, dtype=torch.float32)
        angles = torch.outer(positions, self.freqs.float()).repeat_interleave(2, dim=-1)
        pairs = tensor.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return tensor * angles.cos().to(tensor.dtype) + rotated * angles.sin().to(tensor.dtype)


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


class SoftmaxAttention(nn.Module):
    """Multi-head softmax attention over tokens ``(B', N, C)``, optionally with rotary embedding and an additive
    ``(heads, N, N)`` bias. ``dim_head`` is 32 and both projections are bias-free, as in the original."""

    def __init__(self, channels: int, heads: int = 8, dim_head: int = 32, rotary: RotaryEmbedding | None = None):
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Linear(channels, heads * dim_head * 3, bias=False)
        self.to_out = nn.Linear(heads * dim_head, channels, bias=False)
        # Shared by all depth attentions of a UNet; kept out of this module's state (it has no weights).
        self._rotary = [rotary] if rotary is not None else []

    def forward(self, tokens: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        query, key, value = self.to_qkv(tokens).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        if self._rotary:
            query, key = self._rotary[0](query * self.scale), self._rotary[0](key)
            scale = 1.0
        else:
            scale = self.scale
        mask = bias.to(query.dtype) if bias is not None else None
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)
        return self.to_out(out.transpose(1, 2).flatten(2))


class DepthAttention(nn.Module):
    """Pre-normalised residual softmax attention along depth for every in-plane position (rotary + position bias)."""

    def __init__(self, channels: int, heads: int, dim_head: int, rotary: RotaryEmbedding):
        super().__init__()
        self.norm = ChannelLayerNorm(channels)
        self.attention = SoftmaxAttention(channels, heads, dim_head, rotary)

    def forward(self, hidden_states: torch.Tensor, position_bias: torch.Tensor) -> torch.Tensor:
        batch, channels, depth, height, width = hidden_states.shape
        tokens = self.norm(hidden_states).permute(0, 3, 4, 2, 1).reshape(batch * height * width, depth, channels)
        out = self.attention(tokens, position_bias)
        return out.view(batch, height, width, depth, channels).permute(0, 4, 3, 1, 2) + hidden_states


class PlaneAttention(nn.Module):
    """Pre-normalised residual full softmax attention over the H×W positions of each slice (the bottleneck)."""

    def __init__(self, channels: int, heads: int = 8, dim_head: int = 32):
        super().__init__()
        self.norm = ChannelLayerNorm(channels)
        self.attention = SoftmaxAttention(channels, heads, dim_head)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, channels, depth, height, width = hidden_states.shape
        tokens = self.norm(hidden_states).permute(0, 2, 3, 4, 1).reshape(batch * depth, height * width, channels)
        out = self.attention(tokens)
        return out.view(batch, depth, height, width, channels).permute(0, 4, 1, 2, 3) + hidden_states


class PlaneLinearAttention(nn.Module):
    """Pre-normalised residual linear attention over the H×W positions of each slice.

    Queries are soft-maxed over their head channels, keys over positions; ``out = (k vᵀ)ᵀ q``. Always 32 channels per
    head, whatever the UNet's ``attention_head_dim`` (a quirk of the original kept for weight compatibility).
    """

    def __init__(self, channels: int, heads: int = 8, dim_head: int = 32):
        super().__init__()
        self.heads = heads
        self.scale = dim_head**-0.5
        self.norm = ChannelLayerNorm(channels)
        self.to_qkv = nn.Conv3d(channels, heads * dim_head * 3, 1, bias=False)
        self.to_out = nn.Conv3d(heads * dim_head, channels, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, channels, depth, height, width = hidden_states.shape
        qkv = self.to_qkv(self.norm(hidden_states)).view(batch, 3, self.heads, -1, depth, height * width)
        query, key, value = qkv.unbind(1)
        query = query.softmax(dim=-3) * self.scale
        key = key.softmax(dim=-1)
        context = torch.einsum("bhdfn,bhefn->bhfde", key, value)
        out = torch.einsum("bhfde,bhdfn->bhefn", context, query)
        out = self.to_out(out.reshape(batch, -1, depth, height, width))
        return out + hidden_states
