#!/usr/bin/env bash
# Issue 13: guidance limited to an interval of t (--guidance-interval, Kynkaanniemi et al. 2024) on a
# class-conditional checkpoint: one --evaluate per setting, DPM-Solver++ (STEPS, default 20), EMA, seed SEED (0).
# Usage: bench/guidance_interval.sh CHECKPOINT DATA_ROOT OUT N SETTING...
#   SETTING is W (every step) or W@LO,HI (W at LO <= t <= HI, plain conditional W = 1 elsewhere).
#   DIGIT=9 asks for that digit only (a quick look at one class's accuracy; its Frechet distance means little).
# Table: python bench/quality_table.py OUT/quality_*_w*.json
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=$1; DATA=$2; OUT=$3; N=$4; shift 4
PY=${PYTHON:-python}
for setting in "$@"; do
  w=${setting%@*}
  interval=()
  [ "$setting" != "$w" ] && interval=(--guidance-interval "${setting#*@}")
  $PY main.py --evaluate --checkpoint "$CKPT" --sampler dpm++ --sample-steps "${STEPS:-20}" --guidance "$w" \
    "${interval[@]}" ${DIGIT:+--digit "$DIGIT"} --n-samples "$N" --seed "${SEED:-0}" --data-root "$DATA" \
    --judge-dir "$(dirname "$CKPT")/judges" --out-dir "$OUT" --quiet
done
python bench/quality_table.py "$OUT"/quality_*_w*.json
