#!/usr/bin/env bash
# Issue 7: the paper's UNet against the fixed one, at equal training budget on full MNIST.
# Usage: bench/compare_arch.sh [DATA_ROOT] [OUT] [N_SAMPLES] [EPOCHS]
# Trains both variants with the same seed and settings (skipped when a checkpoint is already
# there), then scores each with the offline judge for the 1000-step sampler and DDIM-50.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
OUT=${2:-runs/compare_arch}
N=${3:-500}
EPOCHS=${4:-10}
PY=${PYTHON:-python}
for arch in paper fixed; do
  if [ ! -f "$OUT/$arch/ddpm_model.pt" ]; then
    $PY main.py --dataset mnist --train --epochs "$EPOCHS" --arch "$arch" --seed 0 \
      --data-root "$DATA" --out-dir "$OUT/$arch"
  fi
done
for arch in paper fixed; do
  $PY main.py --evaluate --checkpoint "$OUT/$arch/ddpm_model.pt" --sampler ddim --sample-steps 50 \
    --n-samples "$N" --seed 0 --data-root "$DATA" --judge-dir "$OUT/judges" --out-dir "$OUT/$arch"
  $PY main.py --evaluate --checkpoint "$OUT/$arch/ddpm_model.pt" --sampler ddpm \
    --n-samples "$N" --seed 0 --data-root "$DATA" --judge-dir "$OUT/judges" --out-dir "$OUT/$arch"
done
$PY bench/quality_table.py "$OUT"/{paper,fixed}/quality_mnist_{ddpm1000,ddim50}.json
