"""A few-step solver against the original's DDIM-50 where it matters: tumour by tumour and in the realism figures.

`difftumor synthesize` paints ``--count`` tumours with a T = 200 pipeline into patient A (1 mm copy) and the LiTS
upper half three times with the same seed — the original's DDIM-50, DDIM-50 with the sampler's noise re-drawn
(``noise_seed=1``: what the noise alone changes, for scale) and ``--scheduler SAMPLER --steps STEPS`` — and reports,
per case, the tumour-by-tumour differences from DDIM-50 and `difftumor realism` of DDIM-50 and of the solver against
the real LiTS lesions (the same figures as ``bench_fast_mode.py``).

    python bench/bench_sampler_realism.py --pipeline PIPELINE --out runs/bench_sampler --count 24 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench_fast_mode import paint_and_compare


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="a T = 200 pipeline folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sampler", default="dpm++")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    arguments = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(arguments.threads)
    common = ("--pipeline", arguments.pipeline)
    solver = f"{arguments.sampler}_{arguments.steps}"
    runs = {
        "ddim_50": (*common, "--scheduler", "ddim", "--steps", "50"),
        "ddim_50_other_noise": (*common, "--scheduler", "ddim", "--steps", "50", "--option", "noise_seed=1"),
        solver: (*common, "--scheduler", arguments.sampler, "--steps", str(arguments.steps)),
    }
    report = paint_and_compare(
        arguments.out.resolve(), arguments.count, arguments.seed, runs, "ddim_50", solver, "ddim_50_other_noise"
    )
    print(json.dumps(report, indent=1))
    print("command: python bench/bench_sampler_realism.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
