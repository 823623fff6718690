#!/usr/bin/env bash
# Issue 13: a class-conditional run and its accuracy / Frechet distance table at several guidance weights.
# Usage: bench/guidance.sh [DATASET] [DATA_ROOT] [OUT] [N] [WEIGHTS...]     (weights default: 0 1 2 4)
# Trains `--class-cond` with the default recipe and --fast (extra training flags in $TRAIN_FLAGS, e.g.
# TRAIN_FLAGS="--epochs 8"; skipped when the checkpoint is there), then runs
# --evaluate with DPM-Solver++-20 on N samples (every digit alike, seed 0) at each guidance weight; each
# report (quality_<dataset>_dpm++20_clip-clip_w<W>.json) holds the share of samples that the judge reads as
# the requested digit, overall and per digit. Table: python bench/quality_table.py OUT/quality_*_w*.json
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${1:-mnist}
DATA=${2:-../shared/data}
OUT=${3:-runs/guidance_$DATASET}
N=${4:-2000}
shift $(( $# < 4 ? $# : 4 ))
WEIGHTS=${*:-0 1 2 4}
PY=${PYTHON:-python}
if [ ! -f "$OUT/ddpm_$DATASET.pt" ]; then
  $PY main.py --dataset "$DATASET" --train --class-cond --fast --seed 0 --data-root "$DATA" --out-dir "$OUT" \
    ${TRAIN_FLAGS:-}
fi
for w in $WEIGHTS; do
  $PY main.py --evaluate --checkpoint "$OUT/ddpm_$DATASET.pt" --sampler dpm++ --guidance "$w" --n-samples "$N" \
    --seed 0 --data-root "$DATA" --judge-dir "$OUT/judges" --out-dir "$OUT" --quiet
done
$PY bench/quality_table.py "$OUT"/quality_*_w*.json
