#!/usr/bin/env bash
# Issue 13: classifier-free guidance on a class-conditional checkpoint, one --evaluate per setting: a weight W
# on every step, or W only on an interval of t (--guidance-interval, Kynkaanniemi et al. 2024). DPM-Solver++
# (STEPS, default 20), EMA, seed SEED (default 0), every digit asked for alike. Each report
# (quality_<dataset>_dpm++<STEPS>_clip-clip_w<W>[_t<LO>-<HI>].json) holds the share of samples that the judge
# reads as the requested digit, overall and per digit (docs/results.md, "MNIST, class-conditional" and
# "Persian digits: the noisiest steps").
# Usage: bench/guidance_interval.sh CHECKPOINT DATA_ROOT OUT N SETTING...
#   SETTING is W (every step) or W@LO,HI (W at LO <= t <= HI, plain conditional W = 1 elsewhere).
#   When CHECKPOINT does not exist it is trained first: it must then be named ddpm_mnist.pt or
#   ddpm_persian.pt, and `main.py --dataset DATASET --train --class-cond --fast --seed 0` writes it into its
#   folder with the default recipe (extra training flags in $TRAIN_FLAGS, e.g. TRAIN_FLAGS="--epochs 8").
#   The judge is cached beside the checkpoint (its folder's judges/).
#   DIGIT=9 asks for that digit only (a quick look at one class's accuracy; its Frechet distance means little).
#   Give another OUT for another SEED: a report's name holds the steps and the setting, not the seed.
# Environment: PYTHON, STEPS, SEED, DIGIT, TRAIN_FLAGS.
# Table: python bench/quality_table.py OUT/quality_*_w*.json (printed at the end)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 5 ]; then
  echo "usage: bench/guidance_interval.sh CHECKPOINT DATA_ROOT OUT N SETTING... (SETTING: W or W@LO,HI)" >&2
  exit 2
fi
CKPT=$1; DATA=$2; OUT=$3; N=$4; shift 4
PY=${PYTHON:-python}
if [ ! -f "$CKPT" ]; then
  name=$(basename "$CKPT" .pt)
  dataset=${name#ddpm_}
  case $dataset in
    mnist|persian) ;;
    *) echo "$CKPT does not exist; to train it, name it ddpm_mnist.pt or ddpm_persian.pt" >&2; exit 2 ;;
  esac
  # shellcheck disable=SC2086
  $PY main.py --dataset "$dataset" --train --class-cond --fast --seed 0 --data-root "$DATA" \
    --out-dir "$(dirname "$CKPT")" ${TRAIN_FLAGS:-}
fi
for setting in "$@"; do
  w=${setting%@*}
  interval=()
  [ "$setting" != "$w" ] && interval=(--guidance-interval "${setting#*@}")
  $PY main.py --evaluate --checkpoint "$CKPT" --sampler dpm++ --sample-steps "${STEPS:-20}" --guidance "$w" \
    "${interval[@]}" ${DIGIT:+--digit "$DIGIT"} --n-samples "$N" --seed "${SEED:-0}" --data-root "$DATA" \
    --judge-dir "$(dirname "$CKPT")/judges" --out-dir "$OUT" --quiet
done
$PY bench/quality_table.py "$OUT"/quality_*_w*.json
