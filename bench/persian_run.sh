#!/usr/bin/env bash
# Issue 16: the default Persian run, with a snapshot of every epoch, diagnosed per epoch and scored at the end.
# Usage: bench/persian_run.sh [DATA_ROOT] [OUT] [N]      (extra training flags in $TRAIN_FLAGS)
#   1. trains `python main.py --dataset persian --train --fast` (the default recipe; skipped when OUT holds the
#      checkpoint), copying the run's _last checkpoint to OUT/epochs/ each time it is rewritten (once an epoch);
#   2. bench/persian_diagnosis.py on the snapshots of epochs 1, 2, 4, 8, ... and the last (loss per time-step
#      bucket, receptive field, brightness and the mostly-white / blank shares of 200 DPM-Solver++-20 samples:
#      the per-epoch rows of docs/results.md);
#   3. --evaluate of the best checkpoint on N samples (DPM-Solver++-20 and -40, EMA, seed 0), floor beside it.
# About an hour on 2 CPU cores; not a test.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data}
OUT=${2:-runs/persian_default}
N=${3:-2000}
PY=${PYTHON:-python}
mkdir -p "$OUT/epochs"
if [ ! -f "$OUT/ddpm_persian.pt" ]; then
  $PY main.py --dataset persian --train --fast --seed 0 --data-root "$DATA" --out-dir "$OUT" ${TRAIN_FLAGS:-} &
  trainer=$!
  seen=""
  while kill -0 "$trainer" 2>/dev/null; do
    sleep 15
    last="$OUT/ddpm_persian_last.pt"
    stamp=$(stat -c %Y "$last" 2>/dev/null || true)
    if [ -n "$stamp" ] && [ "$stamp" != "$seen" ]; then
      seen=$stamp
      cp "$last" "$OUT/epochs/snapshot_$(ls "$OUT/epochs" | wc -l | awk '{printf "%02d", $1 + 1}').pt"
    fi
  done
  wait "$trainer"
fi
snapshots=$(ls "$OUT"/epochs/snapshot_*.pt)
last=$(echo "$snapshots" | tail -1)
chosen=$(for k in 1 2 4 8 16 32 64; do printf '%s/epochs/snapshot_%02d.pt\n' "$OUT" "$k"; done | grep -Fx "$snapshots" || true)
$PY bench/persian_diagnosis.py --data-root "$DATA" --n-samples 200 --val-images 300 \
  $(printf '%s\n' $chosen "$last" | sort -u)
for steps in 20 40; do
  $PY main.py --evaluate --checkpoint "$OUT/ddpm_persian.pt" --sampler dpm++ --sample-steps "$steps" \
    --n-samples "$N" --seed 0 --data-root "$DATA" --judge-dir "$OUT/judges" --out-dir "$OUT" --quiet
done
$PY bench/quality_table.py "$OUT"/quality_persian_*.json
