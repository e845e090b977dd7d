"""Winograd F(4, 3) along depth for the autoencoder's stride-1 3×3×3 convolutions (CPU inference).

Four consecutive output planes of a 3×3×3 convolution take 4 × 3 = 12 in-plane 3×3 convolutions of input planes;
Winograd's minimal filtering F(4, 3) along depth (Lavin & Gray, "Fast algorithms for convolutional neural networks",
CVPR 2016) does the same with 6: the six input planes of a group are mixed into six planes (``Bᵀ``), each is
convolved in-plane with its own mix of the kernel's three depth slices (``G g``), and the six results are mixed
back into the four output planes (``Aᵀ``). Multiplications per output voxel fall from 27 to 13.5; the two mixes are
plain matrix products that stream the slab once each, and the in-plane convolutions are oneDNN's 2-D kernels on
plane batches, which run as fast per multiplication as its 3-D ones.

Why not all three axes: with 3-D tiles the remaining work is a matrix product of only 32–64 channels per tile
position, which is memory-bound on CPU (37–42 GFLOP/s measured against 130–190 for oneDNN's convolution).

Rounding: the transform coefficients (up to 8 and down to 1/24) make the float32 error about 3× that of the direct
convolution (2–3e-5 against 7–9e-6 on outputs of magnitude 5, measured against float64); the released-size decode
stays well inside the 1e-4 parity bound (``tests/models/test_released_size_fp64.py``). Only float32 and float64 are
accepted: in bfloat16 the same coefficients would cost two of its eight mantissa bits.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .inference_paths import cpu_float_without_autocast, derived_weights, has_hooks, plain_stride_one, scratch

#: F(4, 3) with interpolation points 0, ±1, ±2 and ∞ (Lavin & Gray 2016, section 4.2).
_INPUT_TRANSFORM = (  # Bᵀ: 6 input planes -> 6 mixed planes
    (4, 0, -5, 0, 1, 0),
    (0, -4, -4, 1, 1, 0),
    (0, 4, -4, -1, 1, 0),
    (0, -2, -1, 2, 1, 0),
    (0, 2, -1, -2, 1, 0),
    (0, 4, 0, -5, 0, 1),
)
_KERNEL_TRANSFORM = (  # G: 3 kernel depth slices -> 6 mixed kernels
    (1 / 4, 0, 0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0, 0, 1),
)
_OUTPUT_TRANSFORM = (  # Aᵀ: 6 in-plane results -> 4 output planes
    (1, 1, 1, 1, 1, 0),
    (0, 1, -1, 2, -2, 0),
    (0, 1, 1, 4, 4, 0),
    (0, 1, -1, 8, -8, 1),
)
#: Output planes per Winograd group (the slab lengths the caller picks must be multiples of it).
GROUP_PLANES = 4


def supports_depth_winograd(conv: nn.Conv3d, x: torch.Tensor) -> bool:
    """Whether :func:`conv3d_depth_winograd` computes ``conv`` on ``x``: unpadded stride-1 3×3×3, float32/64 on CPU,
    no autocast (which would run the in-plane part in bfloat16) and no hooks on ``conv`` (it is not called)."""
    return (
        conv.kernel_size == (3, 3, 3)
        and plain_stride_one(conv)
        and cpu_float_without_autocast(x)
        and conv.weight.dtype == x.dtype
        and not has_hooks(conv)
    )


@functools.lru_cache(maxsize=32)
def _group_matrices(groups: int, dtype: torch.dtype, with_bias: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-diagonal ``Bᵀ`` ``(6G, 4G+2)`` and ``Aᵀ`` ``(4G, 6G [+1])`` for ``G`` groups of planes, rows of ``Bᵀ`` (and
    columns of ``Aᵀ``) ordered mix-major so that each mix's ``G`` planes are one contiguous 2-D batch; the optional last
    column of ``Aᵀ`` adds the bias row."""
    input_transform = torch.tensor(_INPUT_TRANSFORM, dtype=torch.float64)
    output_transform = torch.tensor(_OUTPUT_TRANSFORM, dtype=torch.float64)
    mixes = len(_INPUT_TRANSFORM)
    b_t = torch.zeros(mixes * groups, GROUP_PLANES * groups + 2, dtype=torch.float64)
    a_t = torch.zeros(GROUP_PLANES * groups, mixes * groups + int(with_bias), dtype=torch.float64)
    for group in range(groups):
        first = GROUP_PLANES * group
        for mix in range(mixes):
            b_t[mix * groups + group, first : first + mixes] = input_transform[mix]
            a_t[first : first + GROUP_PLANES, mix * groups + group] = output_transform[:, mix]
    if with_bias:
        a_t[:, -1] = 1
    return b_t.to(dtype), a_t.to(dtype)


