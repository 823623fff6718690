#!/usr/bin/env bash
# Issue 4: a real MNIST run with EMA (the defaults: fixed UNet, --ema-decay 0.999) and its score table:
# the 1000-step sampler with EMA and with raw weights (with the likelihood bound), DDIM 10/20/50/100 with EMA.
# Usage: bench/ema_run.sh [DATA_ROOT] [OUT] [N_SAMPLES] [EPOCHS] [BPD_IMAGES]
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
OUT=${2:-runs/mnist_ema}
N=${3:-500}
EPOCHS=${4:-10}
BPD=${5:-100}
PY=${PYTHON:-python}
if [ ! -f "$OUT/ddpm_model.pt" ]; then
  $PY main.py --dataset mnist --train --epochs "$EPOCHS" --seed 0 --data-root "$DATA" --out-dir "$OUT" \
    --checkpoint "$OUT/ddpm_model.pt"
fi
EVAL=(main.py --evaluate --checkpoint "$OUT/ddpm_model.pt" --n-samples "$N" --seed 0 --data-root "$DATA"
      --judge-dir "$OUT/judges")
$PY "${EVAL[@]}" --sampler ddpm --bpd-images "$BPD" --out-dir "$OUT"
$PY "${EVAL[@]}" --sampler ddpm --bpd-images "$BPD" --no-ema --out-dir "$OUT/raw"
for steps in 10 20 50 100; do
  $PY "${EVAL[@]}" --sampler ddim --sample-steps "$steps" --out-dir "$OUT"
done
$PY bench/quality_table.py "$OUT"/quality_mnist_ddpm1000.json "$OUT"/raw/quality_mnist_ddpm1000.json \
  "$OUT"/quality_mnist_ddim{10,20,50,100}.json
