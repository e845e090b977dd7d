#!/usr/bin/env bash
# The leak-free small experiment of docs/experiment.md (README "Results"). One liver with real tumours (the upper half
# of LiTS volume 117) is split by whole 3-D lesion (`difftumor data split-lesions`, 10 mm margin, seed 0 — the split
# the bundled pipeline was trained on). Five arms train the same small MONAI U-Net with identical steps, crops,
# augmentation and tumour exposure, differing only in where their tumours come from:
#   real        the training side's real tumours (test zone replaced by parenchyma)
#   hu2023      the same liver healed (every lesion replaced by parenchyma) + handcrafted tumours, Hu et al.'s recipe
#   relative    the healed liver + handcrafted tumours, organ-relative contrast (the default recipe)
#   diffusion   the healed liver + DiffTumor tumours from the bundled pipeline
#   none        the healed liver, no tumours (negative control: what a model learns without any tumour)
# Tumour exposure: a quarter of all crops (positive 0.5 x TUMOR_CROPS) are centred on a real tumour (real arm) or
# painted with synthetic ones (synthetic arms); painted crops go through a bank (each reused BANK_REUSE times on
# average, under fresh flips and rotations) so that a synthetic arm's step costs about what the real arm's does.
# Each model segments the original CT (test lesions present, training lesions ignored: label 255) and patient A (a
# healthy CT from another scanner: false positives, patient specificity); both are evaluated at IoU >= 0.1 and 0.5.
#
#   bash scripts/experiment_small.sh [WORK_DIR] [STEPS] [SEEDS]     (defaults: runs/experiment, 3000, "0 1 2")
#
# Results: each finished run's metrics (a few kB) and settings go to RESULTS (default experiments/small in the
# repository, meant to be committed). A run whose committed results carry the same settings is not retrained, so a
# later sitting resumes where the last one stopped; an interrupted training resumes from its newest checkpoint.
# Environment: SPACING (grid in mm, default 1.0: synthesis paints on 1 mm), CROP (default 48), CHANNELS (default
# "16, 32, 64, 128"), ARMS (default all five), OVERLAP (sliding-window overlap, default 0.5), TUMOR_CROPS (default
# 0.5), AFFINE (random rotation/scaling probability, default 0.5), PHASE (probability of a ±80 HU contrast-phase
# shift, default 0.5), BANK_SIZE (default 64), BANK_REUSE (default 8),
# EXTRA (more --set options for every arm), JOBS (runs at a time, default 2).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
data="$repo/tests/data/lits117_upper"
demo="$repo/difftumor/assets/demo_case"
work="${1:-$repo/runs/experiment}"
steps="${2:-3000}"
seeds="${3:-0 1 2}"
crop="${CROP:-48}"
spacing="${SPACING:-1.0}"
channels="${CHANNELS:-16, 32, 64, 128}"
arms="${ARMS:-real hu2023 relative diffusion none}"
overlap="${OVERLAP:-0.5}"
tumor_crops="${TUMOR_CROPS:-0.5}"
affine="${AFFINE:-0.5}"
phase="${PHASE:-0.5}"
bank_size="${BANK_SIZE:-64}"
bank_reuse="${BANK_REUSE:-8}"
results="${RESULTS:-$repo/experiments/small}"
jobs="${JOBS:-2}"
# The code that produces this sitting's runs (recorded in each run.json; "+" = with uncommitted changes).
commit="$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
[ -z "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ] || commit="$commit+"
extra="${EXTRA:-}"  # more --set options for every arm (ablations); part of the settings that decide a rerun
strides="$(python -c "print(', '.join(['2'] * (len('$channels'.split(',')) - 1)))")"
mkdir -p "$work"
work="$(cd "$work" && pwd)"  # the links below must not depend on where the script was started

# 1. The lesion-wise split, and the test set: the original CT with its test label, patient A with its liver.
if [ ! -f "$work/split/split.json" ]; then
    difftumor data split-lesions "$data/lits117_upper_ct.nii.gz" "$data/lits117_upper_label.nii.gz" \
        --out "$work/split" --margin-mm 10 --seed 0
fi
mkdir -p "$work/src/real/images" "$work/src/real/labels" "$work/src/healthy/images" "$work/src/healthy/labels" \
    "$work/test/images" "$work/test/labels"
ln -sfn "$work/split/train_ct.nii.gz" "$work/src/real/images/lits117.nii.gz"
ln -sfn "$work/split/train_label.nii.gz" "$work/src/real/labels/lits117.nii.gz"
ln -sfn "$work/split/healthy_ct.nii.gz" "$work/src/healthy/images/lits117.nii.gz"
ln -sfn "$work/split/healthy_label.nii.gz" "$work/src/healthy/labels/lits117.nii.gz"
ln -sfn "$data/lits117_upper_ct.nii.gz" "$work/test/images/lits117.nii.gz"
ln -sfn "$work/split/test_label.nii.gz" "$work/test/labels/lits117.nii.gz"
python - "$demo" "$work/test" <<'PY'
# Patient A's upper abdomen: the liver's bounding box with a 30 mm margin (inference on the whole trunk would
# triple the experiment's time and test nothing more), liver = 1 (TotalSegmentator v2 id 5).
import sys
import nibabel as nib, numpy as np
demo, test = sys.argv[1], sys.argv[2]
ct, organs = nib.load(f"{demo}/ct.nii.gz"), nib.load(f"{demo}/organs.nii.gz")
liver = np.asanyarray(organs.dataobj) == 5
margin = np.ceil(30.0 / np.asarray(ct.header.get_zooms()[:3])).astype(int)
low = np.maximum(np.argwhere(liver).min(0) - margin, 0)
high = np.minimum(np.argwhere(liver).max(0) + margin + 1, liver.shape)
box = tuple(slice(a, b) for a, b in zip(low, high))
affine = ct.affine.copy()
affine[:3, 3] = ct.affine[:3, :3] @ low + ct.affine[:3, 3]
nib.save(nib.Nifti1Image(np.asanyarray(ct.dataobj)[box], affine, ct.header), f"{test}/images/patient_a.nii.gz")
nib.save(nib.Nifti1Image(liver[box].astype(np.uint8), affine), f"{test}/labels/patient_a.nii.gz")
PY
[ -f "$work/real.json" ] || difftumor data prepare folders "$work/src/real" --organ liver --out "$work/real.json"
[ -f "$work/healthy.json" ] || difftumor data prepare folders "$work/src/healthy" --organ liver --out "$work/healthy.json"

# 2. Every arm x seed: train (resumable), segment the test set, evaluate at IoU >= 0.1 and 0.5; keep the metrics.
common=(--set run.max_steps="$steps" --set run.checkpoint_every=500 --set run.log_every=50
        --set data.crop_size="[$crop,$crop,$crop]" --set data.spacing="$spacing" --set data.batch_size=2
        --set optim.warmup_steps=20
        --set "model.backbone_kwargs={channels: [$channels], strides: [$strides], num_res_units: 1}"
        --set data.tumor_crop_fraction="$tumor_crops" --set synthesis.prob="$tumor_crops"
        --set data.affine_prob="$affine" --set data.phase_shift_prob="$phase" --set synthesis.bank_size="$bank_size" --set synthesis.bank_reuse="$bank_reuse")
arm_settings() {
    case "$1" in
        real) echo "--set data.datalist=$work/real.json --set data.healthy_datalist=\"\" --set synthesis.synthesizer=none" ;;
        hu2023) echo "--set data.healthy_datalist=$work/healthy.json --set synthesis.synthesizer=handcrafted --set synthesis.recipe=hu2023" ;;
        relative) echo "--set data.healthy_datalist=$work/healthy.json --set synthesis.synthesizer=handcrafted" ;;
        diffusion) echo "--set data.healthy_datalist=$work/healthy.json --set synthesis.synthesizer=diffusion" ;;
        none) echo "--set data.healthy_datalist=$work/healthy.json --set synthesis.synthesizer=none" ;;
        *) echo "unknown arm $1" >&2; exit 2 ;;
    esac
}
# What decides a run's result: a committed run with other settings is retrained, not mixed into the table.
settings="steps=$steps crop=$crop spacing=$spacing channels=$channels overlap=$overlap tumor_crops=$tumor_crops affine=$affine phase=$phase bank=$bank_size/$bank_reuse${extra:+ extra=$extra}"
run_one() {  # ARM SEED: train (or resume), segment, evaluate, keep
    local arm="$1" seed="$2"
    local run="$work/runs/${arm}_seed$seed" kept="$results/${arm}_seed$seed"
    if [ -f "$kept/run.json" ] && python -c "import json,sys; sys.exit(json.load(open('$kept/run.json'))['settings'] != '$settings')"; then
        echo "kept: $kept (same settings; delete it to rerun)"
        return
    fi
    if [ ! -f "$run/model/config.json" ]; then
        local resume=()
        [ -d "$run/checkpoints" ] && resume=(--resume)
        # shellcheck disable=SC2046
        difftumor train segmentation --config tiny_cpu "${common[@]}" $(arm_settings "$arm") \
            --set run.seed="$seed" --set run.output_dir="$run" $extra "${resume[@]}"
    fi
    difftumor segment "$work/test/images" --model "$run/model" --out "$run/predictions" --continue --overlap "$overlap"
    for iou in 0.1 0.5; do
        difftumor evaluate --pred "$run/predictions" --truth "$work/test/labels" --truth-labels internal \
            --organ liver --iou-threshold "$iou" --out "$run/metrics_iou$iou.json" --overwrite
    done
    mkdir -p "$kept.partial"
    cp "$run/metrics_iou0.1.json" "$run/metrics_iou0.5.json" "$kept.partial/"
    python - "$run" "$kept.partial/run.json" "$settings" "$arm" "$seed" "$commit" "$jobs" <<'PY'
# The run's settings, the commit that produced it, and its mean step time: the trainer logs the time of every 50th
# step, a systematic sample of the run (with a bank, painting steps are rarer and slower than the rest).
import csv, json, os, statistics, sys
run, out, settings, arm, seed, commit, jobs = sys.argv[1:]
seconds = [float(r[2]) for r in csv.reader(open(f"{run}/metrics.csv")) if len(r) == 3 and r[1] == "seconds_per_step"]
cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
json.dump({"arm": arm, "seed": int(seed), "settings": settings, "commit": commit,
           # a run shorter than one logging interval: its whole time over its steps
           "seconds_per_step_mean": statistics.fmean(seconds) if seconds else
               (lambda t: t["seconds"] / t["steps"])(json.load(open(f"{run}/model/training.json"))),
           "machine": f"{cpu}, {os.cpu_count()} cores, {jobs} run(s) at a time"},
          open(out, "w"), indent=1)
PY
    rm -rf "$kept" && mv "$kept.partial" "$kept"
    echo "kept: $kept — commit it so that a later sitting does not retrain this run"
}
# JOBS runs at a time, each with cores/JOBS threads: on 2 cores two one-thread runs train about 1.5x faster than
# one two-thread run (the small network does not use two threads fully).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / jobs > 0 ? $(nproc) / jobs : 1 ))}"
# A failed run is reported and the others go on; the sitting exits non-zero at the end.
failed=0
for seed in $seeds; do
    for arm in $arms; do
        run_one "$arm" "$seed" &
        while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || failed=1; done
    done
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || failed=1; done

# 3. One table over arms and seeds (results.md, results.json).
python "$repo/scripts/experiment_table.py" "$results"
[ "$failed" = 0 ] || { echo "error: some runs failed (see above); rerun to retry them" >&2; exit 1; }
