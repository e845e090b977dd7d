"""Summarise the small leak-free experiment (scripts/experiment_small.sh) over arms and seeds.

    python scripts/experiment_table.py RESULTS_DIR        -> RESULTS_DIR/results.md, RESULTS_DIR/results.json

Reads ``RESULTS_DIR/{arm}_seed{seed}/metrics_iou0.1.json`` and ``metrics_iou0.5.json`` (written by ``difftumor
evaluate``; case ``lits117`` holds the test lesions, case ``patient_a`` is healthy) and ``run.json`` (settings, commit,
mean seconds per training step). Per arm, over seeds:

- DSC and NSD of the test case: mean over seeds [lowest, highest seed];
- lesion sensitivity at IoU >= 0.1 and >= 0.5: detections pooled over seeds ÷ (seeds × lesions), with a Wilson 95 %
  interval whose sample size is the number of *lesions* (the seeds re-train on the same data; the lesions are the
  independent sample, so pooling seeds must not narrow the interval);
- false-positive lesions per seed in the test case (outside the ignored zone) and in the healthy case; patient
  specificity = seeds whose model left the healthy case tumour-free;
- paired against every other arm on the early (< 20 mm) lesions at IoU >= 0.1: lesions detected by a majority of
  seeds in one arm and not the other, and the exact two-sided McNemar p-value of those discordant lesions;
- the paper's figures beside (Table 2, liver -> liver early sensitivity; U-Net liver DSC), from
  ``scripts/reproduce_paper/paper_table2.json``.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

from difftumor.evaluation.metrics import wilson_interval

ARMS = {
    "real": "real tumours (training side)",
    "hu2023": "healed liver + handcrafted, Hu et al. recipe",
    "relative": "healed liver + handcrafted, organ-relative",
    "diffusion": "healed liver + DiffTumor (bundled pipeline)",
    "none": "healed liver, no tumours (negative control)",
}
TEST_CASE, HEALTHY_CASE = "lits117", "patient_a"
EARLY_MM = 20.0


PAPER_TABLE = Path(__file__).resolve().parent / "reproduce_paper" / "paper_table2.json"
#: The paper's arm for each of ours (Table 2: real tumours, Hu et al., DiffTumor); the others have no counterpart.
PAPER_ARMS = {"real": "real", "hu2023": "hu2023", "diffusion": "synthetic"}
IOUS = ("0.1", "0.5")


def load_runs(results: Path) -> dict[str, dict[int, dict]]:
    """``{arm: {seed: {"iou0.1": cases, "iou0.5": cases, "run": run.json}}}`` of every finished run."""
    runs: dict[str, dict[int, dict]] = {}
    for folder in sorted(results.glob("*_seed*")):
        match = re.fullmatch(r"(.+)_seed(\d+)", folder.name)
        if not match or not (folder / "run.json").is_file():
            continue
        arm, seed = match.groups()
        entry = {"run": json.loads((folder / "run.json").read_text())}
        for iou in IOUS:
            cases = json.loads((folder / f"metrics_iou{iou}.json").read_text())["cases"]
            entry[f"iou{iou}"] = {case["case"]: case for case in cases}
        runs.setdefault(arm, {})[int(seed)] = entry
    return runs


def spread(values: list[float]) -> dict:
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "seeds": values}


def pooled_sensitivity(detections: list[list[bool]], keep: list[bool]) -> dict:
    lesions = sum(keep)
    per_seed = [sum(hit for hit, k in zip(seed, keep) if k) for seed in detections]
    if not lesions:
        return {"value": None, "ci95": None, "per_seed": per_seed, "lesions": 0}
    proportion = sum(per_seed) / (len(per_seed) * lesions)
    return {
        "value": proportion,
        "ci95": list(wilson_interval(proportion * lesions, lesions)),
        "per_seed": per_seed,
        "lesions": lesions,
    }


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar (binomial) p-value of discordant pairs."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(0, min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _bins(diameters: list[float]) -> dict[str, list[bool]]:
    return {
        "all": [True] * len(diameters),
        "<10mm": [d < 10 for d in diameters],
        "10-20mm": [10 <= d < 20 for d in diameters],
        "early <20mm": [d < EARLY_MM for d in diameters],
        ">=20mm": [d >= EARLY_MM for d in diameters],
    }


def summarise_arm(seeds: dict[int, dict]) -> dict:
    order = sorted(seeds)
    loose = [seeds[s]["iou0.1"][TEST_CASE] for s in order]
    healthy = [seeds[s]["iou0.1"][HEALTHY_CASE] for s in order]
    diameters = [lesion["diameter_mm"] for lesion in loose[0]["lesions"]]
    bins = _bins(diameters)
    sensitivity, majority = {}, {}
    for iou in IOUS:
        detections = [[lesion["detected"] for lesion in seeds[s][f"iou{iou}"][TEST_CASE]["lesions"]] for s in order]
        sensitivity[iou] = {name: pooled_sensitivity(detections, keep) for name, keep in bins.items()}
        majority[iou] = [sum(column) * 2 > len(column) for column in zip(*detections)]
    costs = [seeds[s]["run"]["seconds_per_step_mean"] for s in order]
    return {
        "seeds": order,
        "commits": sorted({seeds[s]["run"]["commit"] for s in order}),
        "settings": sorted({seeds[s]["run"]["settings"] for s in order}),
        "seconds_per_step": spread([c for c in costs if c is not None]) if any(costs) else None,
        "organ_dsc": spread([case["organ_dsc"] for case in loose]),
        "tumor_dsc": spread([case["tumor_dsc"] or 0.0 for case in loose]),
        "tumor_nsd": spread([case["tumor_nsd"] or 0.0 for case in loose]),
        "sensitivity": sensitivity,
        # False positives: predicted lesions matching no true lesion even at the loose IoU >= 0.1.
        "false_positives_test": spread([case["false_positive_lesions"] for case in loose]),
        "false_positives_healthy": spread([case["false_positive_lesions"] for case in healthy]),
        "healthy_tumor_free": sum(not case["predicted_tumor"] for case in healthy),
        "early": bins["early <20mm"],
        "majority_detected": majority,
    }


def _percent(value: float | None, interval: list[float] | None = None) -> str:
    if value is None:
        return "—"
    text = f"{100 * value:.1f}"
    return f"{text} [{100 * interval[0]:.0f}, {100 * interval[1]:.0f}]" if interval else text


def _spread(entry: dict, scale: float = 100.0, digits: int = 1) -> str:
    return f"{scale * entry['mean']:.{digits}f} ({scale * entry['min']:.{digits}f}–{scale * entry['max']:.{digits}f})"


def markdown(summary: dict[str, dict], paper: dict) -> str:
    early_paper = paper.get("early_sensitivity", {}).get("liver", {}).get("liver", {})
    dsc_paper = paper.get("figures", {}).get("liver", {}).get("unet", {})
    lines = [
        "| training data | s / step | organ DSC | tumour DSC | early (< 20 mm) sens. IoU ≥ 0.1 | early IoU ≥ 0.5 "
        "| all IoU ≥ 0.1 | ≥ 20 mm IoU ≥ 0.1 | early found per seed (of 22) | FP test case | FP healthy case "
        "| healthy case tumour-free | paper: early sens. | paper: DSC |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, label in ARMS.items():
        if arm not in summary:
            continue
        s = summary[arm]
        loose, strict = s["sensitivity"]["0.1"], s["sensitivity"]["0.5"]
        cost = s["seconds_per_step"]
        paper_arm = PAPER_ARMS.get(arm)
        cost_text = f"{cost['mean']:.3f}" if cost else "—"
        lines.append(
            f"| {label} | {cost_text} | {_spread(s['organ_dsc'])} "
            f"| {_spread(s['tumor_dsc'])} "
            f"| {_percent(loose['early <20mm']['value'], loose['early <20mm']['ci95'])} "
            f"| {_percent(strict['early <20mm']['value'], strict['early <20mm']['ci95'])} "
            f"| {_percent(loose['all']['value'], loose['all']['ci95'])} "
            f"| {_percent(loose['>=20mm']['value'], loose['>=20mm']['ci95'])} "
            f"| {', '.join(str(n) for n in loose['early <20mm']['per_seed'])} "
            f"| {_spread(s['false_positives_test'], 1, 1)} | {_spread(s['false_positives_healthy'], 1, 1)} "
            f"| {s['healthy_tumor_free']}/{len(s['seeds'])} "
            f"| {early_paper.get(paper_arm, '—') if paper_arm else '—'} "
            f"| {dsc_paper.get(paper_arm, {}).get('dsc', '—') if paper_arm else '—'} |"
        )
    pairs = []
    arms = [arm for arm in ARMS if arm in summary]
    for i, a in enumerate(arms):
        for b in arms[i + 1 :]:
            early = summary[a]["early"]
            hits_a, hits_b = summary[a]["majority_detected"]["0.1"], summary[b]["majority_detected"]["0.1"]
            only_a = sum(x and not y for x, y, e in zip(hits_a, hits_b, early) if e)
            only_b = sum(y and not x for x, y, e in zip(hits_a, hits_b, early) if e)
            pairs.append(f"| {a} vs {b} | {only_a} | {only_b} | {mcnemar_p(only_a, only_b):.3f} |")
    commits = sorted({c for s in summary.values() for c in s["commits"]})
    settings = sorted({c for s in summary.values() for c in s["settings"]})
    lines += [
        "",
        f"Runs from commit(s) {', '.join(commits)}; settings: {'; '.join(settings)}.",
        "",
        "Paired by early lesion (detected at IoU ≥ 0.1 by a majority of seeds), exact McNemar test:",
        "",
        "| arms (A vs B) | only A detects | only B detects | p |",
        "|---|---|---|---|",
        *pairs,
    ]
    return "\n".join(lines) + "\n"


def main(results: Path) -> None:
    runs = load_runs(results)
    if not runs:
        sys.exit(f"error: no *_seed*/run.json under {results}; run scripts/experiment_small.sh first")
    summary = {arm: summarise_arm(seeds) for arm, seeds in runs.items()}
    paper = json.loads(PAPER_TABLE.read_text())
    (results / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    (results / "results.md").write_text(markdown(summary, paper))
    print(markdown(summary, paper), end="")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "experiments/small"))
