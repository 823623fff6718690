#!/usr/bin/env bash
# Issue 12: every sampler on one checkpoint, N samples each, seed 0, EMA weights, scored by --evaluate.
# Usage: bench/sampler_study.sh CHECKPOINT [DATA_ROOT] [OUT] [N] [PHASES...]
# Phases (default: all, in this order):
#   options    DPM-Solver++ and DDIM at 20 steps, every --clip-x0 and --step-schedule (to choose the defaults)
#   reference  the 1000-step sampler, Algorithm 2 as the paper writes it (no clipping, sigma^2 = beta)
#   fewstep    DPM-Solver++ and DDIM at 10, 15, 20 and 25 steps with the defaults ($CLIP, $SCHEDULE)
#   diagnosis  deterministic DDIM, no clipping, uniform steps, at 10, 20, 50, 100 and all 1000 steps
#   ddpm       the 1000-step sampler with --clip-x0 $CLIP
#   variance   the 1000-step sampler with the posterior variance (no clipping)
# The table: python bench/quality_table.py OUT/quality_*.json
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT=$1
DATA=${2:-../shared/data}
OUT=${3:-runs/samplers}
N=${4:-2000}
shift $(( $# < 4 ? $# : 4 ))
PHASES=${*:-options reference fewstep diagnosis ddpm variance}
CLIP=${CLIP:-clip}
SCHEDULE=${SCHEDULE:-uniform}
PY=${PYTHON:-python}
ev() {
  echo "$(date +%T) evaluate $*" >&2
  $PY main.py --evaluate --checkpoint "$CKPT" --n-samples "$N" --seed 0 --data-root "$DATA" \
    --judge-dir "$OUT/judges" --out-dir "$OUT" --quiet "$@"
}
for phase in $PHASES; do
  case $phase in
    options)
      for sampler in dpm++ ddim; do for clip in none clip dynamic; do for schedule in uniform logsnr; do
        ev --sampler "$sampler" --sample-steps 20 --clip-x0 "$clip" --step-schedule "$schedule"
      done; done; done ;;
    reference) ev --sampler ddpm ;;
    fewstep)
      for steps in 10 15 20 25; do for sampler in dpm++ ddim; do
        ev --sampler "$sampler" --sample-steps "$steps" --clip-x0 "$CLIP" --step-schedule "$SCHEDULE"
      done; done ;;
    diagnosis)
      for steps in 10 20 50 100 1000; do ev --sampler ddim --sample-steps "$steps"; done ;;
    ddpm) ev --sampler ddpm --clip-x0 "$CLIP" ;;
    variance) ev --sampler ddpm --reverse-variance posterior ;;
    *) echo "unknown phase $phase" >&2; exit 2 ;;
  esac
done
