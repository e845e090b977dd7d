#!/usr/bin/env bash
# A larger early-tumour diffusion model on one GPU, in about 8 minutes of GPU time, from the same data as the bundled
# demo pipeline (the training side of the LiTS upper half's lesion-wise split) and with its autoencoder; then the
# realism acceptance check on it. Keep it as the bundled pipeline only if it measures better with the same check.
# Usage: bash scripts/train_bundled_pipeline_gpu.sh [WORK_DIR] [SECONDS]   (training stops at SECONDS, default 420,
# and the pipeline is written from the last checkpoint; the check runs on the GPU too). DEVICE=cpu CHECKPOINT_EVERY=2
# CHECK=0 try the script's plumbing on a CPU in a minute or two.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$repo/runs/bundled_gpu}"
seconds="${2:-420}"
device="${DEVICE:-cuda}"
every="${CHECKPOINT_EVERY:-250}"
mkdir -p "$work" && work="$(cd "$work" && pwd)"
bash "$repo/scripts/train_bundled_pipeline.sh" "$work" --data-only

args=(train diffusion --config tiny_cpu
    --set run.output_dir="$work/diffusion" --set data.datalist="$work/data/lits_early.json"
    --set vqmodel="$repo/difftumor/assets/tiny_pipeline" --set run.device="$device"
    --set model.base_channels=32 --set "model.channel_multipliers=[1,2,4]"
    --set "data.crop_size=[64,64,64]" --set data.batch_size=8 --set run.checkpoint_every="$every")
# Stop at the time budget; the last checkpoint becomes the pipeline.
timeout "$seconds" difftumor "${args[@]}" --set run.max_steps=20000 || true
last=$(ls "$work/diffusion/checkpoints" | sed -n 's/^step_0*\([0-9][0-9]*\)$/\1/p' | sort -n | tail -1)
difftumor "${args[@]}" --set run.max_steps="$last" --resume
if [ "${CHECK:-1}" != 0 ]; then
    python "$repo/scripts/realism_check.py" --out "$work/realism" --pipeline "$work/diffusion/pipeline" --device "$device"
fi
