"""Summarise the small leak-free experiment (scripts/experiment_small.sh) over arms and seeds.

    python scripts/experiment_table.py WORK_DIR        -> WORK_DIR/results.md, WORK_DIR/results.json

Reads ``WORK_DIR/runs/{arm}_seed{seed}/metrics.json`` (written by ``difftumor evaluate``; case ``lits117`` holds the
test lesions, case ``patient_a`` is healthy). Per arm, over seeds:

- DSC and NSD of the test case: mean over seeds [lowest, highest seed];
- lesion sensitivity: detections pooled over seeds ÷ (seeds × lesions), with a Wilson 95 % interval whose sample
  size is the number of *lesions* (the seeds re-train on the same data; the lesions are the independent sample, so
  pooling seeds must not narrow the interval);
- false-positive lesions per seed in the test case (outside the ignored zone) and in the healthy case; patient
  specificity = seeds whose model left the healthy case tumour-free;
- paired against every other arm: lesions detected by a majority of seeds in one arm and not the other, and the exact
  two-sided McNemar p-value of those discordant lesions.
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


def load_runs(work: Path) -> dict[str, dict[int, dict]]:
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(work.glob("runs/*_seed*/metrics.json")):
        arm, seed = re.fullmatch(r"(.+)_seed(\d+)", path.parent.name).groups()
        cases = {case["case"]: case for case in json.loads(path.read_text())["cases"]}
        runs.setdefault(arm, {})[int(seed)] = cases
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


def summarise_arm(seeds: dict[int, dict]) -> dict:
    test = [seeds[s][TEST_CASE] for s in sorted(seeds)]
    healthy = [seeds[s][HEALTHY_CASE] for s in sorted(seeds)]
    diameters = [lesion["diameter_mm"] for lesion in test[0]["lesions"]]
    detections = [[lesion["detected"] for lesion in case["lesions"]] for case in test]
    bins = {
        "all": [True] * len(diameters),
        "<10mm": [d < 10 for d in diameters],
        "10-20mm": [10 <= d < 20 for d in diameters],
        "early <20mm": [d < EARLY_MM for d in diameters],
        ">=20mm": [d >= EARLY_MM for d in diameters],
    }
    return {
        "seeds": sorted(seeds),
        "organ_dsc": spread([case["organ_dsc"] for case in test]),
        "tumor_dsc": spread([case["tumor_dsc"] or 0.0 for case in test]),
        "tumor_nsd": spread([case["tumor_nsd"] or 0.0 for case in test]),
        "sensitivity": {name: pooled_sensitivity(detections, keep) for name, keep in bins.items()},
        "false_positives_test": spread([case["false_positive_lesions"] for case in test]),
        "false_positives_healthy": spread([case["false_positive_lesions"] for case in healthy]),
        "healthy_tumor_free": sum(not case["predicted_tumor"] for case in healthy),
        "majority_detected": [sum(column) * 2 > len(column) for column in zip(*detections)],
    }


def _percent(value: float | None, interval: list[float] | None = None) -> str:
    if value is None:
        return "—"
    text = f"{100 * value:.1f}"
    return f"{text} [{100 * interval[0]:.0f}, {100 * interval[1]:.0f}]" if interval else text


def _spread(entry: dict, scale: float = 100.0, digits: int = 1) -> str:
    return f"{scale * entry['mean']:.{digits}f} ({scale * entry['min']:.{digits}f}–{scale * entry['max']:.{digits}f})"


def markdown(summary: dict[str, dict]) -> str:
    lines = [
        "| training data | organ DSC | tumour DSC | tumour NSD 2 mm | lesion sens. all | < 10 mm | 10–20 mm "
        "| ≥ 20 mm | detected per seed | FP test case | FP healthy case | healthy case tumour-free |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, label in ARMS.items():
        if arm not in summary:
            continue
        s = summary[arm]
        sens = s["sensitivity"]
        lines.append(
            f"| {label} | {_spread(s['organ_dsc'])} | {_spread(s['tumor_dsc'])} | {_spread(s['tumor_nsd'])} | "
            + " | ".join(_percent(sens[k]["value"], sens[k]["ci95"]) for k in ("all", "<10mm", "10-20mm", ">=20mm"))
            + f" | {', '.join(str(n) for n in sens['all']['per_seed'])} of {sens['all']['lesions']}"
            + f" | {_spread(s['false_positives_test'], 1, 1)} | {_spread(s['false_positives_healthy'], 1, 1)}"
            + f" | {s['healthy_tumor_free']}/{len(s['seeds'])} |"
        )
    pairs = []
    arms = [arm for arm in ARMS if arm in summary]
    for i, a in enumerate(arms):
        for b in arms[i + 1 :]:
            hits_a, hits_b = summary[a]["majority_detected"], summary[b]["majority_detected"]
            only_a = sum(x and not y for x, y in zip(hits_a, hits_b))
            only_b = sum(y and not x for x, y in zip(hits_a, hits_b))
            pairs.append(f"| {a} vs {b} | {only_a} | {only_b} | {mcnemar_p(only_a, only_b):.3f} |")
    lines += [
        "",
        "Paired by lesion (detected by a majority of seeds), exact McNemar test:",
        "",
        "| arms (A vs B) | only A detects | only B detects | p |",
        "|---|---|---|---|",
        *pairs,
    ]
    return "\n".join(lines) + "\n"


def main(work: Path) -> None:
    runs = load_runs(work)
    if not runs:
        sys.exit(f"error: no runs/*_seed*/metrics.json under {work}; run scripts/experiment_small.sh first")
    summary = {arm: summarise_arm(seeds) for arm, seeds in runs.items()}
    (work / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    (work / "results.md").write_text(markdown(summary))
    print(markdown(summary), end="")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/experiment"))
