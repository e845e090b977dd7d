"""What keeping freed memory (``difftumor.allocator``) changes for a released-size early tumour on CPU.

The setting is per process and cannot be undone, so the A/B runs pairs of fresh processes back to back — one with
glibc's defaults (``DIFFTUMOR_KEEP_FREED_MEMORY=0``), one with ``keep_freed_memory()`` — alternating which goes first.
Each process times one warm-up and ``--calls`` calls of the exact and the fast path (random released-size weights,
as ``bench_models.py``) and counts per call the kernel's minor page faults and the CPU time spent in the kernel
(``ru_stime``, all threads: what the faults cost, less noisy than wall time); the reference convolution of
``bench_models.py`` is timed in each too (it allocates its 14 MB output on every call as well). Ratios are per pair.

    python bench/bench_allocator.py --pairs 4 --threads 2
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/bench_allocator.py --pairs 4 --threads 2
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
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import _cpu_model, _crop_and_mask, _released_pipeline  # noqa: E402


def _child(calls: int, threads: int) -> None:
    from difftumor.allocator import keep_freed_memory

    applied = keep_freed_memory()  # before anything is timed (the parent's environment variable decides)
    torch.set_num_threads(threads)
    pipe = _released_pipeline()
    pipe.set_progress_bar_config(disable=True)
    hu, mask = _crop_and_mask()
    reference_input, reference_weight = torch.randn(1, 32, 48, 48, 48), torch.randn(32, 32, 3, 3, 3)
    result: dict[str, object] = {"applied": applied}
    with torch.no_grad():
        F.conv3d(reference_input, reference_weight, padding=1)
        references = []
        for _ in range(7):
            start = time.perf_counter()
            F.conv3d(reference_input, reference_weight, padding=1)
            references.append(time.perf_counter() - start)
        result["reference_s"] = statistics.median(references)
        for mode in ("exact", "fast"):
            pipe(hu, mask, generator=torch.Generator().manual_seed(0), fast=mode == "fast")  # warm-up
            seconds, faults, kernel = [], [], []
            for _ in range(calls):
                before = resource.getrusage(resource.RUSAGE_SELF)
                start = time.perf_counter()
                pipe(hu, mask, generator=torch.Generator().manual_seed(0), fast=mode == "fast")
                seconds.append(time.perf_counter() - start)
                after = resource.getrusage(resource.RUSAGE_SELF)
                faults.append(after.ru_minflt - before.ru_minflt)
                kernel.append(after.ru_stime - before.ru_stime)  # CPU time in the kernel, all threads
            result[f"{mode}_s"] = statistics.median(seconds)
            result[f"{mode}_faults"] = statistics.median(faults)
            result[f"{mode}_kernel_cpu_s"] = round(statistics.median(kernel), 3)
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


def _run(keep: bool, calls: int, threads: int) -> dict[str, float]:
    env = {**os.environ, "DIFFTUMOR_KEEP_FREED_MEMORY": "1" if keep else "0"}
    command = [sys.executable, __file__, "--child", "--calls", str(calls), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["applied"] != keep:  # e.g. MALLOC_* or GLIBC_TUNABLES in the environment, or not glibc
        raise SystemExit(f"keep_freed_memory() gave {result['applied']} where {keep} was wanted: check the environment")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--calls", type=int, default=3, help="timed calls per path in each process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.calls, args.threads)
        return
    runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
    for pair in range(args.pairs):
        for keep in (False, True) if pair % 2 == 0 else (True, False):
            runs[keep].append(_run(keep, args.calls, args.threads))
            print(json.dumps({"pair": pair, "keep_freed_memory": keep, **runs[keep][-1]}), flush=True)
    summary: dict[str, object] = {
        "summary": "glibc defaults vs keep_freed_memory, early tumour, 96³, fp32",
        "cpu": _cpu_model(),
        "capability": torch.backends.cpu.get_cpu_capability(),
        "emulated": bool(os.environ.get("ATEN_CPU_CAPABILITY")),
        "threads": args.threads,
        "pairs": args.pairs,
    }
    for key in ("reference_s", "exact_s", "fast_s"):
        ratios = [default[key] / kept[key] for default, kept in zip(runs[False], runs[True])]
        summary[key.removesuffix("_s")] = {
            "default_s": round(statistics.median(run[key] for run in runs[False]), 3),
            "kept_s": round(statistics.median(run[key] for run in runs[True]), 3),
            "speedup_per_pair": [round(ratio, 2) for ratio in ratios],
        }
    for key in ("exact_faults", "exact_kernel_cpu_s", "fast_faults", "fast_kernel_cpu_s", "peak_rss_mib"):
        summary[key] = {
            "default": [run[key] for run in runs[False]],
            "kept": [run[key] for run in runs[True]],
        }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
