"""Training throughput of the three trainers on CPU (real data kept in the repository, real trainers).

Each configuration runs ``difftumor train ...`` for ``--steps`` steps in a fresh process and reads the per-step wall
time the trainer logs (``seconds_per_step``: data, synthesis and optimisation). The first step (start-up) is dropped;
the mean of the rest is reported with steps/s, crops/s and, for segmentation, the crops that received tumours per
step (probability 1 here, so that the per-crop cost shows; each such crop holds 1-3 tumours).

    python bench/bench_training.py --steps 8

``--experiment`` times the arms of the small experiment instead (scripts/experiment_small.sh's settings: 48³ crops
at 1 mm, batch 2, a quarter of the crops with tumours, the painted-crop bank for synthetic arms), in ``--rounds``
interleaved rounds, each run a fresh process of ``--steps`` steps logged every step; it reports per arm the median
and range over rounds of the run's mean step time after the bank has filled, and that time ÷ the real arm's.

    python bench/bench_training.py --experiment --steps 400 --rounds 3
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
DEMO_CASE = REPO / "difftumor" / "assets" / "demo_case"


def _datalists(folder: Path) -> dict[str, Path]:
    sys.path.insert(0, str(REPO))
    from difftumor.data.layouts import prepare_datalist

    lits, patient = folder / "lits", folder / "patient_a" / "a"
    (lits / "images").mkdir(parents=True)
    (lits / "labels").mkdir()
    patient.mkdir(parents=True)
    (lits / "images" / "lits117.nii.gz").symlink_to(DATA / "lits117_upper" / "lits117_upper_ct.nii.gz")
    (lits / "labels" / "lits117.nii.gz").symlink_to(DATA / "lits117_upper" / "lits117_upper_label.nii.gz")
    (patient / "ct.nii.gz").symlink_to(DEMO_CASE / "ct.nii.gz")
    (patient / "seg.nii.gz").symlink_to(DEMO_CASE / "organs.nii.gz")
    prepare_datalist("folders", lits, folder / "lits.json", organ="liver", early_max_diameter_mm=20)
    prepare_datalist("totalsegmentator", folder / "patient_a", folder / "healthy.json", organ="liver")
    return {"lits": folder / "lits.json", "healthy": folder / "healthy.json"}


def _run(args: list[str], out: Path) -> float:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "difftumor.cli.main",
            *args,
            "--set",
            f"run.output_dir={out}",
            "--set",
            "run.log_every=1",
            "--set",
            "run.checkpoint_every=100000",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    with open(out / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    times = [float(row["value"]) for row in rows if row["name"] == "seconds_per_step"]
    # The trainer logs a running total of synthesised crops: per step = its growth after the dropped first step.
    totals = [float(row["value"]) for row in rows if row["name"] == "synthetic_tumours_total"]
    per_step = (totals[-1] - totals[0]) / (len(totals) - 1) if len(totals) > 1 else 0.0
    # Mean, not median: with on-the-fly synthesis the cost varies with how many crops of a step got a tumour.
    return statistics.mean(times[1:]), per_step


def _step_times(args: list[str], out: Path) -> list[float]:
    subprocess.run(
        [sys.executable, "-m", "difftumor.cli.main", *args, "--set", f"run.output_dir={out}",
         "--set", "run.log_every=1", "--set", "run.checkpoint_every=100000"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    with open(out / "metrics.csv") as handle:
        return [float(row["value"]) for row in csv.DictReader(handle) if row["name"] == "seconds_per_step"]


def experiment(work: Path, steps: int, rounds: int) -> None:
    """The small experiment's arms, interleaved (one run of each arm per round)."""
    data = _datalists(work / "data")
    common = [
        "train", "segmentation", "--config", "tiny_cpu", "--set", f"run.max_steps={steps}",
        "--set", "data.crop_size=[48,48,48]", "--set", "data.spacing=1.0", "--set", "data.batch_size=2",
        "--set", "data.tumor_crop_fraction=0.5", "--set", "synthesis.prob=0.5", "--set", "data.affine_prob=0.5",
        "--set", "data.phase_shift_prob=0.5", "--set", "synthesis.bank_size=64", "--set", "synthesis.bank_reuse=8",
    ]  # fmt: skip
    healthy = ["--set", f"data.healthy_datalist={data['healthy']}"]
    arms = {
        "real": ["--set", f"data.datalist={data['lits']}", "--set", 'data.healthy_datalist=""',
                 "--set", "synthesis.synthesizer=none"],
        "hu2023": [*healthy, "--set", "synthesis.synthesizer=handcrafted", "--set", "synthesis.recipe=hu2023"],
        "relative": [*healthy, "--set", "synthesis.synthesizer=handcrafted"],
        "diffusion": [*healthy, "--set", "synthesis.synthesizer=diffusion"],
        "diffusion, no bank": [*healthy, "--set", "synthesis.synthesizer=diffusion", "--set", "synthesis.bank_size=0"],
    }  # fmt: skip
    # The bank fills after 64 painted crops (about 128 steps at 0.5 painted crops per step): time what follows.
    settle = min(steps // 2, 160)
    means: dict[str, list[float]] = {arm: [] for arm in arms}
    for index in range(rounds):
        for arm, settings in arms.items():
            times = _step_times([*common, *settings, "--set", f"run.seed={index}"], work / f"{arm}_{index}")
            means[arm].append(statistics.fmean(times[settle:]))
    reference = statistics.median(means["real"])
    for arm, values in means.items():
        print(json.dumps({
            "arm": arm, "seconds_per_step_median": round(statistics.median(values), 4),
            "range": [round(min(values), 4), round(max(values), 4)],
            "ratio_to_real": round(statistics.median(values) / reference, 2), "rounds": rounds,
            "steps_timed": steps - settle,
        }), flush=True)  # fmt: skip
    print("command: python bench/bench_training.py " + " ".join(sys.argv[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--only", default="", help="comma-separated subset of configuration names")
    parser.add_argument("--experiment", action="store_true", help="time the small experiment's arms instead")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (--experiment)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_training_"))
    if args.experiment:
        experiment(work, args.steps, args.rounds)
        return
    data = _datalists(work / "data")
    steps = ["--set", f"run.max_steps={args.steps}"]
    tiny_ae = [
        "--config",
        str(REPO / "configs" / "autoencoder_tiny_cpu.yaml"),
        "--set",
        f"data.datalist={data['lits']}",
        "--set",
        "loss.discriminator_start_step=0",
    ]
    released_ae = [
        "--set",
        f"data.datalist={data['lits']}",
        "--set",
        "data.batch_size=1",
        "--set",
        "loss.discriminator_start_step=0",
    ]
    configurations = {
        "autoencoder tiny (64³ ×2, GAN on)": (["train", "autoencoder", *tiny_ae], 2),
        "autoencoder released (96³ ×1, GAN on)": (["train", "autoencoder", *released_ae], 1),
    }
    tiny_vq = work / "tiny_vq"
    released_vq = work / "released_vq"
    for folder, kwargs in (
        (tiny_vq, {"hidden_channels": 8, "latent_channels": 4, "num_codes": 512, "norm_num_groups": 4}),
        (released_vq, {}),
    ):
        from difftumor import VQModel3D

        VQModel3D(**kwargs).save_pretrained(folder)
    configurations["diffusion tiny (64³ ×2)"] = (
        [
            "train",
            "diffusion",
            "--config",
            str(REPO / "configs" / "diffusion_tiny_cpu.yaml"),
            "--set",
            f"data.datalist={data['lits']}",
            "--set",
            f"vqmodel={tiny_vq}",
        ],
        2,
    )
    configurations["diffusion released (96³ ×2)"] = (
        ["train", "diffusion", "--set", f"data.datalist={data['lits']}", "--set", f"vqmodel={released_vq}"],
        2,
    )
    segmentation = [
        "train",
        "segmentation",
        "--set",
        f"data.healthy_datalist={data['healthy']}",
        "--set",
        "data.batch_size=2",
        "--set",
        "synthesis.prob=1.0",
    ]
    configurations["segmentation U-Net 96³ ×2, no synthesis"] = (
        [*segmentation, "--set", "synthesis.synthesizer=none"],
        2,
    )
    configurations["segmentation U-Net 96³ ×2, handcrafted (p=1)"] = ([*segmentation], 2)
    configurations["segmentation U-Net 96³ ×2, diffusion bundled (p=1)"] = (
        [*segmentation, "--set", "synthesis.synthesizer=diffusion"],
        2,
    )
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    for index, (name, (command, crops)) in enumerate(configurations.items()):
        if wanted and not any(w in name for w in wanted):
            continue
        for precision in ("no", "bf16"):
            if name.startswith("segmentation") and precision == "bf16":
                continue
            seconds, synthetic = _run(
                [*command, *steps, "--set", f"run.mixed_precision={precision}"], work / f"run_{index}_{precision}"
            )
            print(
                json.dumps(
                    {
                        "configuration": name,
                        "precision": "fp32" if precision == "no" else "bf16 autocast",
                        "seconds_per_step": round(seconds, 3),
                        "steps_per_s": round(1 / seconds, 3),
                        "crops_per_s": round(crops / seconds, 3),
                        "synthesised_crops_per_step": round(synthetic, 2),
                    }
                ),
                flush=True,
            )
    print("command: python bench/bench_training.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