def depth_winograd_kernels(conv: nn.Conv3d) -> tuple[torch.Tensor, ...]:
    """The six in-plane kernels ``(C_out, C_in, 3, 3)`` (channels-last) of ``conv``, cached until its weight changes.

    Mixed in float64 and rounded once, so the kernels carry no more error than the weight itself.
    """
    weight = conv.weight

    def mix() -> tuple[torch.Tensor, ...]:
        kernel_transform = torch.tensor(_KERNEL_TRANSFORM, dtype=torch.float64, device=weight.device)
        with torch.no_grad():
            mixed = torch.einsum("md,oidhw->moihw", kernel_transform, weight.detach().double()).to(weight.dtype)
        return tuple(k.contiguous(memory_format=torch.channels_last) for k in mixed)

    return derived_weights(conv, weight, None, mix)


def conv3d_depth_winograd(
    conv: nn.Conv3d,
    padded: torch.Tensor,
    out: torch.Tensor,
    accumulate: bool = False,
    workspace: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write (or with ``accumulate`` add) ``conv(padded)`` into ``out`` by Winograd F(4, 3) along depth.

    Args:
        conv: a layer :func:`supports_depth_winograd` accepts (its bias is applied).
        padded: ``(B, C_in, P + 2, H + 2, W + 2)``, already padded on every side; ``P`` a multiple of 4.
        out: ``(B, C_out, P, H, W)`` channels-last, each batch item's planes contiguous (a depth slice of a
            channels-last volume is).
        workspace: scratch buffers kept between calls of the same shape (pass the same dict for every slab).
    """
    batch, _, padded_depth, padded_height, padded_width = padded.shape
    depth, height, width = padded_depth - 2, padded_height - 2, padded_width - 2
    if depth % GROUP_PLANES or out.shape[2:] != (depth, height, width):
        raise ValueError(f"depth Winograd needs a multiple of {GROUP_PLANES} planes and a matching output, got {depth}")
    groups = depth // GROUP_PLANES
    kernels = depth_winograd_kernels(conv)
    bias = conv.bias
    b_t, a_t = _group_matrices(groups, padded.dtype, bias is not None)
    out_channels = out.shape[1]
    for item in range(batch):
        planes = padded[item].permute(1, 2, 3, 0).contiguous().view(padded_depth, -1)
        mixed_input = scratch(workspace, "mixed_input", (b_t.shape[0], planes.shape[1]), planes)
        torch.mm(b_t, planes, out=mixed_input)
        products = scratch(workspace, "products", (a_t.shape[1], height * width * out_channels), out)
        if bias is not None:
            products[-1].view(-1, out_channels).copy_(bias.detach())
        for mix, kernel in enumerate(kernels):
            rows = slice(mix * groups, (mix + 1) * groups)
            batch_in = mixed_input[rows].view(groups, padded_height, padded_width, -1).permute(0, 3, 1, 2)
            batch_out = products[rows].view(groups, height, width, out_channels).permute(0, 3, 1, 2)
            batch_out.copy_(F.conv2d(batch_in, kernel))
        # A view, never a copy: ``.view`` raises rather than let the product land in a temporary.
        target = out[item].permute(1, 2, 3, 0).view(depth, -1)
        if accumulate:
            target.addmm_(a_t, products)
        else:
            torch.mm(a_t, products, out=target)
