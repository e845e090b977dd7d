"""Realism acceptance check: early tumours from both synthesizers against real lesions.

For each CT (default: patient A — non-contrast, resampled to 1 mm so that lesions under 1 cm are not measured
through 3 mm partial volume — and the contrast-enhanced LiTS upper half), `difftumor synthesize` paints ``--count``
early tumours with the diffusion synthesizer (default settings, and with its contrast cap off: the model's own
contrast) and the handcrafted one; `difftumor realism` measures them against the real LiTS lesions, beside the
rule-only ablation of the diffusion tumours and a machine reader for every group, and the criteria of docs/realism.md
are checked for the three synthetic groups:

- the medians of contrast ÷ organ mean, contrast ÷ organ std and internal std ÷ organ std of the synthetic tiny
  (< 10 mm) and small (10–20 mm) lesions lie within [0.6×, 1.6×] of the real lesions < 20 mm;
- no synthetic lesion's mean HU is below 0 in an organ whose core is ≥ 40 HU;
- the median stride-artefact score lies within the real lesions' range;
- with default settings, the diffusion synthesizer's contrast cap rescales at most 10 % of the tumours, with a median
  scale of at least 0.8 (the model paints the contrast itself).

Usage::

    python scripts/realism_check.py --out runs/realism
    python scripts/realism_check.py --out runs/mine --case mine CT.nii.gz ORGANS.nii.gz 5   # your own scan

Exit code 0 when every criterion holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
PATIENT_A = REPO / "difftumor" / "assets" / "demo_case"
LITS = REPO / "tests" / "data" / "lits117_upper"
BOUNDS = (0.6, 1.6)
RATIOS = ("contrast_to_organ_mean", "contrast_to_organ_std", "internal_std_to_organ_std")
#: (folder, synthesizer, extra options): the diffusion synthesizer with its default contrast cap and with the cap off
#: (the model's own contrast), and the handcrafted one.
RUNS = (
    ("diffusion", "diffusion", ()),
    ("diffusion_cap_off", "diffusion", ("--option", "max_contrast=null")),
    ("handcrafted", "handcrafted", ()),
)
#: The contrast cap may fire on at most this share of default diffusion tumours, with at least this median scale.
CAP_FIRING_MAX, CAP_MEDIAN_SCALE_MIN = 0.10, 0.8


def one_mm_copy(ct_path: Path, mask_path: Path, label: int, out: Path, margin_mm: float = 30.0) -> tuple[Path, Path]:
    """The organ's region of a CT and its mask resampled to 1 mm along the stored axes (geometry kept)."""
    from difftumor.spatial.grid import sample

    ct, mask = nib.load(str(ct_path)), nib.load(str(mask_path))
    labels = np.asarray(mask.dataobj)
    points = np.argwhere(labels == label)
    spacing = np.sqrt((ct.affine[:3, :3] ** 2).sum(0))
    low = np.maximum(points.min(0) - np.ceil(margin_mm / spacing), 0)
    high = np.minimum(points.max(0) + np.ceil(margin_mm / spacing), np.asarray(ct.shape) - 1)
    shape = tuple(int(v) for v in np.floor((high - low) * spacing) + 1)
    affine = ct.affine.copy()
    affine[:3, :3] = ct.affine[:3, :3] / spacing
    affine[:3, 3] = (ct.affine @ np.append(low, 1.0))[:3]
    image = sample(np.asarray(ct.dataobj).astype(np.float32), ct.affine, affine, shape, order=1)
    organs = sample(labels.astype(np.uint8), ct.affine, affine, shape, order=0)
    out.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.rint(image).astype(np.int16), affine), str(out / "ct.nii.gz"))
    nib.save(nib.Nifti1Image(organs.astype(np.uint8), affine), str(out / "organs.nii.gz"))
    return out / "ct.nii.gz", out / "organs.nii.gz"


def link_real_lesions(out: Path) -> Path:
    """``out/real`` with images/ and labels/ linking the LiTS upper half (the real lesions `realism` compares with)."""
    real = out / "real"
    for sub, name in (("images", "lits117_upper_ct.nii.gz"), ("labels", "lits117_upper_label.nii.gz")):
        (real / sub).mkdir(parents=True, exist_ok=True)
        link = real / sub / "lits117.nii.gz"
        if not link.exists():
            link.symlink_to(LITS / name)
    return real


def default_cases(out: Path) -> list[tuple[str, Path, Path, int]]:
    """``(name, CT, organ mask, organ label)`` of the two CTs the realism checks paint into: patient A on a 1 mm
    copy (written under ``out/inputs``) and the LiTS upper half."""
    ct, organs = one_mm_copy(PATIENT_A / "ct.nii.gz", PATIENT_A / "organs.nii.gz", 5, out / "inputs" / "patient_a")
    return [
        ("patient_a_1mm", ct, organs, 5),
        ("lits117_upper", LITS / "lits117_upper_ct.nii.gz", LITS / "lits117_upper_label.nii.gz", 1),
    ]


