"""What the fast mode's window floor and the blur's reach cost: one early tumour, released size, per floor and σ.

Runs the released-size pipeline (random weights) on the same 96³ crop and 12 mm tumour as ``bench_models.py``, fast
mode with each ``--floors`` value as :data:`~difftumor.pipelines.tumor_inpaint.fast_mode.MIN_WINDOW` and each
``--sigmas`` blur (``none``: drawn by the generator, as a call without ``blur_sigma``), plus the exact path; all
configurations interleaved round by round in one process (every other round reversed), each timed right after the
reference convolution (``bench_models._interleaved``), and reported as the median time, the window the pipeline chose
and the speed-up over the original on this instruction set (the ratio method of ``bench_models.py``). Freed memory is
kept as ``difftumor synthesize`` does on CPU.

    python bench/bench_fast_window.py --threads 2 --rounds 6
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python bench/bench_fast_window.py --threads 2 --rounds 6
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_models import ORIGINAL_X_REFERENCE, _crop_and_mask, _interleaved, _released_pipeline, record_fast_windows

from difftumor.allocator import keep_freed_memory
from difftumor.pipelines.tumor_inpaint import fast_mode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--floors", type=int, nargs="+", default=[64, 56, 48])
    parser.add_argument("--sigmas", nargs="+", default=["none", "2", "4"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kept = keep_freed_memory()
    pipe = _released_pipeline()
    pipe.set_progress_bar_config(disable=True)
    hu, mask = _crop_and_mask()
    reference_input, reference_weight = torch.randn(1, 32, 48, 48, 48), torch.randn(32, 32, 3, 3, 3)
    current = ""
    windows = record_fast_windows(pipe, lambda sigmas: current)

    def run(floor: int | str, sigma: str) -> Callable[[], object]:
        def call():
            nonlocal current
            current = f"{floor}/{sigma}"
            if floor != "exact":
                fast_mode.MIN_WINDOW = floor
            blur = None if sigma == "none" else float(sigma)
            return pipe(hu, mask, generator=torch.Generator().manual_seed(0), fast=floor != "exact", blur_sigma=blur)

        return call

    configs = [(floor, sigma) for floor in args.floors for sigma in args.sigmas] + [("exact", "none")]
    floor_before = fast_mode.MIN_WINDOW
    with torch.no_grad():
        seconds, ratios, _ = _interleaved(
            {f"{floor}/{sigma}": run(floor, sigma) for floor, sigma in configs},
            lambda: F.conv3d(reference_input, reference_weight, padding=1),
            args.rounds,
            alternate=True,
        )
    fast_mode.MIN_WINDOW = floor_before
    capability = torch.backends.cpu.get_cpu_capability()
    original = ORIGINAL_X_REFERENCE.get(capability)
    for floor, sigma in configs:
        name = f"{floor}/{sigma}"
        print(
            json.dumps(
                {
                    "floor": floor,
                    "blur_sigma": sigma,
                    "window": windows[name][0] if name in windows else None,
                    "median_s": round(seconds[name], 3),
                    "speedup_vs_original_same_isa": None if original is None else round(original / ratios[name], 2),
                }
            )
        )
    print(json.dumps({"capability": capability, "threads": args.threads, "keep_freed_memory": kept}))
    print("command: python bench/bench_fast_window.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
