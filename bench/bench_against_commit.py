"""Time this checkout's released-size UNet or pipeline against another commit's, in one process, interleaved.

On a shared machine the load drifts by 10-30 % within minutes, so two runs of a benchmark minutes apart cannot
resolve a 5-10 % change; this runs both versions round by round in one process (alternating which goes first) and
reports the median of the per-round ratios with its quartiles. The other commit's ``difftumor`` package is
extracted with ``git archive`` under the name ``difftumor_ref`` (its modules import each other relatively); both
get the same random released-size weights and inputs. Process-wide settings (threads, and the allocator with
``--keep-freed-memory``) are shared, so this measures code only (except against ef9e99b and 5b10d6a, whose pipeline
turned the allocator setting on by itself at its first call).

    python bench/bench_against_commit.py --rev 210df04 --target unet --rounds 20 --threads 2
    python bench/bench_against_commit.py --rev 210df04 --target unet --rounds 20 --threads 2 --keep-freed-memory
    python bench/bench_against_commit.py --rev 210df04 --target pipeline --rounds 8 --threads 2
    python bench/bench_against_commit.py --rev 5fdb3af --target fast --blur-sigma 4 --rounds 8 --threads 2
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from bench_models import _crop_and_mask  # noqa: E402


def _reference_package(rev: str, into: Path) -> str:
    """Extract ``difftumor/`` at ``rev`` as ``into/difftumor_ref`` and return the commit it resolved to."""
    commit = subprocess.run(["git", "rev-parse", rev], cwd=REPO, capture_output=True, text=True, check=True)
    archive = subprocess.run(["git", "archive", rev, "difftumor"], cwd=REPO, capture_output=True, check=True)
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        try:
            tar.extractall(into, filter="data")
        except TypeError:  # Python < 3.10.12 / 3.11.4: no filters (the archive is our own repository's)
            tar.extractall(into)
    (into / "difftumor").rename(into / "difftumor_ref")
    sys.path.insert(0, str(into))
    return commit.stdout.strip()


def _builders(package: str):
    unet_module = importlib.import_module(f"{package}.models.unet_3d_inpaint")
    vq_module = importlib.import_module(f"{package}.models.vq_model_3d")
    pipeline_module = importlib.import_module(f"{package}.pipelines.tumor_inpaint.pipeline_tumor_inpaint")
    scheduler_module = importlib.import_module(f"{package}.schedulers")
    return unet_module.UNet3DInpaintModel, vq_module.VQModel3D, pipeline_module.TumorInpaintPipeline, scheduler_module


def _jobs(target: str, package: str, state: dict[str, dict[str, torch.Tensor]], blur_sigma: float | None = None):
    unet_class, vq_class, pipeline_class, schedulers = _builders(package)
    unet = unet_class().eval()
    unet.load_state_dict(state["unet"])
    if target == "unet":
        generator = torch.Generator().manual_seed(0)
        sample = torch.randn(1, 8, 24, 24, 24, generator=generator)
        condition = torch.randn(1, 9, 24, 24, 24, generator=generator)
        return lambda: unet(sample, 3, condition).sample
    vqmodel = vq_class().eval()
    vqmodel.load_state_dict(state["vq"])
    pipe = pipeline_class(vqmodel, unet, schedulers.make_scheduler("ddpm", 4))
    pipe.set_progress_bar_config(disable=True)
    hu, mask = _crop_and_mask()
    fast = target == "fast"
    return lambda: pipe(hu, mask, generator=torch.Generator().manual_seed(0), fast=fast, blur_sigma=blur_sigma).images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", default="HEAD~1", help="the commit to compare with (any git revision)")
    parser.add_argument("--target", choices=("unet", "pipeline", "fast"), default="unet")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--blur-sigma", type=float, help="pipeline/fast targets: this blur σ (default: drawn)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--keep-freed-memory", action="store_true", help="turn difftumor.allocator's setting on first (both versions)"
    )
    args = parser.parse_args()
    if args.blur_sigma is not None and args.target == "unet":
        parser.error("--blur-sigma applies to the pipeline and fast targets")
    if args.rounds < 2:
        parser.error("--rounds must be at least 2 (quartiles of the per-round ratios)")
    torch.set_num_threads(args.threads)
    kept = False
    if args.keep_freed_memory:
        from difftumor.allocator import keep_freed_memory

        kept = keep_freed_memory()
    with tempfile.TemporaryDirectory() as folder:
        commit = _reference_package(args.rev, Path(folder))
        from difftumor import UNet3DInpaintModel, VQModel3D

        torch.manual_seed(0)
        state = {"unet": UNet3DInpaintModel().state_dict(), "vq": VQModel3D().state_dict()}
        packages = {"this": "difftumor", "ref": "difftumor_ref"}
        jobs = {name: _jobs(args.target, package, state, args.blur_sigma) for name, package in packages.items()}
        with torch.no_grad():
            outputs = {name: job() for name, job in jobs.items()}  # also the warm-up
            seconds: dict[str, list[float]] = {name: [] for name in jobs}
            ratios = []
            for round_ in range(args.rounds):
                for name in ("this", "ref") if round_ % 2 else ("ref", "this"):
                    start = time.perf_counter()
                    jobs[name]()
                    seconds[name].append(time.perf_counter() - start)
                ratios.append(seconds["ref"][-1] / seconds["this"][-1])
    quartiles = statistics.quantiles(ratios, n=4)
    print(
        json.dumps(
            {
                "target": args.target,
                "blur_sigma": args.blur_sigma,
                "reference_commit": commit,
                "capability": torch.backends.cpu.get_cpu_capability(),
                "threads": args.threads,
                "keep_freed_memory": kept,
                "rounds": args.rounds,
                "this_s": round(statistics.median(seconds["this"]), 4),
                "reference_s": round(statistics.median(seconds["ref"]), 4),
                "speedup_median": round(statistics.median(ratios), 3),
                "speedup_quartiles": [round(q, 3) for q in quartiles],
                "max_abs_difference": float((outputs["this"] - outputs["ref"]).abs().max()),
            }
        )
    )


if __name__ == "__main__":
    main()
