"""The released-size pipeline on a CUDA GPU: time per early tumour (batched) and agreement with the CPU.

Random weights in the released configuration (as ``bench_models.py``), one 96³ crop repeated ``B`` times. For each
batch size: median seconds per call (CUDA-synchronised) and per tumour, exact (also with cuDNN's transposed
convolutions instead of the phase form) and fast mode. Agreement: the same crop and seed on the CPU and on the GPU
(the DDPM noise is drawn from a CPU generator in both), max and mean |ΔHU| of the painted crops and whether a second
GPU call gives the same bits, with the user's cuDNN TF32 flag on (PyTorch's default) and off — both must agree now
that the pipeline runs its models without TF32 (before, TF32 moved single voxels by 30 HU). ``--tf32`` sets that flag
while timing; it only reaches what runs outside the pipeline's models. ``--profile B``: GPU busy time, top operators
and the lines that make the host wait, per mode.

    python bench/bench_gpu.py --batches 1 8 32 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import _crop_and_mask, _released_pipeline  # noqa: E402

from difftumor.models import transposed_conv  # noqa: E402


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


def _profile(pipe, crops: torch.Tensor, masks: torch.Tensor) -> None:
    """Per mode: the GPU's busy time per tumour (the sum of every kernel's and copy's own time) against the call's
    wall time, the top operators by GPU time, and the Python lines that made the host wait for the GPU."""
    batch = len(crops)
    for fast in (False, True):
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.no_grad(), torch.profiler.profile(activities=activities) as profile:
            start = time.perf_counter()
            pipe(crops, masks, generator=torch.Generator().manual_seed(0), fast=fast)
            torch.cuda.synchronize()
            wall = time.perf_counter() - start
        events = profile.key_averages()
        key = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
        busy_ms = sum(getattr(event, key) for event in events) / 1000
        summary = {"batch": batch, "fast": fast, "gpu_busy_ms_per_tumour": round(busy_ms / batch, 2)}
        print(json.dumps({"profile": {**summary, "wall_ms_per_tumour": round(1000 * wall / batch, 2)}}), flush=True)
        print(events.table(sort_by=key, row_limit=14, max_name_column_width=48), flush=True)

        torch.cuda.set_sync_debug_mode("warn")
        try:
            with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                pipe(crops, masks, generator=torch.Generator().manual_seed(0), fast=fast)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        places = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message))
        print(json.dumps({"synchronising_calls": {"fast": fast, "where": places.most_common(20)}}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tf32", choices=["on", "off"], default="on", help="the user's cuDNN TF32 flag while timing")
    parser.add_argument(
        "--profile", type=int, default=0, help="at this batch: GPU busy time, top operators and host waits per mode"
    )
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
        with torch.no_grad():
            again = gpu(hu.cuda(), mask.cuda(), generator=torch.Generator().manual_seed(0)).images.cpu()
        difference = (painted - reference).abs()
        print(
            json.dumps(
                {
                    "agreement_with_cpu": {"cudnn_tf32": tf32},
                    "max_abs_hu": round(difference.max().item(), 4),
                    "mean_abs_hu": round(difference.mean().item(), 5),
                    "second_gpu_call_bit_identical": torch.equal(painted, again),
                }
            ),
            flush=True,
        )

    torch.backends.cudnn.allow_tf32 = args.tf32 == "on"
    torch.backends.cudnn.benchmark = True
    for batch in args.batches:
        crops, masks = hu.repeat(batch, 1, 1, 1, 1).cuda(), mask.repeat(batch, 1, 1, 1, 1).cuda()
        # The exact path also with cuDNN's own (deterministic) transposed convolutions, for the phase form's gain.
        for fast, phases in ((False, True), (False, False), (True, True)):
            transposed_conv.DEVICE_TYPES = {"cuda"} if phases else set()
            try:
                with torch.no_grad():
                    seconds = _seconds(
                        lambda crops=crops, masks=masks, fast=fast: gpu(
                            crops, masks, generator=torch.Generator().manual_seed(0), fast=fast
                        ),
                        args.repeats,
                    )
            finally:
                transposed_conv.DEVICE_TYPES = {"cuda"}
            print(
                json.dumps(
                    {
                        "batch": batch,
                        "fast": fast,
                        "transposed_conv": "phases" if phases else "cudnn",
                        "cudnn_tf32": args.tf32,
                        "seconds_per_call": round(seconds, 4),
                        "ms_per_tumour": round(1000 * seconds / batch, 2),
                        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                    }
                ),
                flush=True,
            )
    if args.profile:
        _profile(gpu, hu.repeat(args.profile, 1, 1, 1, 1).cuda(), mask.repeat(args.profile, 1, 1, 1, 1).cuda())
    print("command: python bench/bench_gpu.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
