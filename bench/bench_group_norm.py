"""What accurate channels-last GroupNorm costs: the released-size decode with it and with PyTorch's own kernel.

Random released-size VQ-GAN, one 8 × 24³ latent -> 96³ decode (fp32, channels-last), medians of ``--repeats`` runs,
both variants interleaved in one process; and the error of each against a float64 decode of the same latent.

    python bench/bench_group_norm.py --threads 2 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-float64", action="store_true", help="skip the (slow) float64 reference")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from difftumor import VQModel3D
    from difftumor.models.normalization import native_group_norm

    torch.manual_seed(0)
    model = VQModel3D().eval()
    latents = torch.rand(1, 8, 24, 24, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    times = {"accurate": [], "native": []}
    outputs = {}
    with torch.no_grad():
        for _ in range(args.repeats + 1):  # the first round warms up
            for name in times:
                with native_group_norm() if name == "native" else contextlib.nullcontext():
                    start = time.perf_counter()
                    outputs[name] = model.decode(latents, force_not_quantize=True).sample
                    times[name].append(time.perf_counter() - start)
        result = {
            "cpu": torch.backends.cpu.get_cpu_capability(),
            "threads": args.threads,
            **{f"decode_{name}_s": round(statistics.median(values[1:]), 3) for name, values in times.items()},
        }
        result["cost_ratio"] = round(result["decode_accurate_s"] / result["decode_native_s"], 2)
        if not args.no_float64:
            reference = VQModel3D.from_config(model.config).eval().double()
            reference.load_state_dict(model.state_dict())
            exact = reference.decode(latents.double(), force_not_quantize=True).sample
            for name, output in outputs.items():
                result[f"error_{name}"] = float(f"{(output.double() - exact).abs().max().item():.2e}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
