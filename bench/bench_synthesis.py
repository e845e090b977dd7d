"""Benchmark whole-CT synthesis: seconds per tumour for one CT with N tumours, batched vs one at a time.

Real CT (patient A, the bundled demo case, liver), both synthesizers; the diffusion synthesizer uses a pipeline of the
released size with random weights (the cost is the same as with trained weights). Each configuration runs in a
fresh subprocess that reports its wall time (loading the CT and the models excluded, writing excluded) and its
peak RSS (the whole process, imports included).

    python bench/bench_synthesis.py --tumors 4 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

DEMO_CASE = Path(__file__).resolve().parents[1] / "difftumor" / "assets" / "demo_case"


def run_once(synthesizer_name: str, tumors: int, batch: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from difftumor import TumorInpaintPipeline, UNet3DInpaintModel, VQModel3D
    from difftumor.data.volumes import load_volume
    from difftumor.schedulers import make_scheduler
    from difftumor.synthesis import DiffusionSynthesizer, HandcraftedSynthesizer, synthesize_tumors

    ct = load_volume(DEMO_CASE / "ct.nii.gz")
    mask = load_volume(DEMO_CASE / "organs.nii.gz")
    if synthesizer_name == "diffusion":
        torch.manual_seed(0)
        pipeline = TumorInpaintPipeline(VQModel3D().eval(), UNet3DInpaintModel().eval(), make_scheduler("ddpm", 4))
        synthesizer = DiffusionSynthesizer(pipeline=pipeline, max_batch_size=batch)
    else:
        synthesizer = HandcraftedSynthesizer()
        synthesizer.max_batch_size = batch
    start = time.perf_counter()
    result = synthesize_tumors(ct, mask, "liver", synthesizer, size="small", count=tumors, seed=0, organ_label=5)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "synthesizer": synthesizer_name,
                "tumors": len(result.tumors),
                "batch": batch,
                "seconds": round(seconds, 2),
                "seconds_per_tumor": round(seconds / tumors, 2),
                "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tumors", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--once", nargs=2, metavar=("SYNTHESIZER", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once:
        run_once(args.once[0], args.tumors, int(args.once[1]), args.threads)
        return
    for name in ("handcrafted", "diffusion"):
        for batch in (1, args.tumors):
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--once",
                    name,
                    str(batch),
                    "--tumors",
                    str(args.tumors),
                    "--threads",
                    str(args.threads),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            print(done.stdout.strip().splitlines()[-1])
    print("command: python bench/bench_synthesis.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
