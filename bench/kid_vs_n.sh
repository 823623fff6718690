#!/usr/bin/env bash
# Issue 33: the same checkpoint and sampler scored at several sample sizes N, to show which score moves with N.
# The Frechet distance's finite-sample bias shrinks like 1/N, so it and its ratio to the floor move with N;
# the kernel distance (KID) is unbiased, so its values at different N should agree within their standard
# errors. One --evaluate per N (DPM-Solver++ at STEPS, default 40; EMA; seed SEED, default 0), each report in
# OUT/n<N>/, then one table (docs/results.md, "Scores at any N").
# Usage: bench/kid_vs_n.sh CHECKPOINT DATA_ROOT OUT N...
#   The judge is cached beside the checkpoint (its folder's judges/), as bench/guidance_interval.sh does.
# Environment: PYTHON, STEPS, SEED.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 4 ]; then
  echo "usage: bench/kid_vs_n.sh CHECKPOINT DATA_ROOT OUT N..." >&2
  exit 2
fi
CKPT=$1; DATA=$2; OUT=$3; shift 3
PY=${PYTHON:-python}
reports=()
for n in "$@"; do
  start=$(date +%s)
  $PY main.py --evaluate --checkpoint "$CKPT" --sampler dpm++ --sample-steps "${STEPS:-40}" --n-samples "$n" \
    --seed "${SEED:-0}" --data-root "$DATA" --judge-dir "$(dirname "$CKPT")/judges" --out-dir "$OUT/n$n" --quiet
  echo "N = $n: $(( $(date +%s) - start )) s (sampling, features and scores)"
  reports+=("$OUT/n$n"/quality_*.json)
done
$PY bench/quality_table.py "${reports[@]}"
