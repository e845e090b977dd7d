"""A/B in one process: the UNet's attention with its heads laid out as in the third session (kept here as the
reference) against the code in ``difftumor/models/unet_3d_blocks.py``.

Reference: depth attention with folded projection rows ordered (q/k/v, head, d), so that every block's queries, keys
and values were copied into head-major order, in blocks of 128 positions; plane linear attention with one product
over all head pairs (its diagonal blocks kept). Current: rows ordered (head, q/k/v, d) (strided views, no copies),
blocks of 64 positions; keys and values projected straight into head-major order and one product per head.

Two released-size UNets with the same random weights, one evaluation at 24³ each, interleaved; prints the median
times, their ratio and the largest output difference (the same sums, so 0 is expected).

    python bench/bench_unet_heads.py --threads 2 --repeats 9
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/bench_unet_heads.py --threads 2 --repeats 9
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import types

import torch

from difftumor import UNet3DInpaintModel
from difftumor.models import unet_3d_blocks as blocks

REFERENCE_DEPTH_POSITIONS = 128


def reference_fold(self, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    depth = cos.shape[0]
    query, key, value = self.to_qkv.weight.view(3, self.heads, -1, self.to_qkv.in_features).unbind(0)
    cos, sin = cos[:, None, :, None], sin[:, None, :, None]
    rotated_query = (cos * query + sin * blocks._pair_rotation(query)) * self.scale
    rotated_key = cos * key + sin * blocks._pair_rotation(key)
    shape = (depth, -1, self.to_qkv.in_features)
    return torch.cat(
        [rotated_query.reshape(shape), rotated_key.reshape(shape), value.reshape(1, *shape[1:]).expand(shape)], 1
    )


def reference_depth_forward(self, tokens, position_bias, rotary):
    batch, depth, height, width, channels = tokens.shape
    positions, heads = batch * height * width, self.heads
    columns = self.norm(tokens).transpose(0, 1).reshape(depth, positions, channels)
    weights = self._depth_weights(*rotary).transpose(1, 2)
    pieces = []
    for start in range(0, positions, REFERENCE_DEPTH_POSITIONS):
        block = columns[:, start : start + REFERENCE_DEPTH_POSITIONS]
        count = block.shape[1]
        qkv = torch.bmm(block, weights)
        query, key, value = (
            part.reshape(depth, count * heads, -1).transpose(0, 1)  # a copy: (count, heads) do not merge
            for part in qkv.view(depth, count, 3, heads, -1).unbind(2)
        )
        logits = torch.bmm(query, key.transpose(1, 2)).view(count, heads, depth, depth) + position_bias
        attended = torch.bmm(logits.softmax(dim=-1).view(count * heads, depth, depth), value)
        attended = attended.view(count, heads, depth, -1).permute(2, 0, 1, 3).reshape(depth, count, -1)
        pieces.append(self.to_out(attended))
    out = torch.cat(pieces, dim=1)
    return tokens + out.view(depth, batch, height, width, channels).transpose(0, 1)


def reference_linear_forward(self, tokens):
    batch, depth, height, width, channels = tokens.shape
    slices, positions = batch * depth, height * width
    normed = self.norm(tokens).reshape(slices, positions, channels)
    w_query, w_key, w_value = self.to_qkv.weight.chunk(3)
    dim = w_query.shape[0] // self.heads
    w_out = self.to_out.weight.view(channels, self.heads, dim) * self.scale
    pieces = []
    step = max(1, blocks._PLANE_ATTENTION_TOKENS // positions)
    for start in range(0, slices, step):
        block = normed[start : start + step]
        count = block.shape[0]
        query = torch.matmul(block, w_query.t()).view(count, positions, self.heads, -1).softmax(dim=-1)
        key = torch.matmul(block, w_key.t()).softmax(dim=1)
        value = torch.matmul(block, w_value.t())
        pairs = torch.bmm(key.transpose(1, 2), value).view(count, self.heads, dim, self.heads, dim)
        context = torch.diagonal(pairs, dim1=1, dim2=3)
        folded = torch.einsum("sdeh,che->shdc", context, w_out).reshape(count, self.heads * dim, channels)
        pieces.append(torch.baddbmm(self.to_out.bias.view(1, 1, -1), query.reshape(count, positions, -1), folded))
    return tokens + torch.cat(pieces).view(tokens.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    current = UNet3DInpaintModel().eval()
    reference = UNet3DInpaintModel.from_config(current.config).eval()
    reference.load_state_dict(current.state_dict())
    for module in reference.modules():
        if isinstance(module, blocks.DepthAttention):
            module._fold_rotary = types.MethodType(reference_fold, module)
            module.forward = types.MethodType(reference_depth_forward, module)
        elif isinstance(module, blocks.PlaneLinearAttention):
            module.forward = types.MethodType(reference_linear_forward, module)
    sample, condition = torch.randn(1, 8, 24, 24, 24), torch.randn(1, 9, 24, 24, 24)
    times: dict[str, list[float]] = {"reference": [], "current": []}
    with torch.no_grad():
        difference = (reference(sample, 3, condition).sample - current(sample, 3, condition).sample).abs().max()
        for repeat in range(args.repeats):
            pair = (("reference", reference), ("current", current))
            for name, model in pair[:: 1 if repeat % 2 == 0 else -1]:
                start = time.perf_counter()
                model(sample, 3, condition)
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(
        json.dumps(
            {
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "threads": args.threads,
                **{f"{name}_s": round(value, 4) for name, value in medians.items()},
                "speed_up": round(medians["reference"] / medians["current"], 3),
                "max_abs_difference": float(difference),
            }
        )
    )


if __name__ == "__main__":
    main()
