#!/usr/bin/env bash
# The MNIST default recipe on a GPU as a user runs it (issue 31, item 5): one prepared script for a lent GPU.
#   1. bench/bench_speed.py at the default batch (64): training images/s of the fp32 eager path and of --fast,
#      the warm-up seconds of each (the first steps, torch.compile included: the time to a fast step), peak memory,
#      and one whole first epoch eager against --fast (wall time with compilation, the loss curves in windows);
#   2. bench/profile_step.py: one --fast step by operator (torch.profiler), its GFLOP/s and share of the
#      device's measured bf16 matrix-product peak: what bounds the step;
#   3. the whole default training, `main.py --dataset mnist --train --fast` (its log holds every epoch's seconds);
#   4. that model scored by the package's judge: DPM-Solver++-40, N = 2000, seed 0 (the judge trains first).
# Usage: bench/gpu_check.sh DATA_ROOT OUT
#   DATA_ROOT holds MNIST/raw (on a lent machine: a copy carried with the working tree, e.g. data/MNIST).
#   Writes OUT/speed.json, OUT/speed.log, OUT/profile.log, OUT/train.log, OUT/evaluate.log, OUT/quality.md (the
#   score table), OUT/seconds.log, OUT/run/ (the checkpoint and its report), OUT/judges/.
# Environment: PYTHON, DEVICE (default cuda), EPOCHS (default: the recipe's), STEPS (timed steps per path,
#   default 40), QUICK=1 (a smoke run: bench_speed --quick, 3 profiled steps, no whole epoch, 200 samples).
# On a lent machine (python3 there holds PyTorch; OUT outside $OUT, since at most 8 files come back), with MNIST
#   copied into the ignored data/MNIST and carried: PYTHON=python3 bench/gpu_check.sh data /tmp/gpu &&
#   cp /tmp/gpu/*.log /tmp/gpu/speed.json /tmp/gpu/quality.md "$OUT"
# How long: not yet run on a GPU; the smoke run on tiny data is in bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: bench/gpu_check.sh DATA_ROOT OUT" >&2
  exit 2
fi
DATA=$1; OUT=$2
PY=${PYTHON:-python}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
speed=(--data-root "$DATA" --device "$DEVICE" --batch-size 64 --eager-and-fast --skip-sampling
       --steps "${STEPS:-40}" --json "$OUT/speed.json")
profile=(--device "$DEVICE")
n=2000
if [ "${QUICK:-0}" = 1 ]; then
  speed+=(--quick); profile+=(--steps 3 --warmup 1); n=200
fi
SECONDS=0
$PY bench/bench_speed.py "${speed[@]}" 2>&1 | tee "$OUT/speed.log"
t1=$SECONDS
$PY bench/profile_step.py "${profile[@]}" 2>&1 | tee "$OUT/profile.log"
t2=$SECONDS
$PY main.py --dataset mnist --train --fast --seed 0 --device "$DEVICE" --data-root "$DATA" --out-dir "$OUT/run" \
  ${EPOCHS:+--epochs "$EPOCHS"} 2>&1 | tee "$OUT/train.log"
t3=$SECONDS
$PY main.py --evaluate --checkpoint "$OUT/run/ddpm_mnist.pt" --sampler dpm++ --sample-steps 40 --n-samples "$n" \
  --seed 0 --device "$DEVICE" --data-root "$DATA" --judge-dir "$OUT/judges" --out-dir "$OUT/run" --quiet \
  2>&1 | tee "$OUT/evaluate.log"
$PY bench/quality_table.py "$OUT/run"/quality_*.json | tee "$OUT/quality.md"
t4=$SECONDS
echo "seconds: speed $t1, profile $((t2 - t1)), training $((t3 - t2)), evaluation $((t4 - t3))" | tee "$OUT/seconds.log"
