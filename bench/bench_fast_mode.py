"""What the pipeline's fast mode changes: tumour by tumour against the exact path, and realism against real lesions.

`difftumor synthesize` paints ``--count`` early tumours into patient A (1 mm copy) and the LiTS upper half twice with
the same seed — exact and ``--option fast=true`` — so that both runs place the same tumours with the same blur and the
same noise (the fast mode encodes and samples the whole crop as the exact path does: the final latents are equal, and
the runs differ only in the decode — the window's GroupNorm statistics, and bfloat16 where native). Reported per case:

- per tumour, mean HU inside the tumour (exact, fast, difference) and the mean |ΔHU| over the blended voxels;
- for scale, the same differences between two *exact* runs whose seeds differ only in the sampler's noise
  (same ``--seed``, synthesizer option ``noise_seed=1``): what the sampler's noise alone changes, and 95 % paired
  bootstrap intervals of fast − noise for the median and q90 of the per-tumour changes;
- `difftumor realism` of both against the real LiTS lesions (contrast ÷ organ mean / std, internal std, stride
  score, medians with IQR).

    python bench/bench_fast_mode.py --out runs/bench_fast --count 24 --threads 2
    python bench/bench_fast_mode.py --out runs/bench_fast_widest --count 24 --threads 2 --blend-sigma-mm 4 4
    python bench/bench_fast_mode.py --out runs/bench_fast_widest --count 24 --threads 2 --blend-sigma-mm 4 4 \
        --against runs/bench_fast_widest_at_another_commit
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage, stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from realism_check import default_cases, link_real_lesions  # noqa: E402


def synthesize(ct: Path, mask: Path, label: int, out: Path, count: int, seed: int, *arguments: str) -> None:
    """``difftumor synthesize`` into ``out`` (skipped when it holds a finished run), with extra CLI ``arguments``."""
    if (out / "tumors.json").exists():
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    command = ["difftumor", "synthesize", str(ct), "--organ-mask", str(mask), "--organ-label", str(label)]
    command += ["--organ", "liver", "--count", str(count), "--seed", str(seed), "--out", str(out), *arguments]
    subprocess.run(command, check=True)


def tumour_means(folder: Path, components: np.ndarray, count: int) -> tuple[list[float], np.ndarray]:
    """Mean HU inside each tumour (connected components of the first run's tumour label) and the CT."""
    ct = np.asarray(nib.load(str(folder / "ct.nii.gz")).dataobj, dtype=np.float64)
    return [float(ct[components == index].mean()) for index in range(1, count + 1)], ct


def tumour_changes(first: Path, second: Path) -> tuple[np.ndarray, list[float], list[float], np.ndarray, np.ndarray]:
    """|Δ mean HU| per tumour (the first run's tumours) between two runs, both runs' tumour means and CTs."""
    data = json.loads((first / "tumors.json").read_text())
    label = np.asarray(nib.load(str(first / "label.nii.gz")).dataobj)
    components, count = ndimage.label(label == int(data["tumor_label"]))
    means_a, ct_a = tumour_means(first, components, count)
    means_b, ct_b = tumour_means(second, components, count)
    return np.abs(np.asarray(means_a) - np.asarray(means_b)), means_a, means_b, ct_a, ct_b


def compare(first: Path, second: Path, original: np.ndarray) -> dict:
    difference, means_a, means_b, ct_a, ct_b = tumour_changes(first, second)
    changed = (ct_a != original) | (ct_b != original)
    return {
        "tumours": len(means_a),
        "tumour_mean_hu_first_median": round(float(np.median(means_a)), 1),
        "tumour_mean_hu_second_median": round(float(np.median(means_b)), 1),
        "tumour_mean_abs_difference_hu": {
            "median": round(float(np.nanmedian(difference)), 2),
            "q75": round(float(np.nanquantile(difference, 0.75)), 2),
            "q90": round(float(np.nanquantile(difference, 0.9)), 2),
            "max": round(float(np.nanmax(difference)), 2),
            "per_tumour": [round(float(value), 3) for value in difference],
        },
        "blended_voxels_mean_abs_difference_hu": round(float(np.abs(ct_a - ct_b)[changed].mean()), 2),
    }


def paired_bootstrap(candidate: list[float], noise: list[float], resamples: int = 5000, seed: int = 0) -> dict:
    """95 % intervals of ``candidate − noise`` for the median and q90 of per-tumour changes, the tumours resampled
    together (both lists are indexed by the same tumours): can this many tumours tell the two apart?"""
    pairs = np.array([candidate, noise], dtype=np.float64)
    pairs = pairs[:, ~np.isnan(pairs).any(0)]
    if pairs.shape[1] < 2:
        return {"tumours": pairs.shape[1], "note": "too few tumours to resample"}
    draws = np.random.default_rng(seed).integers(0, pairs.shape[1], size=(resamples, pairs.shape[1]))
    report = {}
    for name, statistic in (("median", 0.5), ("q90", 0.9)):
        observed = np.quantile(pairs[0], statistic) - np.quantile(pairs[1], statistic)
        resampled = np.quantile(pairs[0][draws], statistic, axis=1) - np.quantile(pairs[1][draws], statistic, axis=1)
        interval = np.quantile(resampled, [0.025, 0.975])
        report[name] = {"difference": round(float(observed), 2), "interval_95": [round(float(v), 2) for v in interval]}
    return report


FEATURES = ("lesion_hu", "contrast_hu", "contrast_to_organ_mean", "contrast_to_organ_std", "internal_std_to_organ_std")


def _realism_summary(report: dict) -> dict:
    """Per feature, the synthetic early (< 20 mm) lesions' median [IQR] and their ratio of medians to the real ones."""
    early = report["comparison"]["early <20mm"]
    summary = {}
    for feature in FEATURES + ("stride_artifact",):
        groups = early[feature]
        synthetic = next(value for key, value in groups.items() if key != "real")
        summary[feature] = {
            "n": synthetic["n"],
            "median": round(synthetic["median"], 3),
            "iqr": [round(v, 3) for v in synthetic["iqr"]],
            "real_median": round(groups["real"]["median"], 3),
        }
    return summary


def paint_and_compare(
    out: Path, count: int, seed: int, runs: dict[str, tuple[str, ...]], reference: str, candidate: str, noise: str
) -> dict:
    """Paint each default case once per run (``difftumor synthesize`` arguments), then compare ``candidate`` and
    ``noise`` (the reference with the sampler's noise re-drawn) tumour by tumour with ``reference``, and the realism of
    ``reference`` and ``candidate`` against the real LiTS lesions."""
    real = link_real_lesions(out)
    report = {}
    for name, ct_path, mask_path, label in default_cases(out):
        folder = out / name
        for run, arguments in runs.items():
            synthesize(ct_path, mask_path, label, folder / run, count, seed, *arguments)
        original = np.asarray(nib.load(str(ct_path)).dataobj, dtype=np.float64)
        changes = compare(folder / reference, folder / candidate, original)
        noise_changes = compare(folder / reference, folder / noise, original)
        report[name] = {
            f"{reference}_vs_{candidate}": changes,
            f"{reference}_vs_{noise}": noise_changes,
            f"{candidate}_minus_{noise}": paired_bootstrap(
                changes["tumour_mean_abs_difference_hu"]["per_tumour"],
                noise_changes["tumour_mean_abs_difference_hu"]["per_tumour"],
            ),
        }
        for run in (reference, candidate):  # one report each: realism groups lesions by synthesizer, not by folder
            realism = folder / f"realism_{run}"
            subprocess.run(
                ["difftumor", "realism", "--synthetic", str(folder / run), "--real", str(real)]
                + ["--truth-labels", "lits", "--out", str(realism), "--overwrite"],
                check=True,
            )
            summary = json.loads((realism / "realism.json").read_text())
            report[name][f"realism_{run}"] = _realism_summary(summary)
    return report


def against(folder: Path, other: Path) -> dict:
    """This fast run's per-tumour changes against another fast run's of the same tumours (the same exact run): paired
    bootstrap intervals of this − other and a Wilcoxon signed-rank test."""
    if (folder / "exact" / "ct.nii.gz").read_bytes() != (other / "exact" / "ct.nii.gz").read_bytes():
        raise SystemExit(f"{other}: its exact run is not this one's; copy this run's exact folders there first")
    changes = [tumour_changes(folder / "exact", run / "fast")[0].tolist() for run in (folder, other)]
    return {**paired_bootstrap(*changes), "wilcoxon_p": round(float(stats.wilcoxon(*changes).pvalue), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--blend-sigma-mm", type=float, nargs=2, metavar=("LOW", "HIGH"), help="the blur's range in every run"
    )
    parser.add_argument(
        "--against",
        type=Path,
        help="another --out of this bench (another commit's fast mode, same --seed and blur; its exact runs copied "
        "from this one): its fast tumours' changes compared with these, tumour by tumour",
    )
    arguments = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(arguments.threads)
    blur = () if arguments.blend_sigma_mm is None else ("--option", f"blend_sigma_mm={list(arguments.blend_sigma_mm)}")
    runs = {
        "exact": blur,
        "exact_other_noise": (*blur, "--option", "noise_seed=1"),
        "fast": (*blur, "--option", "fast=true"),
    }
    report = paint_and_compare(
        arguments.out.resolve(), arguments.count, arguments.seed, runs, "exact", "fast", "exact_other_noise"
    )
    if arguments.against is not None:
        for name in report:
            report[name]["fast_minus_against_fast"] = against(arguments.out.resolve() / name, arguments.against / name)
    print(json.dumps(report, indent=1))
    print("command: python bench/bench_fast_mode.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
