"""The released-size pipeline on a CUDA GPU: time per early tumour (batched) and agreement with the CPU.

Random weights in the released configuration (as ``bench_models.py``), one 96³ crop repeated ``B`` times. For each
batch size: median seconds per call (CUDA-synchronised) and per tumour, exact and fast mode. Agreement: the same
crop and seed on the CPU and on the GPU (the DDPM noise is drawn from a CPU generator in both), max and mean |ΔHU|
of the painted crops, with the user's cuDNN TF32 flag on (PyTorch's default) and off — both must agree now that the
pipeline runs its models without TF32 (before, TF32 moved single voxels by 30 HU). ``--tf32`` sets that flag while
timing; it only reaches what runs outside the pipeline's models.

    python bench/bench_gpu.py --batches 1 8 32 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import _crop_and_mask, _released_pipeline  # noqa: E402


def _seconds(function: Callable[[], object], repeats: int) -> float:
    function()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        function()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tf32", choices=["on", "off"], default="on", help="the user's cuDNN TF32 flag while timing")
    parser.add_argument("--profile", type=int, default=0, help="print the top operators of one call at this batch")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU")
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)

    hu, mask = _crop_and_mask()
    cpu = _released_pipeline()
    cpu.set_progress_bar_config(disable=True)
    with torch.no_grad():
        reference = cpu(hu, mask, generator=torch.Generator().manual_seed(0)).images
    gpu = _released_pipeline().to("cuda")
    gpu.set_progress_bar_config(disable=True)
    for tf32 in (True, False):
        torch.backends.cudnn.allow_tf32 = tf32
        with torch.no_grad():
            painted = gpu(hu.cuda(), mask.cuda(), generator=torch.Generator().manual_seed(0)).images.cpu()
        difference = (painted - reference).abs()
        print(
            json.dumps(
                {
                    "agreement_with_cpu": {"cudnn_tf32": tf32},
                    "max_abs_hu": round(difference.max().item(), 4),
                    "mean_abs_hu": round(difference.mean().item(), 5),
                }
            ),
            flush=True,
        )

    torch.backends.cudnn.allow_tf32 = args.tf32 == "on"
    torch.backends.cudnn.benchmark = True
    for batch in args.batches:
        crops, masks = hu.repeat(batch, 1, 1, 1, 1).cuda(), mask.repeat(batch, 1, 1, 1, 1).cuda()
        for fast in (False, True):
            with torch.no_grad():
                seconds = _seconds(
                    lambda crops=crops, masks=masks, fast=fast: gpu(
                        crops, masks, generator=torch.Generator().manual_seed(0), fast=fast
                    ),
                    args.repeats,
                )
            print(
                json.dumps(
                    {
                        "batch": batch,
                        "fast": fast,
                        "cudnn_tf32": args.tf32,
                        "seconds_per_call": round(seconds, 4),
                        "ms_per_tumour": round(1000 * seconds / batch, 2),
                        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                    }
                ),
                flush=True,
            )
    if args.profile:
        crops, masks = hu.repeat(args.profile, 1, 1, 1, 1).cuda(), mask.repeat(args.profile, 1, 1, 1, 1).cuda()
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.no_grad(), torch.profiler.profile(activities=activities) as profile:
            gpu(crops, masks, generator=torch.Generator().manual_seed(0))
            torch.cuda.synchronize()
        print(profile.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))
    print("command: python bench/bench_gpu.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
