"""Benchmark the realism work: what `difftumor realism` costs, and what organ-relative painting adds to synthesis.

1. `realism`: wall time of measuring the real LiTS lesions (tests/data, 47 lesions) plus N synthetic lesions of
   patient A (handcrafted, written first), in one process, reading and writing included.
2. Synthesis, seconds per early tumour on patient A (bundled demo pipeline, 2 threads), each configuration in a
   fresh subprocess, back to back: diffusion with the defaults (organ-relative mapping, stride-pattern removal)
   against the original's behaviour (``intensity=native``, no stride removal, blend σ U(0, 4)); handcrafted
   ``relative`` against ``hu2023``.

    python bench/bench_realism.py --tumors 8 --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO_CASE = REPO / "difftumor" / "assets" / "demo_case"
LITS = REPO / "tests" / "data" / "lits117_upper"
CONFIGURATIONS = {
    "diffusion default (relative, stride removal)": ("diffusion", {}),
    "diffusion as the original (native, no removal, σ U(0,4))": (
        "diffusion",
        {"intensity": "native", "suppress_stride_pattern": False, "blend_sigma_mm": (0.0, 4.0)},
    ),
    "handcrafted default (relative)": ("handcrafted", {}),
    "handcrafted hu2023": ("handcrafted", {"recipe": "hu2023"}),
}


def run_once(label: str, tumors: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    from difftumor.data.volumes import load_volume
    from difftumor.synthesis import get_synthesizer, synthesize_tumors

    name, options = CONFIGURATIONS[label]
    synthesizer = get_synthesizer(name, **options)
    ct, mask = load_volume(DEMO_CASE / "ct.nii.gz"), load_volume(DEMO_CASE / "organs.nii.gz")
    start = time.perf_counter()
    synthesize_tumors(ct, mask, "liver", synthesizer, size="early", count=tumors, seed=0, organ_label=5)
    seconds = time.perf_counter() - start
    print(json.dumps({"configuration": label, "tumors": tumors, "seconds_per_tumor": round(seconds / tumors, 2)}))


def realism_cost(tumors: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for sub, name in (("images", "lits117_upper_ct.nii.gz"), ("labels", "lits117_upper_label.nii.gz")):
            (root / "real" / sub).mkdir(parents=True)
            (root / "real" / sub / "lits117.nii.gz").symlink_to(LITS / name)
        synthetic = root / "synthetic"
        subprocess.run(
            [
                "difftumor",
                "synthesize",
                str(DEMO_CASE / "ct.nii.gz"),
                "--organ-mask",
                str(DEMO_CASE / "organs.nii.gz"),
                "--organ-label",
                "5",
                "--synthesizer",
                "handcrafted",
                "--count",
                str(tumors),
                "--out",
                str(synthetic),
            ],
            check=True,
            capture_output=True,
        )
        start = time.perf_counter()
        subprocess.run(
            [
                "difftumor",
                "realism",
                "--synthetic",
                str(synthetic),
                "--real",
                str(root / "real"),
                "--truth-labels",
                "lits",
                "--out",
                str(root / "report"),
            ],
            check=True,
            capture_output=True,
        )
        report = json.loads((root / "report" / "realism.json").read_text())
        lesions = sum(len(v) for v in report["lesions"].values())
        return {"realism_seconds": round(time.perf_counter() - start, 1), "lesions_measured": lesions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tumors", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--once", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once:
        run_once(args.once, args.tumors, args.threads)
        return
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = models[0] if models else platform.processor() or platform.machine()
    print(f"machine: {cpu}, {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads")
    print(json.dumps(realism_cost(args.tumors)))
    for label in CONFIGURATIONS:
        done = subprocess.run(
            [sys.executable, __file__, "--once", label, "--tumors", str(args.tumors), "--threads", str(args.threads)],
            capture_output=True,
            text=True,
            check=True,
        )
        print(done.stdout.strip().splitlines()[-1])
    print("command: python bench/bench_realism.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
