"""A/B of the UNet's plane linear attention in one process: the per-head einsum formulation (the previous code, kept
here as the reference) against the fused one now in ``difftumor/models/unet_3d_blocks.py``, interleaved, on one
released-size UNet evaluation at 24³ (random weights), 2 threads; prints the median times, their ratio and the
largest output difference.

    python bench/bench_unet_attention.py
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/bench_unet_attention.py
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_models  # noqa: E402

from difftumor.models import unet_3d_blocks  # noqa: E402


def per_head_forward(self, tokens: torch.Tensor) -> torch.Tensor:
    batch, depth, height, width, channels = tokens.shape
    qkv = self.to_qkv(self.norm(tokens)).view(batch * depth, height * width, 3, self.heads, -1)
    query, key, value = qkv.unbind(2)
    query = query.softmax(dim=-1) * self.scale
    key = key.softmax(dim=1)
    context = torch.einsum("bnhd,bnhe->bhde", key, value)
    out = torch.einsum("bhde,bnhd->bnhe", context, query)
    return tokens + self.to_out(out.reshape(tokens.shape[:-1] + (-1,)))


def main() -> None:
    torch.set_num_threads(2)
    fused = unet_3d_blocks.PlaneLinearAttention.forward
    unet = bench_models._released_pipeline().unet
    sample, condition = torch.randn(1, 8, 24, 24, 24), torch.randn(1, 9, 24, 24, 24)
    times: dict[str, list[float]] = {"per_head": [], "fused": []}
    outputs = {}
    with torch.no_grad():
        for _ in range(8):
            for name, forward in (("per_head", per_head_forward), ("fused", fused)):
                unet_3d_blocks.PlaneLinearAttention.forward = forward
                start = time.perf_counter()
                outputs[name] = unet(sample, 3, condition).sample
                times[name].append(time.perf_counter() - start)
    unet_3d_blocks.PlaneLinearAttention.forward = fused
    medians = {name: statistics.median(values[1:]) for name, values in times.items()}
    print(
        {
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "unet_step_s": {name: round(value, 4) for name, value in medians.items()},
            "speedup": round(medians["per_head"] / medians["fused"], 2),
            "max_abs_difference": float((outputs["per_head"] - outputs["fused"]).abs().max()),
        }
    )


if __name__ == "__main__":
    main()
