"""Building blocks of the 3-D VQ-GAN autoencoder: same-padding convolutions, residual blocks, encoder and decoder.

The layer arithmetic reproduces the DiffTumor autoencoder (itself derived from TATS): convolutions pad explicitly
with replicate padding so that every stride-2 layer halves the size exactly, the normalisation is GroupNorm with
eps 1e-6, the activation is SiLU and the decoder applies its normalisation first and never returns to the encoder's
first width, exactly as the released autoencoder (its state-dict keys: ``tests/data/original-state-dict-keys.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import transposed_conv
from .checkpointing import call_block
from .inference_paths import cpu_float_without_autocast, has_hooks, plain_stride_one, scratch
from .normalization import GroupNorm, group_norm_scale_shift, uses_accurate_group_norm
from .winograd import GROUP_PLANES, conv3d_depth_winograd, supports_depth_winograd


def _same_padding(kernel_size: Sequence[int], stride: Sequence[int]) -> tuple[int, ...]:
    """``F.pad`` argument for 'same' output size: ``k - s`` per axis, the extra voxel in front, last axis first."""
    pads: list[int] = []
    for k, s in zip(reversed(kernel_size), reversed(stride)):
        total = k - s
        pads += [total // 2 + total % 2, total // 2]
    return tuple(pads)


def pad_volume(hidden_states: torch.Tensor, pads: tuple[int, ...], mode: str) -> torch.Tensor:
    """``F.pad(hidden_states, pads, mode=mode)`` for ``(B, C, D, H, W)``.

    For channels-last CPU tensors in inference, the inside is copied into a fresh channels-last tensor and the border
    filled from it (:func:`_fill_padding_`): PyTorch's replication padding of channels-last tensors is several times
    slower than that copy and fill, and the fast mode's window decode pads 25 times (``bench/bench_pad.py``).
    """
    channels_last = not hidden_states.is_contiguous() and hidden_states.is_contiguous(
        memory_format=torch.channels_last_3d
    )
    plain_pads = len(pads) == 6 and min(pads) >= 0
    if mode == "reflect" and plain_pads:  # too wide: F.pad raises its own error
        plain_pads = all(
            _reflect_fits(before, after, size)
            for before, after, size in zip(pads[0::2], pads[1::2], hidden_states.shape[:1:-1])
        )
    if not (
        channels_last
        and plain_pads
        and hidden_states.device.type == "cpu"
        and mode in _SLAB_PADDING_MODES
        and not torch.is_grad_enabled()
    ):
        return F.pad(hidden_states, pads, mode=mode)
    padded, inside = _padded_buffer(hidden_states, hidden_states.shape[2:], pads)
    inside.copy_(hidden_states)
    _fill_padding_(padded, pads, mode)
    return padded


def _padded_buffer(
    like: torch.Tensor,
    sizes: Sequence[int],
    pads: Sequence[int],
    workspace: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A channels-last ``(B, C, *sizes)`` tensor padded by ``pads`` (``F.pad`` order), and the view of its inside.

    With a ``workspace`` the buffer is the reused scratch tensor ``"padded"`` (:func:`scratch`); unfilled either way.
    """
    before, after = pads[4::-2], pads[5::-2]  # (D, H, W) order
    shape = (*like.shape[:2], *(n + b + a for n, b, a in zip(sizes, before, after)))
    padded = scratch(workspace, "padded", shape, like, torch.channels_last_3d)
    inside = padded[(slice(None), slice(None), *(slice(b, b + n) for b, n in zip(before, sizes)))]
    return padded, inside


def _reflect_fits(before: int, after: int, inside: int) -> bool:
    """Whether reflect padding of ``before``/``after`` planes around ``inside`` planes reads only inside planes."""
    return max(before, after) < inside


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(value, int):
        return (value, value, value)
    return tuple(int(v) for v in value)  # type: ignore[return-value]


