"""Benchmark the released-size models (random weights) on one 96³ crop, CPU, fp32.

Prints one JSON line per measurement and a summary line. Times are medians of ``--repeats`` runs (after one warm-up)
and are also given as a ratio to a same-process reference convolution,
``F.conv3d(x[1,32,48,48,48], w[32,32,3,3,3], padding=1)``, so that machines of different speed compare; each run is
paired with a reference timed just before it and the ratio is the median of the pairs' ratios.
Peak RSS is measured in fresh subprocesses (``--rss-runs``, median/min/max) that each run one end-to-end early
tumour and nothing else. Freed memory is kept for reuse as ``difftumor synthesize`` does on CPU
(``difftumor.allocator``; ``DIFFTUMOR_KEEP_FREED_MEMORY=0`` measures glibc's defaults).

    python bench/bench_models.py --threads 2 --repeats 5
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/bench_models.py ...   # AVX2 kernels on AVX-512
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from difftumor.allocator import keep_freed_memory
from difftumor.pipelines.tumor_inpaint.fast_mode import native_bfloat16

#: The original DiffTumor, early tumour end to end ÷ the reference convolution, per instruction set (measured by
#: running the authors' code at the released sizes, 2 threads: AVX-512 9.7 s = 332×, AVX2 10.3 s = 242×; a ratio of
#: medians, where ours is the median of paired ratios — the two agree when the machine's load is steady).
ORIGINAL_X_REFERENCE = {"AVX512": 332.0, "AVX2": 242.0}


def _cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _seconds(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def _interleaved(
    measurements: dict[str, Callable[[], object]],
    reference: Callable[[], object],
    repeats: int,
    alternate: bool = False,
) -> tuple[dict[str, float], dict[str, float], list[float]]:
    """Median time and median ratio to ``reference`` of each measurement, over ``repeats`` rounds after a warm-up.

    Each run is timed right after the reference convolution (median of 3), and the ratio is taken per pair: on a
    shared machine the load drifts within seconds (the reference alone moved 28-47 ms in one session), so a ratio of
    two medians taken minutes apart moves with it. ``alternate`` runs every other round in reverse order.
    """
    for function in measurements.values():
        function()
    times: dict[str, list[float]] = {name: [] for name in measurements}
    ratios: dict[str, list[float]] = {name: [] for name in measurements}
    references = []
    for round_ in range(repeats):
        names = list(measurements)
        for name in names[::-1] if alternate and round_ % 2 else names:
            function = measurements[name]
            reference_seconds = statistics.median(_seconds(reference) for _ in range(3))
            seconds = _seconds(function)
            references.append(reference_seconds)
            times[name].append(seconds)
            ratios[name].append(seconds / reference_seconds)
    medians = {name: statistics.median(values) for name, values in times.items()}
    median_ratios = {name: statistics.median(values) for name, values in ratios.items()}
    return medians, median_ratios, references


def _released_pipeline(seed: int = 0):
    from difftumor import TumorInpaintPipeline, UNet3DInpaintModel, VQModel3D
    from difftumor.schedulers import make_scheduler

    torch.manual_seed(seed)
    vqmodel = VQModel3D().eval()  # released configuration: 16 hidden, [4, 4, 4], 8 × 16384 codebook
    unet = UNet3DInpaintModel().eval()  # released configuration: 24 base, (1, 2, 4, 8), 17 -> 8 channels
    return TumorInpaintPipeline(vqmodel, unet, make_scheduler("ddpm", 4))


def _crop_and_mask(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    hu = torch.rand(1, 1, 96, 96, 96, generator=generator) * 300 - 50
    mask = torch.zeros(1, 1, 96, 96, 96, dtype=torch.bool)
    mask[0, 0, 40:52, 42:54, 44:54] = True
    return hu, mask


def record_fast_windows(pipe, key: Callable[[list[float]], str]) -> dict[str, tuple[tuple[int, int, int], np.ndarray]]:
    """The fast mode's window per call — its size and per-crop starts, as the pipeline chooses them — under
    ``key(blur σ of the batch)``."""
    windows: dict[str, tuple[tuple[int, int, int], np.ndarray]] = {}
    choose, draw = pipe._fast_windows, pipe._blur_sigmas
    sigmas: list[float] = []

    def drawn(*arguments):
        sigmas[:] = draw(*arguments)
        return list(sigmas)

    def recorded(weights):
        size, starts = choose(weights)
        windows[key(sigmas)] = size, starts
        return size, starts

    pipe._blur_sigmas, pipe._fast_windows = drawn, recorded
    return windows


def end_to_end_once() -> None:
    """One early tumour on a 96³ crop (the subprocess body of the peak-RSS measurement)."""
    keep_freed_memory()
    pipe = _released_pipeline()
    pipe.set_progress_bar_config(disable=True)
    hu, mask = _crop_and_mask()
    pipe(hu, mask, generator=torch.Generator().manual_seed(0))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mib": round(peak_mib, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rss-runs", type=int, default=5, help="fresh processes for the peak-RSS figure")
    parser.add_argument("--peak-rss-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # As `difftumor synthesize` runs on CPU (difftumor.allocator); DIFFTUMOR_KEEP_FREED_MEMORY=0 for glibc's defaults.
    kept = keep_freed_memory()
    if args.peak_rss_only:
        end_to_end_once()
        return

    reference_input, reference_weight = torch.randn(1, 32, 48, 48, 48), torch.randn(32, 32, 3, 3, 3)
    pipe = _released_pipeline()
    pipe.set_progress_bar_config(disable=True)
    vqmodel, unet, scheduler = pipe.vqmodel, pipe.unet, pipe.scheduler
    hu, mask = _crop_and_mask()
    crop = (hu + 175) / 425 * 2 - 1
    latents = torch.randn(1, 8, 24, 24, 24)
    condition = torch.randn(1, 9, 24, 24, 24)

    def four_step_loop():
        sample = latents.clone()
        scheduler.set_timesteps(4)
        for t in scheduler.timesteps:
            sample = scheduler.step(unet(sample, t, condition).sample, t, sample).prev_sample

    windows = record_fast_windows(pipe, lambda sigmas: ", ".join(f"{sigma:.2f}" for sigma in sigmas))

    measurements = {}
    with torch.no_grad():
        reference_conv = lambda: F.conv3d(reference_input, reference_weight, padding=1)  # noqa: E731
        measurements["encode"] = lambda: vqmodel.encode(crop.permute(0, 1, 4, 2, 3))
        measurements["unet_step"] = lambda: unet(latents, 3, condition)
        measurements["four_step_loop"] = four_step_loop
        measurements["quantized_decode"] = lambda: vqmodel.decode(latents)
        measurements["early_tumor_end_to_end"] = lambda: pipe(hu, mask, generator=torch.Generator().manual_seed(0))
        # The blur's σ drawn by the generator (as a Python call without blur_sigma; the window then reaches as far
        # as that σ's blur), and the widest blur the draw allows (σ = 4: the largest window for this tumour).
        measurements["early_tumor_fast_mode"] = lambda: pipe(
            hu, mask, generator=torch.Generator().manual_seed(0), fast=True
        )
        measurements["early_tumor_fast_mode_widest_blur"] = lambda: pipe(
            hu, mask, generator=torch.Generator().manual_seed(0), fast=True, blur_sigma=4.0
        )
        results, ratios, references = _interleaved(measurements, reference_conv, args.repeats)

    reference = statistics.median(references)
    print(
        json.dumps(
            {
                "name": "reference_conv3d",
                "median_s": round(reference, 4),
                "min_s": round(min(references), 4),
                "max_s": round(max(references), 4),
            }
        )
    )
    for name, seconds in results.items():
        print(json.dumps({"name": name, "median_s": round(seconds, 4), "x_reference": round(ratios[name], 1)}))

    # Several fresh processes: glibc keeps freed blocks differently from run to run (±80 MiB seen).
    peaks = []
    for _ in range(args.rss_runs):
        peak = subprocess.run(
            [sys.executable, __file__, "--peak-rss-only", "--threads", str(args.threads)],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks.append(json.loads(peak.stdout.strip().splitlines()[-1])["peak_rss_mib"])
    end_to_end = results["early_tumor_end_to_end"]
    capability = torch.backends.cpu.get_cpu_capability()
    # The original measured the same way per instruction set (docs: performance reference): a ratio to the reference
    # convolution transfers between machines of one instruction set, not across them.
    original_ratio = ORIGINAL_X_REFERENCE.get(capability)
    print(
        json.dumps(
            {
                "summary": "early tumour, 96³, fp32",
                "cpu": _cpu_model(),
                "capability": capability,
                "emulated": bool(os.environ.get("ATEN_CPU_CAPABILITY")),
                "threads": args.threads,
                "end_to_end_s": round(end_to_end, 3),
                "x_reference": round(ratios["early_tumor_end_to_end"], 1),
                "speedup_vs_original_same_isa": None
                if original_ratio is None
                else round(original_ratio / ratios["early_tumor_end_to_end"], 2),
                "peak_rss_mib": {
                    "median": statistics.median(peaks),
                    "min": min(peaks),
                    "max": max(peaks),
                    "runs": len(peaks),
                }
                if peaks
                else None,
                "fast_mode_s": round(results["early_tumor_fast_mode"], 3),
                "fast_mode_bfloat16": native_bfloat16(torch.device("cpu")),
                "fast_mode_speedup_vs_original_same_isa": None
                if original_ratio is None
                else round(original_ratio / ratios["early_tumor_fast_mode"], 2),
                "fast_mode_windows_by_blur_sigma": {sigma: size for sigma, (size, _) in windows.items()},
                "fast_mode_widest_blur_s": round(results["early_tumor_fast_mode_widest_blur"], 3),
                "fast_mode_widest_blur_speedup_vs_original_same_isa": None
                if original_ratio is None
                else round(original_ratio / ratios["early_tumor_fast_mode_widest_blur"], 2),
                "keep_freed_memory": kept,
                "torch": torch.__version__,
            }
        )
    )
    print("command: python bench/bench_models.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
