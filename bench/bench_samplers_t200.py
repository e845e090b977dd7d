"""Few-step solvers against the original's DDIM-50 on a T = 200 model: same model, same initial noise, same crops.

For each case (a real liver crop of the LiTS upper half, a spherical tumour mask, one seed) the initial noise is drawn
once and every sampler starts from it. Each comparison in ``COMPARISONS`` reports, against its reference run: the
final latents' max |Δ| and RMS, the latent range, the tumour's mean HU and its difference, the mean |ΔHU| over the
blended voxels, and the time per pipeline call (fp32, this machine) with its speed-up over DDIM-50. Solvers are
compared with the original's DDIM-50, with DDIM at every one of the 200 steps (the trajectory DDIM-50 discretises) and
with DPM++ at 50 steps, so that solver error and sampler convention show separately.

Without ``--pipeline`` it uses a released-size pipeline with random weights (speed only: its deviations say
nothing); pass a trained T = 200 pipeline for the deviations (BENCHMARKS.md says how the one measured was trained).

    python bench/bench_samplers_t200.py --pipeline PIPELINE --cases 4 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
LITS = REPO / "tests" / "data" / "lits117_upper"
NO_CLIP = {"thresholding": False}
CLIP = {"clip_sample": True}
#: (label, registry name, steps, config overrides). DDIM-50 as the original runs it does not clip x̂0; the registry's
#: few-step solvers do (thresholding at ±1, like the original's DDPM).
RUNS = (
    ("ddim-200", "ddim", 200, {"steps_offset": 0}),  # every timestep, 199 … 0
    ("ddim-100", "ddim", 100, {}),
    ("ddim-50", "ddim", 50, {}),
    ("ddim-50-clip", "ddim", 50, CLIP),
    ("ddim-100-clip", "ddim", 100, CLIP),
    ("ddim-10", "ddim", 10, {}),
    ("dpm++-10-noclip", "dpm++", 10, NO_CLIP),
    ("dpm++-50", "dpm++", 50, {}),
    ("dpm++-10", "dpm++", 10, {}),
    ("dpm++-8", "dpm++", 8, {}),
    ("dpm++-6", "dpm++", 6, {}),
    ("unipc-10", "unipc", 10, {}),
    ("unipc-8", "unipc", 8, {}),
)
#: (run, reference): each solver against the original's DDIM-50, and against its own converged solution, so that
#: solver error and sampler convention show separately.
COMPARISONS = (
    # The original's convention (DDIM, x̂0 unclipped) at every one of the 200 steps: how far DDIM-50 itself is from
    # the trajectory it discretises, and how far the few-step solvers are from it.
    ("ddim-50", "ddim-200"),
    ("ddim-100", "ddim-200"),
    ("dpm++-10", "ddim-200"),
    ("unipc-10", "ddim-200"),
    ("dpm++-50", "ddim-200"),
    ("ddim-50-clip", "ddim-50"),
    ("ddim-100-clip", "ddim-50-clip"),
    ("ddim-10", "ddim-50"),
    ("dpm++-10-noclip", "ddim-50"),
    ("dpm++-50", "ddim-50"),
    ("dpm++-10", "ddim-50"),
    ("unipc-10", "ddim-50"),
    ("dpm++-10", "dpm++-50"),
    ("dpm++-8", "dpm++-50"),
    ("dpm++-6", "dpm++-50"),
    ("unipc-10", "dpm++-50"),
    ("unipc-8", "dpm++-50"),
)


def _pipeline(path: str | None):
    from difftumor import TumorInpaintPipeline, UNet3DInpaintModel, VQModel3D
    from difftumor.schedulers import make_scheduler

    if path:
        pipe = TumorInpaintPipeline.from_pretrained(path)
    else:
        torch.manual_seed(0)
        pipe = TumorInpaintPipeline(VQModel3D().eval(), UNet3DInpaintModel().eval(), make_scheduler("ddim", 200))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _cases(count: int, depth: int):
    ct = np.asarray(nib.load(str(LITS / "lits117_upper_ct.nii.gz")).dataobj, dtype=np.float32)
    crop = ct[16:112, 16:112, 16 : 16 + depth]
    rng = np.random.default_rng(0)
    grid = np.indices(crop.shape)
    for seed in range(count):
        centre = np.array([rng.integers(36, 60), rng.integers(36, 60), depth // 2])
        radius = rng.uniform(4, 9)
        yield seed, crop, ((grid - centre[:, None, None, None]) ** 2).sum(0) <= radius**2


def main() -> int:
    from difftumor.schedulers import make_scheduler

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", default=None)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--depth", type=int, default=32, help="crop depth (the LiTS upper half has 64 slices)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = _pipeline(args.pipeline)
    num_train_timesteps = int(pipe.scheduler.config.num_train_timesteps)
    rows: dict[tuple[str, str], dict[str, list[float]]] = {pair: {} for pair in COMPARISONS}
    for seed, crop, mask in _cases(args.cases, args.depth):
        shape = (1, pipe.unet.config.sample_channels, args.depth // 4, 24, 24)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        outputs = {}
        for label, name, steps, overrides in RUNS:
            scheduler = make_scheduler(name, pipe.scheduler.config)
            pipe.scheduler = type(scheduler).from_config(scheduler.config, **overrides)
            start = time.perf_counter()
            output = pipe(
                crop,
                mask,
                num_inference_steps=steps,
                latents=noise.clone(),
                blur_sigma=2.0,
                generator=torch.Generator().manual_seed(seed),
            )
            total = time.perf_counter() - start
            outputs[label] = (output, total)
        tumour = torch.from_numpy(mask)
        for label, reference_label in COMPARISONS:
            (output, total), reference = outputs[label], outputs[reference_label][0]
            blended = reference.blend_weights[0, 0] > 0
            row = rows[(label, reference_label)]
            delta = output.latents - reference.latents
            row.setdefault("latent_max_abs", []).append(float(delta.abs().max()))
            row.setdefault("latent_rms", []).append(float(delta.pow(2).mean().sqrt()))
            row.setdefault("latent_min", []).append(float(output.latents.min()))
            row.setdefault("latent_max", []).append(float(output.latents.max()))
            row.setdefault("tumour_mean_hu_diff", []).append(
                float(output.images[0, 0][tumour].mean() - reference.images[0, 0][tumour].mean())
            )
            row.setdefault("tumour_mean_hu", []).append(float(output.images[0, 0][tumour].mean()))
            row.setdefault("blend_mean_abs_hu", []).append(
                float((output.images - reference.images).abs()[0, 0][blended].mean())
            )
            row.setdefault("call_s", []).append(total)
            row.setdefault("reference_call_s", []).append(outputs[reference_label][1])
        print(f"case {seed} done", file=sys.stderr)
    summary = {}
    for key, row in rows.items():
        summary[key] = {
            "sampler": key[0],
            "reference": key[1],
            "latent_max_abs_median": round(statistics.median(row["latent_max_abs"]), 4),
            "latent_rms_median": round(statistics.median(row["latent_rms"]), 4),
            "latent_range": [round(min(row["latent_min"]), 2), round(max(row["latent_max"]), 2)],
            "tumour_mean_hu_diff_median": round(statistics.median(row["tumour_mean_hu_diff"]), 2),
            "tumour_mean_hu_diff_max_abs": round(max(abs(v) for v in row["tumour_mean_hu_diff"]), 2),
            "tumour_mean_hu_median": round(statistics.median(row["tumour_mean_hu"]), 1),
            "blend_mean_abs_hu_median": round(statistics.median(row["blend_mean_abs_hu"]), 2),
            "call_s_median": round(statistics.median(row["call_s"]), 3),
        }
    reference_time = statistics.median(rows[("ddim-10", "ddim-50")]["reference_call_s"])
    for values in summary.values():
        values["speedup_vs_ddim50"] = round(reference_time / values["call_s_median"], 2)
        print(json.dumps(values))
    print(
        json.dumps(
            {
                "num_train_timesteps": num_train_timesteps,
                "pipeline": args.pipeline or "released size, random weights",
                "cases": args.cases,
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "threads": args.threads,
            }
        )
    )
    print("command: python bench/bench_samplers_t200.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
