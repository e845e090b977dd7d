#!/usr/bin/env bash
# Reproduce the bundled demo pipeline (difftumor/assets/tiny_pipeline) from the repository's real CT (tests/data,
# difftumor/assets) with the project's own trainers, on CPU. Usage:
#   bash scripts/train_bundled_pipeline.sh [WORK_DIR] [--data-only]   (about two hours on 2 cores)
# Interrupted, the same command resumes: each training continues from its last checkpoint, finished stages are kept.
# --data-only stops after the datalists (scripts/train_bundled_pipeline_gpu.sh uses them).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
data="$repo/tests/data"
demo="$repo/difftumor/assets/demo_case"
work="${1:-$repo/runs/bundled}"
data_only="${2:-}"
mkdir -p "$work" && work="$(cd "$work" && pwd)"  # absolute: the links below must resolve from anywhere
# --resume once a run folder holds a checkpoint
resume() { if [ -d "$1/checkpoints" ] && [ -n "$(ls -A "$1/checkpoints")" ]; then echo --resume; fi; }
mkdir -p "$work/src/lits/images" "$work/src/lits/labels" "$work/src/patient_a/a" "$work/data"

# 0. Lesion-wise split of the LiTS upper half (10 mm margin, seed 0): only the training side is used below; the test
#    side (and its margin) is replaced by synthetic parenchyma in train_ct, so no model here sees a test lesion.
difftumor data split-lesions "$data/lits117_upper/lits117_upper_ct.nii.gz" "$data/lits117_upper/lits117_upper_label.nii.gz" \
    --out "$work/split" --margin-mm 10 --seed 0 --overwrite
ln -sfn "$work/split/train_ct.nii.gz" "$work/src/lits/images/lits117_upper_train.nii.gz"
ln -sfn "$work/split/train_label.nii.gz" "$work/src/lits/labels/lits117_upper_train.nii.gz"
ln -sfn "$demo/ct.nii.gz" "$work/src/patient_a/a/ct.nii.gz"
ln -sfn "$demo/organs.nii.gz" "$work/src/patient_a/a/seg.nii.gz"

# 1. Datalists: the training side of the LiTS upper half with early (<= 20 mm) / mid-late tumours split, patient A's liver.
difftumor data prepare folders "$work/src/lits" --organ liver --early-max-diameter-mm 20 --out "$work/data/lits_early.json" --overwrite
difftumor data prepare totalsegmentator "$work/src/patient_a" --organ liver --out "$work/data/patient_a.json" --overwrite
python - "$work/data" <<'PY'
import json, sys
folder = sys.argv[1]
lits, patient = (json.load(open(f"{folder}/{name}.json")) for name in ("lits_early", "patient_a"))
lits["data"] += patient["data"]
json.dump(lits, open(f"{folder}/autoencoder.json", "w"), indent=1)
PY
if [ "$data_only" = "--data-only" ]; then exit 0; fi

# 2. Autoencoder on patient A + the training side of the LiTS upper half.
if [ ! -f "$work/autoencoder/vqmodel/config.json" ]; then
    difftumor train autoencoder --config tiny_cpu $(resume "$work/autoencoder") \
        --set run.output_dir="$work/autoencoder" --set data.datalist="$work/data/autoencoder.json" \
        --set run.max_steps=1200 --set loss.discriminator_start_step=700 --set run.checkpoint_every=200
fi

# 3. Early-tumour diffusion model on the training-side tumours of the LiTS upper half, with organ-relative
#    intensity augmentation (diffusion_tiny_cpu.yaml, 4500 steps).
if [ ! -f "$work/diffusion/pipeline/model_index.json" ]; then
    difftumor train diffusion --config tiny_cpu $(resume "$work/diffusion") \
        --set run.output_dir="$work/diffusion" --set data.datalist="$work/data/lits_early.json" \
        --set vqmodel="$work/autoencoder/vqmodel" --set run.checkpoint_every=500
fi

echo "pipeline: $work/diffusion/pipeline (copy it to difftumor/assets/tiny_pipeline to bundle it)"
