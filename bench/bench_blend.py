"""The blend weights on a CPU: SciPy's Gaussian filter of the whole 96³ mask (what the pipeline ran before) against
:func:`difftumor.pipelines.tumor_inpaint.blending.gaussian_blur_mask` (the same filter in torch on the tumour's box).

A spherical tumour of radius 5 voxels in the middle of a 96³ crop, σ in voxels as drawn by the pipeline (U(0, 4));
medians of ``--repeats`` interleaved runs; max |Δ| between the two.

    python bench/bench_blend.py --threads 2 --repeats 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
from scipy import ndimage

from difftumor.pipelines.tumor_inpaint.blending import gaussian_blur_mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    grid = np.indices((96, 96, 96)) - 48
    mask = (grid**2).sum(0) <= 25
    as_tensor = torch.from_numpy(mask)
    print(json.dumps({"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": args.threads}))
    for sigma in (1.0, 2.0, 4.0):
        times: dict[str, list[float]] = {"scipy": [], "torch_box": []}
        for _ in range(args.repeats):
            start = time.perf_counter()
            expected = ndimage.gaussian_filter(mask.astype(np.float64), sigma)
            times["scipy"].append(time.perf_counter() - start)
            start = time.perf_counter()
            ours = gaussian_blur_mask(as_tensor, sigma)
            times["torch_box"].append(time.perf_counter() - start)
        medians = {name: statistics.median(values) for name, values in times.items()}
        print(
            json.dumps(
                {
                    "sigma": sigma,
                    **{f"{name}_ms": round(1000 * value, 2) for name, value in medians.items()},
                    "speed_up": round(medians["scipy"] / medians["torch_box"], 1),
                    "max_abs_difference": float(np.abs(ours.numpy() - expected).max()),
                }
            )
        )


if __name__ == "__main__":
    main()
