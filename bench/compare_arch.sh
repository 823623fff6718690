#!/usr/bin/env bash
# Issue 7: the paper's UNet against the fixed one, at equal training budget on full MNIST
# (docs/results.md, "The paper's UNet is blind to brightness and contrast").
# Usage: bench/compare_arch.sh [DATA_ROOT] [OUT] [N_SAMPLES] [EPOCHS]
# Trains both networks with the same seed and the training defaults of the time, spelled out because the
# defaults have moved since (eps-prediction, Figure 12's StepLR, Eq. 8's unweighted loss, batch 128, the
# EMA default 0.999, fp32 eager); skipped when a checkpoint is already there. Then scores each with the
# offline judge for the 1000-step sampler and DDIM-50, both without x0 clipping (the samplers of the time).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
OUT=${2:-runs/compare_arch}
N=${3:-500}
EPOCHS=${4:-10}
PY=${PYTHON:-python}
RECIPE=(--prediction eps --lr-schedule step --loss-weighting none --batch-size 128)
for arch in paper fixed; do
  if [ ! -f "$OUT/$arch/ddpm_mnist.pt" ]; then
    $PY main.py --dataset mnist --train --epochs "$EPOCHS" --arch "$arch" "${RECIPE[@]}" --seed 0 \
      --data-root "$DATA" --out-dir "$OUT/$arch"
  fi
done
for arch in paper fixed; do
  $PY main.py --evaluate --checkpoint "$OUT/$arch/ddpm_mnist.pt" --sampler ddim --sample-steps 50 --clip-x0 none \
    --n-samples "$N" --seed 0 --data-root "$DATA" --judge-dir "$OUT/judges" --out-dir "$OUT/$arch"
  $PY main.py --evaluate --checkpoint "$OUT/$arch/ddpm_mnist.pt" --sampler ddpm --clip-x0 none \
    --n-samples "$N" --seed 0 --data-root "$DATA" --judge-dir "$OUT/judges" --out-dir "$OUT/$arch"
done
$PY bench/quality_table.py "$OUT"/{paper,fixed}/quality_mnist_{ddpm1000,ddim50}.json
