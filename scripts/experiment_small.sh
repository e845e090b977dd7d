#!/usr/bin/env bash
# The small real-data experiment of the README ("Results"): a U-Net trained on patient A's healthy liver with
# synthetic tumours (handcrafted, then diffusion with the bundled pipeline) and one trained on real tumours (the
# lower slab of the LiTS upper half), all evaluated on the upper slab of the LiTS upper half.
#
#   bash scripts/experiment_small.sh [WORK_DIR] [STEPS]        (defaults: runs/experiment, 400)
#
# Environment: CROP (patch edge, default 64), CHANNELS (U-Net widths, default "16, 32, 64, 128").
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
data="$repo/tests/data"
demo="$repo/difftumor/assets/demo_case"
work="${1:-$repo/runs/experiment}"
steps="${2:-400}"
crop="${CROP:-64}"
channels="${CHANNELS:-16, 32, 64, 128}"
strides="$(python -c "print(', '.join(['2'] * (len('$channels'.split(',')) - 1)))")"
mkdir -p "$work"

# 1. Split the LiTS upper half (128 x 128 x 64) into two slabs along z: 0-31 (train) and 32-63 (test).
python - "$data/lits117_upper" "$work" <<'PY'
import sys
from pathlib import Path
import nibabel as nib, numpy as np
source, work = Path(sys.argv[1]), Path(sys.argv[2])
for name, zs in (("train", slice(0, 32)), ("test", slice(32, 64))):
    for kind, folder in (("ct", "images"), ("label", "labels")):
        image = nib.load(str(source / f"lits117_upper_{kind}.nii.gz"))
        affine = image.affine.copy()
        affine[:3, 3] += image.affine[:3, 2] * zs.start
        out = work / f"lits_{name}" / folder
        out.mkdir(parents=True, exist_ok=True)
        array = np.asanyarray(image.dataobj)[:, :, zs]
        nib.save(nib.Nifti1Image(array, affine, image.header), str(out / f"lits117_{name}.nii.gz"))
PY
mkdir -p "$work/patient_a/a"
ln -sfn "$demo/ct.nii.gz" "$work/patient_a/a/ct.nii.gz"
ln -sfn "$demo/organs.nii.gz" "$work/patient_a/a/seg.nii.gz"

# 2. Datalists: real tumours (train slab), healthy liver (patient A).
difftumor data prepare folders "$work/lits_train" --organ liver --out "$work/real.json"
difftumor data prepare totalsegmentator "$work/patient_a" --organ liver --out "$work/healthy.json"

# 3. Three U-Nets, same budget: handcrafted synthetic, diffusion synthetic, real.
common=(--set run.max_steps="$steps" --set run.checkpoint_every="$steps" --set run.log_every=10
        --set data.crop_size="[$crop,$crop,$crop]" --set data.batch_size=2 --set optim.warmup_steps=20
        --set "model.backbone_kwargs={channels: [$channels], strides: [$strides], num_res_units: 1}")
difftumor train segmentation "${common[@]}" --set run.output_dir="$work/model_handcrafted" \
    --set data.healthy_datalist="$work/healthy.json" --set synthesis.synthesizer=handcrafted
difftumor train segmentation "${common[@]}" --set run.output_dir="$work/model_diffusion" \
    --set data.healthy_datalist="$work/healthy.json" --set synthesis.synthesizer=diffusion
difftumor train segmentation "${common[@]}" --set run.output_dir="$work/model_real" \
    --set data.datalist="$work/real.json" --set synthesis.synthesizer=none

# 4. Segment the test slab with each model and evaluate against its expert labels.
for model in handcrafted diffusion real; do
    mkdir -p "$work/predictions_$model"
    difftumor segment "$work/lits_test/images/lits117_test.nii.gz" --model "$work/model_$model/model" \
        --out "$work/predictions_$model/lits117_test.nii.gz"
    difftumor evaluate --pred "$work/predictions_$model" --truth "$work/lits_test/labels" --truth-labels lits \
        --organ liver --out "$work/metrics_$model.json"
done
