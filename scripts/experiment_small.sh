#!/usr/bin/env bash
# The leak-free small experiment of docs/experiment.md (README "Results"). One liver with real tumours (the upper half of LiTS
# volume 117) is split by whole 3-D lesion (`difftumor data split-lesions`, 10 mm margin, seed 0 — the split the
# bundled pipeline was trained on). Five arms train the same small MONAI U-Net with identical steps, crops and
# augmentation, differing only in where their tumours come from:
#   real        the training side's real tumours (test zone replaced by parenchyma)
#   hu2023      the same liver healed (every lesion replaced by parenchyma) + handcrafted tumours, Hu et al.'s recipe
#   relative    the healed liver + handcrafted tumours, organ-relative contrast (the default recipe)
#   diffusion   the healed liver + DiffTumor tumours from the bundled pipeline
#   none        the healed liver, no tumours (negative control: what a model learns without any tumour)
# Each arm runs once per seed; every model segments the original CT (test lesions present, training lesions
# ignored: label 255) and patient A (a healthy CT from another scanner: false positives, patient specificity).
#
#   bash scripts/experiment_small.sh [WORK_DIR] [STEPS] [SEEDS]     (defaults: runs/experiment, 1500, "0 1 2")
#
# Environment: SPACING (training grid in mm, default 1.5 = the CT's own), CROP (patch edge, default 48), CHANNELS (U-Net widths, default "16, 32, 64, 128"), ARMS (default all
# five), OVERLAP (sliding-window overlap at inference, default 0.5). Finished runs are kept: rerunning skips every
# model and prediction that already exists.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
data="$repo/tests/data/lits117_upper"
demo="$repo/difftumor/assets/demo_case"
work="${1:-$repo/runs/experiment}"
steps="${2:-1500}"
seeds="${3:-0 1 2}"
crop="${CROP:-48}"
spacing="${SPACING:-1.5}"
channels="${CHANNELS:-16, 32, 64, 128}"
arms="${ARMS:-real hu2023 relative diffusion none}"
overlap="${OVERLAP:-0.5}"
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

# 2. Every arm x seed: train, segment the test set, evaluate.
common=(--set run.max_steps="$steps" --set run.checkpoint_every="$steps" --set run.log_every=50
        --set data.crop_size="[$crop,$crop,$crop]" --set data.spacing="$spacing" --set data.batch_size=2 --set optim.warmup_steps=20
        --set "model.backbone_kwargs={channels: [$channels], strides: [$strides], num_res_units: 1}")
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
for seed in $seeds; do
    for arm in $arms; do
        run="$work/runs/${arm}_seed$seed"
        if [ ! -f "$run/model/config.json" ]; then
            # shellcheck disable=SC2046
            difftumor train segmentation --config tiny_cpu "${common[@]}" $(arm_settings "$arm") \
                --set run.seed="$seed" --set run.output_dir="$run"
        fi
        difftumor segment "$work/test/images" --model "$run/model" --out "$run/predictions" --continue --overlap "$overlap"
        difftumor evaluate --pred "$run/predictions" --truth "$work/test/labels" --truth-labels internal \
            --organ liver --out "$run/metrics.json" --overwrite
    done
done

# 3. One table over arms and seeds (results.md, results.json).
python "$repo/scripts/experiment_table.py" "$work"