class SamePadConv3d(nn.Module):
    """``Conv3d`` whose output has ``ceil(size / stride)`` voxels, padding explicitly (replicate by default)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding_mode: str = "replicate",
    ):
        super().__init__()
        kernel_size, stride = _triple(kernel_size), _triple(stride)
        self.padding = _same_padding(kernel_size, stride)
        self.padding_mode = padding_mode
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=0, bias=True)

    def pad(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """The explicitly padded input the convolution runs on (``hidden_states`` itself when no padding)."""
        if any(self.padding):
            hidden_states = pad_volume(hidden_states, self.padding, self.padding_mode)
        return hidden_states

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(hidden_states))

    def forward_channels_last(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with a channels-last result.

        A one-channel input is convolved on CPU as one 2-D convolution of every output plane's ``k`` depth
        neighbours stacked as channels: oneDNN has no fast 3-D kernel for one input channel (PyTorch falls back to
        its reference one), and the 2-D kernel writes channels-last directly (3.7x faster at 96³, same sums).
        """
        conv = self.conv
        one_channel = conv.in_channels == 1 and hidden_states.device.type == "cpu"
        if not one_channel or not plain_stride_one(conv) or has_hooks(self, conv):
            return self(hidden_states).contiguous(memory_format=torch.channels_last_3d)
        padded = self.pad(hidden_states)
        batch, _, padded_depth, padded_height, padded_width = padded.shape
        taps = conv.kernel_size[0]
        depth = padded_depth - taps + 1
        stacked = padded[:, 0].unfold(1, taps, 1).permute(0, 1, 4, 2, 3)  # (B, D, k, H', W'), a view
        stacked = stacked.reshape(batch * depth, taps, padded_height, padded_width)
        images = F.conv2d(stacked.contiguous(memory_format=torch.channels_last), conv.weight[:, 0], conv.bias)
        tokens = images.permute(0, 2, 3, 1).reshape(batch, depth, *images.shape[2:], -1)  # (B, D, H, W, C), a view
        return tokens.permute(0, 4, 1, 2, 3)


class SamePadConvTranspose3d(nn.Module):
    """``ConvTranspose3d`` that exactly multiplies the size by ``stride`` (replicate-pads the input first)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 4,
        stride: int | Sequence[int] = 2,
        padding_mode: str = "replicate",
    ):
        super().__init__()
        kernel_size, stride = _triple(kernel_size), _triple(stride)
        self.padding = _same_padding(kernel_size, stride)
        self.padding_mode = padding_mode
        self.convt = nn.ConvTranspose3d(
            in_channels, out_channels, kernel_size, stride=stride, padding=tuple(k - 1 for k in kernel_size), bias=True
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        padded = pad_volume(hidden_states, self.padding, self.padding_mode)
        layer = self.convt
        if padded.device.type in transposed_conv.DEVICE_TYPES and not torch.is_grad_enabled() and not has_hooks(layer):
            # Deterministic and fast on cuDNN (see models/transposed_conv.py).
            by_phases = transposed_conv.conv_transpose3d_by_phases
            return by_phases(padded, layer.weight, layer.bias, layer.stride, layer.padding)
        return layer(padded)


class ResnetBlock3D(nn.Module):
    """Pre-activation residual block ``x + conv(silu(norm(conv(silu(norm(x))))))`` with 3×3×3 convolutions."""

    def __init__(
        self,
        channels: int,
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        padding_mode: str = "replicate",
    ):
        super().__init__()
        self.norm1 = GroupNorm(norm_num_groups, channels, eps=norm_eps)
        self.conv1 = SamePadConv3d(channels, channels, 3, padding_mode=padding_mode)
        self.norm2 = GroupNorm(norm_num_groups, channels, eps=norm_eps)
        self.conv2 = SamePadConv3d(channels, channels, 3, padding_mode=padding_mode)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # In-place activations and sum: at 96³ every avoided 100 MB allocation saves tens of milliseconds on CPU
        # (autograd allows it: neither GroupNorm nor the convolutions save their outputs for backward). One step per
        # statement, padding included, so that each activation is released before the next one is allocated: at
        # most three 96³ activations are alive at once (input, padded, output) instead of five, which is what keeps
        # a released-size decode under 1 GB.
        residual = hidden_states
        for norm, conv in ((self.norm1, self.conv1), (self.norm2, self.conv2)):
            hidden_states = norm(hidden_states)
            hidden_states = F.silu(hidden_states, inplace=True)
            hidden_states = conv.pad(hidden_states)
            hidden_states = conv.conv(hidden_states)
        return hidden_states.add_(residual)

    def forward_in_place_(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Inference-only :meth:`forward` that may write its result into ``hidden_states`` (and returns it).

        Each GroupNorm → SiLU → padding → convolution runs over slabs of a few depth planes (with a one-plane halo)
        that stay in cache, so the normalised and padded activations are never materialised whole: one 96³
        activation is allocated per block instead of four, and three memory passes per convolution are saved.
        The same function as :meth:`forward` (the convolution of a slab sees the same neighbourhood); slabs of a
        multiple of 4 planes convolve by Winograd F(4, 3) along depth (:mod:`.winograd`, half the multiplications),
        so the outputs agree to float32 rounding, about 2-3x that of the direct convolution. Callers must own
        ``hidden_states`` (the decoder and encoder do). Any hook on the block or its layers sends the call to
        :meth:`forward`, whose layers are called as usual.
        """
        local_padding = self.conv1.padding_mode in _SLAB_PADDING_MODES
        fast = local_padding and uses_accurate_group_norm(hidden_states) and not torch.is_grad_enabled()
        if not fast or has_hooks(*self.modules()):
            return self.forward(hidden_states)
        middle = self._norm_act_conv_by_slabs(hidden_states, self.norm1, self.conv1, torch.empty_like(hidden_states))
        return self._norm_act_conv_by_slabs(middle, self.norm2, self.conv2, hidden_states, accumulate=True)

    @staticmethod
    def _norm_act_conv_by_slabs(
        source: torch.Tensor, norm: GroupNorm, conv: SamePadConv3d, out: torch.Tensor, accumulate: bool = False
    ) -> torch.Tensor:
        scale, shift = group_norm_scale_shift(source, norm.num_groups, norm.weight, norm.bias, norm.eps)
        winograd = supports_depth_winograd(conv.conv, source)

        def normalise_into(inside: torch.Tensor, low: int, high: int) -> None:
            F.silu(torch.addcmul(shift, source[:, :, low:high], scale, out=inside), inplace=True)

        workspace: dict[str, torch.Tensor] = {}
        for start, stop, padded in padded_slabs(source, conv, _SLAB_PLANES, normalise_into, workspace):
            if winograd and (stop - start) % GROUP_PLANES == 0:
                conv3d_depth_winograd(conv.conv, padded, out[:, :, start:stop], accumulate, workspace)
                continue
            result = conv.conv(padded)
            if accumulate:
                out[:, :, start:stop].add_(result)
            else:
                out[:, :, start:stop].copy_(result)
        return out


