#!/usr/bin/env bash
# Issue 4: a real MNIST run of the old default network ('fixed') with EMA, and its score table
# (docs/results.md, "MNIST, the old default network (fixed) with EMA"): the 1000-step sampler with EMA and
# with raw weights (with the likelihood bound), DDIM 10/20/50/100 with EMA.
# Usage: bench/ema_run.sh [DATA_ROOT] [OUT] [N_SAMPLES] [EPOCHS] [BPD_IMAGES]
# Trains with the training defaults of that time, spelled out because the defaults have moved since (the
# default network is now 'resattn'): --arch fixed, eps-prediction, Figure 12's StepLR, Eq. 8's unweighted
# loss, batch 128, --ema-decay 0.999, seed 0, fp32 eager; skipped when OUT holds the checkpoint. DDIM is
# scored without x0 clipping, as it sampled then (its default is now --clip-x0 clip).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
OUT=${2:-runs/mnist_ema}
N=${3:-500}
EPOCHS=${4:-10}
BPD=${5:-100}
PY=${PYTHON:-python}
if [ ! -f "$OUT/ddpm_mnist.pt" ]; then
  $PY main.py --dataset mnist --train --epochs "$EPOCHS" --arch fixed --prediction eps --lr-schedule step \
    --loss-weighting none --batch-size 128 --ema-decay 0.999 --seed 0 --data-root "$DATA" --out-dir "$OUT"
fi
EVAL=(main.py --evaluate --checkpoint "$OUT/ddpm_mnist.pt" --n-samples "$N" --seed 0 --data-root "$DATA"
      --judge-dir "$OUT/judges")
$PY "${EVAL[@]}" --sampler ddpm --bpd-images "$BPD" --out-dir "$OUT"
$PY "${EVAL[@]}" --sampler ddpm --bpd-images "$BPD" --no-ema --out-dir "$OUT/raw"
for steps in 10 20 50 100; do
  $PY "${EVAL[@]}" --sampler ddim --sample-steps "$steps" --clip-x0 none --out-dir "$OUT"
done
$PY bench/quality_table.py "$OUT"/quality_mnist_ddpm1000.json "$OUT"/raw/quality_mnist_ddpm1000.json \
  "$OUT"/quality_mnist_ddim{10,20,50,100}.json
