#!/usr/bin/env bash
# Issue 4's GPU checks as one call on a CUDA machine (minutes on one large GPU): the per-image
# pipeline with real-size SAM ViT-H and CLIP ViT-L-14 (random weights: images/second, encoder
# passes, identical masks), bf16 autocast's Dice delta and speed against float32, and issue 23's
# volume speed-up (slice-by-slice SaLIP vs key slices + SAM 2.1 propagation, 32 points per side).
#   OUT=results_dir PYTHON=.venv/bin/python bash benchmarks/gpu_checks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-outputs}
python=${PYTHON:-.venv/bin/python}
export HF_HUB_OFFLINE=1 WANDB_MODE=offline
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
timeout 300 "$python" benchmarks/pipeline.py --device cuda --model sam_vit_h --clip ViT-L-14 \
  --points-per-side 32 --images 3 --json "$out/gpu_pipeline.json" 2>&1 | tee "$out/gpu_pipeline.log"
timeout 240 "$python" benchmarks/precision.py --device cuda --model sam_vit_h --clip ViT-L-14 \
  --points-per-side 32 --images 6 --json "$out/gpu_precision.json" 2>&1 | tee "$out/gpu_precision.log"
timeout 240 "$python" benchmarks/volume.py --json "$out/gpu_volume.json" 2>&1 | tee "$out/gpu_volume.log"
