"""UNet3DInpaintModel: DiffTumor's conditional denoiser of 3-D latents, as a diffusers model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .checkpointing import call_block
from .loading import AlignedLoadingMixin
from .unet_3d_blocks import (
    DepthAttention,
    InPlaneConv,
    InPlaneDownsample,
    InPlaneUpsample,
    PlaneAttention,
    PlaneLinearAttention,
    RelativePositionBias,
    ResnetBlockInPlane,
    RotaryEmbedding,
)

# The spatial attentions of the original always use 32 channels per head, whatever `attention_head_dim` says.
_SPATIAL_HEAD_DIM = 32


@dataclass
class UNet3DInpaintOutput(BaseOutput):
    """Output of :class:`UNet3DInpaintModel`.

    Args:
        sample (`torch.Tensor` of shape `(B, out_channels, D, H, W)`): the prediction (ε for DiffTumor checkpoints).
    """

    sample: torch.Tensor


class _UNetLevel(nn.Module):
    """Two resnets, in-plane linear attention, depth attention, then an optional in-plane resampling."""

    def __init__(self, in_channels, out_channels, temb_channels, groups, heads, head_dim, resample):
        super().__init__()
        self.resnets = nn.ModuleList(
            [
                ResnetBlockInPlane(in_channels, out_channels, temb_channels, groups),
                ResnetBlockInPlane(out_channels, out_channels, temb_channels, groups),
            ]
        )
        self.plane_attention = PlaneLinearAttention(out_channels, heads, _SPATIAL_HEAD_DIM)
        self.depth_attention = DepthAttention(out_channels, heads, head_dim)
        self.resample = resample(out_channels) if resample is not None else None

    def forward(self, tokens, temb, position_bias, rotary):
        for resnet in self.resnets:
            tokens = resnet(tokens, temb)
        tokens = self.plane_attention(tokens)
        return self.depth_attention(tokens, position_bias, rotary)


class UNet3DInpaintModel(AlignedLoadingMixin, ModelMixin, ConfigMixin):
    r"""Conditional 3-D UNet of DiffTumor: predicts the noise of a tumour latent given the masked-CT latent and mask.

    ``forward`` concatenates ``condition`` (masked-CT latent + tumour mask at latent size) to the noisy ``sample`` on
    the channel axis, exactly as the original. Depth (the axial axis, ``D``) is never downsampled; all convolutions
    are in-plane and depth is mixed by attention.

    Parameters:
        sample_channels (`int`, defaults to 8): channels of the noisy latent.
        condition_channels (`int`, defaults to 9): channels of ``condition`` (8 latent + 1 mask).
        out_channels (`int`, defaults to 8): channels of the prediction.
        base_channels (`int`, defaults to 24): width of the first level (``dim`` of the original).
        channel_multipliers (`tuple[int]`, defaults to `(1, 2, 4, 8)`): width of each level relative to
            ``base_channels``; every level but the last halves H and W.
        attention_heads (`int`, defaults to 8): heads of every attention.
        attention_head_dim (`int`, defaults to 32): channels per head of the depth attentions (rotary dimension too).
        norm_num_groups (`int`, defaults to 8): GroupNorm groups of the resnet blocks.
        init_kernel_size (`int`, defaults to 7): in-plane kernel of the first convolution.
        num_relative_position_buckets (`int`, defaults to 32) and relative_position_max_distance (`int`, defaults
            to 32): T5 relative position bias of the depth attention.
    """

    _supports_gradient_checkpointing = True

    # Layer construction in the original's order: the converted checkpoints' state-dict keys depend on it.
    @register_to_config
    def __init__(
        self,
        sample_channels: int = 8,
        condition_channels: int = 9,
        out_channels: int = 8,
        base_channels: int = 24,
        channel_multipliers: Sequence[int] = (1, 2, 4, 8),
        attention_heads: int = 8,
        attention_head_dim: int = 32,
        norm_num_groups: int = 8,
        init_kernel_size: int = 7,
        num_relative_position_buckets: int = 32,
        relative_position_max_distance: int = 32,
    ):
        super().__init__()
        heads, head_dim, groups = attention_heads, attention_head_dim, norm_num_groups
        widths = [base_channels] + [base_channels * m for m in channel_multipliers]
        pairs = list(zip(widths[:-1], widths[1:]))
        temb_channels = base_channels * 4

        self.rotary = RotaryEmbedding(min(32, head_dim))
        self.position_bias = RelativePositionBias(heads, num_relative_position_buckets, relative_position_max_distance)
        self.conv_in = InPlaneConv(sample_channels + condition_channels, base_channels, init_kernel_size)
        self.depth_attention_in = DepthAttention(base_channels, heads, head_dim)
        self.time_proj = Timesteps(base_channels, flip_sin_to_cos=False, downscale_freq_shift=1)
        self.time_embedding = TimestepEmbedding(base_channels, temb_channels, act_fn="gelu")

        self.down_blocks = nn.ModuleList()
        for index, (width_in, width_out) in enumerate(pairs):
            last = index == len(pairs) - 1
            self.down_blocks.append(
                _UNetLevel(
                    width_in,
                    width_out,
                    temb_channels,
                    groups,
                    heads,
                    head_dim,
                    None if last else InPlaneDownsample,
                )
            )

        mid = widths[-1]
        self.mid_resnet_1 = ResnetBlockInPlane(mid, mid, temb_channels, groups)
        self.mid_plane_attention = PlaneAttention(mid, heads, _SPATIAL_HEAD_DIM)
        self.mid_depth_attention = DepthAttention(mid, heads, head_dim)
        self.mid_resnet_2 = ResnetBlockInPlane(mid, mid, temb_channels, groups)

        self.up_blocks = nn.ModuleList()
        for index, (width_in, width_out) in enumerate(reversed(pairs)):
            last = index == len(pairs) - 1
            self.up_blocks.append(
                _UNetLevel(
                    width_out * 2,
                    width_in,
                    temb_channels,
                    groups,
                    heads,
                    head_dim,
                    None if last else InPlaneUpsample,
                )
            )

        self.resnet_out = ResnetBlockInPlane(base_channels * 2, base_channels, None, groups)
        self.conv_out = nn.Linear(base_channels, out_channels)
        self.gradient_checkpointing = False

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int,
        condition: torch.Tensor,
        return_dict: bool = True,
    ) -> UNet3DInpaintOutput | tuple[torch.Tensor]:
        """Predict from a noisy latent.

        Args:
            sample (`torch.Tensor` of shape `(B, sample_channels, D, H, W)`): noisy normalised latent.
            timestep (`torch.Tensor` of shape `(B,)` or `()`, or `int`): integer diffusion step in
                ``[0, num_train_timesteps)``, fed unscaled to the sinusoidal embedding.
            condition (`torch.Tensor` of shape `(B, condition_channels, D, H, W)`): masked-CT latent (normalised)
                and tumour mask at latent size in {-1, +1}, concatenated on channels.
            return_dict (`bool`): return a :class:`UNet3DInpaintOutput` instead of a tuple.

        Returns:
            :class:`UNet3DInpaintOutput` with ``sample`` of shape ``(B, out_channels, D, H, W)``.
        """
        batch, _, depth, height, width = sample.shape
        if condition.shape[0] != batch or condition.shape[2:] != sample.shape[2:]:
            raise ValueError(f"condition {tuple(condition.shape)} does not match sample {tuple(sample.shape)}")
        downsamples = sum(block.resample is not None for block in self.down_blocks)
        if height % 2**downsamples or width % 2**downsamples:
            raise ValueError(f"H and W must be divisible by {2**downsamples}, got {height}×{width}")
        timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(batch)

        position_bias = self.position_bias(depth, device=sample.device).to(sample.dtype)
        rotary = self.rotary.tables(depth, sample.device, sample.dtype)
        # Tokens (B, D, H, W, C) from here on; see unet_3d_blocks.
        tokens = self.conv_in(torch.cat([sample, condition], dim=1).permute(0, 2, 3, 4, 1).contiguous())
        first_features = tokens
        tokens = self.depth_attention_in(tokens, position_bias, rotary)
        temb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))

        skips = []
        for block in self.down_blocks:
            tokens = call_block(self, block, tokens, temb, position_bias, rotary)
            skips.append(tokens)
            if block.resample is not None:
                tokens = block.resample(tokens)

        tokens = self.mid_resnet_1(tokens, temb)
        tokens = self.mid_plane_attention(tokens)
        tokens = self.mid_depth_attention(tokens, position_bias, rotary)
        tokens = self.mid_resnet_2(tokens, temb)

        for block in self.up_blocks:
            tokens = torch.cat([tokens, skips.pop()], dim=-1)
            tokens = call_block(self, block, tokens, temb, position_bias, rotary)
            if block.resample is not None:
                tokens = block.resample(tokens)

        tokens = self.resnet_out(torch.cat([tokens, first_features], dim=-1))
        prediction = self.conv_out(tokens).permute(0, 4, 1, 2, 3).contiguous()
        if not return_dict:
            return (prediction,)
        return UNet3DInpaintOutput(sample=prediction)