def run(*arguments: str) -> None:
    subprocess.run(["difftumor", *arguments], check=True)


def check(report: dict, case: str) -> list[tuple[str, str, bool]]:
    lesions = report["lesions"]
    real = [r for r in lesions["real"] if r["diameter_mm"] < 20]
    results = []
    real_artifact = [r["stride_artifact"] for r in real if np.isfinite(r["stride_artifact"])]
    for group, records in lesions.items():
        if group in ("real", "rule-only"):  # the ablation is measured, not held to the criteria
            continue
        for name, (low, high) in (("tiny", (0, 10)), ("small", (10, 20))):
            chosen = [r for r in records if low <= r["diameter_mm"] < high]
            if not chosen:
                continue
            for feature in RATIOS:
                ratio = np.nanmedian([r[feature] for r in chosen]) / np.nanmedian([r[feature] for r in real])
                ok = BOUNDS[0] <= ratio <= BOUNDS[1]
                results.append((f"{case} · {group} · {name} (n={len(chosen)}) · {feature}", f"×{ratio:.2f}", ok))
        negative = [r for r in records if r["organ_core_hu"] >= 40 and r["lesion_hu"] < 0]
        results.append((f"{case} · {group} · lesions below 0 HU in a liver ≥ 40 HU", str(len(negative)), not negative))
        artifact = float(np.nanmedian([r["stride_artifact"] for r in records]))
        inside = min(real_artifact) <= artifact <= max(real_artifact)
        results.append((f"{case} · {group} · stride artefact median", f"{artifact:.3f}", inside))
    return results


def cap_check(manifest: Path, case: str) -> list[tuple[str, str, bool]]:
    """How often the contrast cap rescaled a default diffusion tumour, and by how much (median scale)."""
    scales = [t["contrast_cap_scale"] for t in json.loads(manifest.read_text())["tumors"]]
    fired = float(np.mean([scale < 1 for scale in scales]))
    median = float(np.median(scales))
    return [
        (f"{case} · diffusion · contrast cap fired (≤ {CAP_FIRING_MAX:.0%})", f"{fired:.0%}", fired <= CAP_FIRING_MAX),
        (
            f"{case} · diffusion · median cap scale (≥ {CAP_MEDIAN_SCALE_MIN})",
            f"{median:.2f}",
            median >= CAP_MEDIAN_SCALE_MIN,
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--case", nargs=4, action="append", metavar=("NAME", "CT", "MASK", "LABEL"))
    parser.add_argument("--pipeline", help="diffusion pipeline to check (default: the bundled one)")
    parser.add_argument("--device", default="cpu", help="device of the diffusion synthesizer")
    parser.add_argument(
        "--diffusion-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="synthesizer option of both diffusion runs",
    )
    arguments = parser.parse_args()
    out = arguments.out.resolve()
    real = link_real_lesions(out)
    if arguments.case:
        cases = [(name, Path(ct), Path(mask), int(label)) for name, ct, mask, label in arguments.case]
    else:
        cases = default_cases(out)
    results = []
    for name, ct, mask, label in cases:
        (out / name).mkdir(parents=True, exist_ok=True)
        folders = []
        for folder_name, synthesizer, options in RUNS:
            folder = out / name / folder_name
            if not (folder / "tumors.json").exists():
                run(
                    "synthesize",
                    str(ct),
                    "--organ-mask",
                    str(mask),
                    "--organ-label",
                    str(label),
                    "--organ",
                    "liver",
                    "--synthesizer",
                    synthesizer,
                    "--count",
                    str(arguments.count),
                    "--seed",
                    str(arguments.seed),
                    "--out",
                    str(folder),
                    *options,
                    *(
                        ["--device", arguments.device]
                        + (["--pipeline", arguments.pipeline] if arguments.pipeline else [])
                        + [part for option in arguments.diffusion_option for part in ("--option", option)]
                        if synthesizer == "diffusion"
                        else []
                    ),
                )
            folders += ["--synthetic", str(folder)]
        results += cap_check(out / name / "diffusion" / "tumors.json", name)
        run(
            "realism",
            *folders,
            "--real",
            str(real),
            "--truth-labels",
            "lits",
            "--out",
            str(out / name / "realism"),
            "--overwrite",
        )
        report = json.loads((out / name / "realism" / "realism.json").read_text())
        results += check(report, name)
    print("\n| criterion | value | holds |\n|---|---|---|")
    for criterion, value, ok in results:
        print(f"| {criterion} | {value} | {'yes' if ok else '**no**'} |")
    failed = sum(not ok for _, _, ok in results)
    print(f"\n{len(results) - failed}/{len(results)} criteria hold")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