def padded_slabs(
    source: torch.Tensor,
    conv: SamePadConv3d,
    step: int,
    fill: Callable[[torch.Tensor, int, int], None],
    workspace: dict[str, torch.Tensor],
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``(start, stop, padded)`` for slabs of ``step`` output planes of ``conv`` over ``source`` ``(B, C, D, H, W)``.

    ``padded`` is the input the convolution needs for output planes ``start:stop`` — source planes with a halo,
    padded in-plane and at the volume's ends as ``conv`` pads — in one channels-last buffer reused by every slab
    (no per-slab allocation, whose page faults cost every time, and no separate padding pass).
    ``fill(inside, low, high)`` writes (a function of) source planes ``low:high`` into ``inside``.
    """
    depth, height, width = source.shape[2:]
    *in_plane, front, back = conv.padding  # F.pad order: W, H, then D
    for start in range(0, depth, step):
        stop = min(start + step, depth)
        low, high = max(start - front, 0), min(stop + back, depth)
        # The convolution's padding in-plane always, along depth only where the slab touches the volume's ends
        # (elsewhere the halo is real data).
        pads = (*in_plane, front if start == 0 else 0, back if stop == depth else 0)
        padded, inside = _padded_buffer(source, (high - low, height, width), pads, workspace)
        fill(inside, low, high)
        _fill_padding_(padded, pads, conv.padding_mode)
        yield start, stop, padded


def conv_by_taps(conv: SamePadConv3d, source: torch.Tensor) -> torch.Tensor:
    """``conv(source)`` for a stride-1 layer with few output channels (the decoder's last), in inference on CPU.

    Channels are contracted first — one matrix product gives every output channel's value for every kernel tap
    at every voxel — and the taps' shifted planes are summed after. oneDNN vectorises over output channels, so a
    one-channel output runs its kernels at a fraction of their speed; contracting channels first avoids that on
    AVX-512 and AVX2 alike (the decoder's share of ``bench/bench_models.py``), and rounds less (one 32-term dot
    product per tap).
    """
    layer = conv.conv
    batch, _, depth, height, width = source.shape
    kernel_depth, kernel_height, kernel_width = layer.kernel_size
    weight = layer.weight.detach().permute(0, 2, 3, 4, 1).reshape(-1, layer.in_channels)  # (C_out·taps, C_in)
    out = source.new_empty(batch, layer.out_channels, depth, height, width)
    if layer.bias is not None:
        out.copy_(layer.bias.detach().view(1, -1, 1, 1, 1).expand_as(out))
    else:
        out.zero_()

    def copy_into(inside: torch.Tensor, low: int, high: int) -> None:
        inside.copy_(source[:, :, low:high])

    workspace: dict[str, torch.Tensor] = {}
    for start, stop, padded in padded_slabs(source, conv, _SLAB_PLANES, copy_into, workspace):
        planes = padded.shape[2]
        for item in range(batch):
            voxels = padded[item].permute(1, 2, 3, 0).reshape(-1, layer.in_channels)  # a view: channels-last
            taps = torch.mm(weight, voxels.t()).view(
                layer.out_channels, kernel_depth, kernel_height, kernel_width, planes, *padded.shape[3:]
            )
            target = out[item, :, start:stop]
            for a in range(kernel_depth):
                for b in range(kernel_height):
                    for c in range(kernel_width):
                        target.add_(taps[:, a, b, c, a : a + stop - start, b : b + height, c : c + width])
    return out


def _fill_padding_(padded: torch.Tensor, pads: tuple[int, ...], mode: str) -> None:
    """Fill the ``pads`` border (``F.pad`` order) of ``padded`` from its inside, as ``F.pad(inside, pads, mode)`` would.

    Axis by axis, last first, each over the full extent of the others: the corners come out as ``F.pad``'s.
    """
    for axis, (before, after) in zip((4, 3, 2), zip(pads[0::2], pads[1::2])):
        size = padded.shape[axis]
        if mode == "reflect" and not _reflect_fits(before, after, size - before - after):
            # F.pad refuses this too; reading on would mirror the other, still unfilled border.
            raise ValueError(f"reflect padding of {max(before, after)} needs more than {size - before - after} planes")
        # Border planes read only inside planes (the edge, or their mirror image), so their order does not matter.
        for offset in range(before):
            target = padded.narrow(axis, before - 1 - offset, 1)
            _fill_one_(target, padded, axis, mode, before, before + 1 + offset)
        for offset in range(after):
            target = padded.narrow(axis, size - after + offset, 1)
            _fill_one_(target, padded, axis, mode, size - after - 1, size - after - 2 - offset)


def _fill_one_(target: torch.Tensor, padded: torch.Tensor, axis: int, mode: str, edge: int, mirror: int) -> None:
    if mode == "replicate":
        target.copy_(padded.narrow(axis, edge, 1))
    elif mode == "reflect":
        target.copy_(padded.narrow(axis, mirror, 1))
    elif mode == "constant":
        target.zero_()
    else:
        raise ValueError(f"slab padding does not support padding_mode={mode!r}")


# Output planes per slab of the slab paths, a multiple of Winograd's 4-plane groups: 16 planes at 96² (18 MiB at 32
# channels) measured fastest for the direct convolution, and 8 and 16 alike for Winograd at 96² and 48² on AVX2 and
# AVX-512 (24 planes or whole 48³ volumes 15-60 % slower).
_SLAB_PLANES = 16
# Padding modes whose value at a slab's edge depends only on the halo (not circular: it wraps the volume).
_SLAB_PADDING_MODES = ("replicate", "reflect", "constant")


def _conv_by_taps_applies(conv: SamePadConv3d, hidden_states: torch.Tensor) -> bool:
    layer = conv.conv
    return (
        not torch.is_grad_enabled()
        and layer.out_channels <= 2
        and plain_stride_one(layer)
        and conv.padding_mode in _SLAB_PADDING_MODES
        and cpu_float_without_autocast(hidden_states)
        and hidden_states.is_contiguous(memory_format=torch.channels_last_3d)
        and not has_hooks(conv, layer)
    )


def _call_resnet(owner: nn.Module, resnet: ResnetBlock3D, hidden_states: torch.Tensor) -> torch.Tensor:
    """The block on activations the caller owns: in place by slabs in inference, else the autograd path."""
    if torch.is_grad_enabled():
        return call_block(owner, resnet, hidden_states)
    return resnet.forward_in_place_(hidden_states)


def _levels(factors: Sequence[int]) -> list[tuple[int, int, int]]:
    """Per-level strides for per-axis down/up-sampling factors (powers of two), e.g. (4, 4, 2) -> 2 levels."""
    counts = [int(math.log2(f)) for f in factors]
    if any(2**c != f for c, f in zip(counts, factors)):
        raise ValueError(f"downsample factors must be powers of two, got {tuple(factors)}")
    strides = []
    for level in range(max(counts)):
        strides.append(tuple(2 if c > level else 1 for c in counts))
    return strides  # type: ignore[return-value]


class Encoder3D(nn.Module):
    """``(B, C_in, D, H, W)`` -> ``(B, hidden·2^L, D/f_d, H/f_h, W/f_w)`` with ``L = log2(max(downsample))`` levels.

    Each level is a stride-2 4×4×4 convolution that doubles the width followed by one residual block; a final
    GroupNorm + SiLU closes the encoder.
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden_channels: int = 16,
        downsample: Sequence[int] = (4, 4, 4),
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        padding_mode: str = "replicate",
    ):
        super().__init__()
        self.conv_in = SamePadConv3d(in_channels, hidden_channels, 3, padding_mode=padding_mode)
        self.down_blocks = nn.ModuleList()
        channels = hidden_channels
        for stride in _levels(downsample):
            block = nn.Module()
            block.downsample = SamePadConv3d(channels, channels * 2, 4, stride=stride, padding_mode=padding_mode)
            block.resnet = ResnetBlock3D(channels * 2, norm_num_groups, norm_eps, padding_mode)
            self.down_blocks.append(block)
            channels *= 2
        self.norm_out = GroupNorm(norm_num_groups, channels, eps=norm_eps)
        self.out_channels = channels
        self.gradient_checkpointing = False

    def forward(self, sample: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        # A one-channel input is contiguous in both layouts, so a convolution cannot see which one the caller chose
        # (and answers contiguous): ask for channels-last explicitly, or the whole encoder runs in the slow layout.
        hidden_states = self.conv_in.forward_channels_last(sample) if channels_last else self.conv_in(sample)
        for block in self.down_blocks:
            hidden_states = call_block(self, block.downsample, hidden_states)
            hidden_states = _call_resnet(self, block.resnet, hidden_states)
        return F.silu(self.norm_out(hidden_states), inplace=True)


class Decoder3D(nn.Module):
    """``(B, hidden·2^L, d, h, w)`` -> ``(B, C_out, d·f_d, h·f_h, w·f_w)``, the mirror of :class:`Encoder3D`.

    GroupNorm + SiLU come first; each level is a stride-2 transposed convolution and two residual blocks. Level ``i``
    outputs ``hidden·2^(L−i)`` channels, so the first level keeps the latent width and the decoder never narrows to
    ``hidden`` (unlike the encoder's first convolution).
    """

    def __init__(
        self,
        out_channels: int = 1,
        hidden_channels: int = 16,
        upsample: Sequence[int] = (4, 4, 4),
        norm_num_groups: int = 32,
        norm_eps: float = 1e-6,
        padding_mode: str = "replicate",
    ):
        super().__init__()
        strides = _levels(upsample)
        num_levels = len(strides)
        channels = hidden_channels * 2**num_levels
        self.in_channels = channels
        self.norm_in = GroupNorm(norm_num_groups, channels, eps=norm_eps)
        self.up_blocks = nn.ModuleList()
        for level, stride in enumerate(strides):
            block_out = hidden_channels * 2 ** (num_levels - level)
            block = nn.Module()
            block.upsample = SamePadConvTranspose3d(channels, block_out, 4, stride=stride, padding_mode=padding_mode)
            block.resnets = nn.ModuleList(
                [ResnetBlock3D(block_out, norm_num_groups, norm_eps, padding_mode) for _ in range(2)]
            )
            self.up_blocks.append(block)
            channels = block_out
        self.conv_out = SamePadConv3d(channels, out_channels, 3, padding_mode=padding_mode)
        self.gradient_checkpointing = False

    def forward(self, latents: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        if channels_last:
            latents = latents.contiguous(memory_format=torch.channels_last_3d)
        hidden_states = F.silu(self.norm_in(latents), inplace=True)
        for block in self.up_blocks:
            hidden_states = call_block(self, block.upsample, hidden_states)
            for resnet in block.resnets:
                hidden_states = _call_resnet(self, resnet, hidden_states)
        if _conv_by_taps_applies(self.conv_out, hidden_states):
            return conv_by_taps(self.conv_out, hidden_states)
        return self.conv_out(hidden_states)
