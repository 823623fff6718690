#!/usr/bin/env bash
# Issue 12: every sampler on one checkpoint, N samples each, seed 0, EMA weights, scored by --evaluate.
# Usage: bench/sampler_study.sh CHECKPOINT [DATA_ROOT] [OUT] [N] [PHASES...]
# Phases (default: options reference fewstep diagnosis ddpm variance, in this order; name trained, headline or
# start to run them):
#   options    DPM-Solver++ and DDIM at 20 steps, every --clip-x0 and --step-schedule (to choose the defaults)
#   reference  the 1000-step sampler, Algorithm 2 as the paper writes it (no clipping, sigma^2 = beta)
#   fewstep    DPM-Solver++ and DDIM at 10, 15, 20 and 25 steps with the defaults ($CLIP, $SCHEDULE)
#   diagnosis  deterministic DDIM, no clipping, uniform steps, at 10, 20, 50, 100 and all 1000 steps
#   ddpm       the 1000-step sampler with --clip-x0 $CLIP
#   variance   the 1000-step sampler with the posterior variance (no clipping)
#   trained    for a well-trained model (issue 11's default): DPM-Solver++ at 20 and 40 uniform steps and at
#              40 log-SNR steps (x0 clipped), and the 1000-step sampler as the paper writes it, with x0
#              clipped, and with the posterior variance and x0 clipped
#   headline   DPM-Solver++ at 40 uniform steps, x0 clipped (the sampler of docs/results.md's CPU rows of the MNIST default)
#   start      what a distillation's first round learns from (--distill-start): unclipped DDIM at 64 and 256 steps
# Environment: PYTHON; SEEDS (sampling seeds, default 0; seed S > 0 writes to OUT/seedS); JOBS (evaluations
# at once, default 1: on a CPU one at a time; the judge must then be in OUT/judges already); DEVICE (default
# auto). Issue 11's sampler table (on a lent GPU; the judge copied from a CPU run):
#   SEEDS="0 1 2" JOBS=18 DEVICE=cuda bench/sampler_study.sh runs/mnist_default/ddpm_mnist.pt DATA OUT 2000 trained
# The table: python bench/quality_table.py OUT/quality_*.json OUT/seed*/quality_*.json
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
SEEDS=${SEEDS:-0}
JOBS=${JOBS:-1}
DEVICE=${DEVICE:-auto}
throttle() { while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done; }
ev() {  # one evaluation per seed, up to JOBS at once
  local seed out
  for seed in $SEEDS; do
    out=$OUT
    [ "$seed" = 0 ] || out=$OUT/seed$seed
    throttle
    echo "$(date +%T) evaluate seed $seed $*" >&2
    $PY main.py --evaluate --checkpoint "$CKPT" --n-samples "$N" --seed "$seed" --device "$DEVICE" \
      --data-root "$DATA" --judge-dir "$OUT/judges" --out-dir "$out" --quiet "$@" \
      || echo "$(date +%T) evaluate seed $seed $* failed" >&2 &
  done
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
      for steps in 10 20 50 100 1000; do ev --sampler ddim --sample-steps "$steps" --clip-x0 none; done ;;
    ddpm) ev --sampler ddpm --clip-x0 "$CLIP" ;;
    variance) ev --sampler ddpm --reverse-variance posterior ;;
    headline) ev --sampler dpm++ --sample-steps 40 --clip-x0 clip ;;
    start) for steps in 64 256; do ev --sampler ddim --sample-steps "$steps" --clip-x0 none; done ;;
    trained)
      for steps in 20 40; do ev --sampler dpm++ --sample-steps "$steps" --clip-x0 clip; done
      ev --sampler dpm++ --sample-steps 40 --clip-x0 clip --step-schedule logsnr
      ev --sampler ddpm --clip-x0 none
      ev --sampler ddpm --clip-x0 clip
      ev --sampler ddpm --reverse-variance posterior --clip-x0 clip ;;
    *) echo "unknown phase $phase" >&2; exit 2 ;;
  esac
done
wait
