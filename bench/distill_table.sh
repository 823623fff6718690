#!/usr/bin/env bash
# Progressive distillation (Salimans and Ho 2022, Algorithm 2; distill.py): distill a teacher checkpoint from
# 64 DDIM steps down to students of 32, 16, 8, 4, 2 and 1 steps (one `main.py --distill` run, resumed when its
# state is there), then score each student with --evaluate against the teacher at the same number of steps with
# DDIM and DPM-Solver++ (their defaults: x0 clipped, uniform steps), and against the teacher's 1000-step sampler
# (Algorithm 2), at N samples and each seed. A class-conditional teacher's samplers are guided with the dataset's
# default (docs/results.md), which doubles its network passes at the guided steps; its students pass once a step.
# Usage: bench/distill_table.sh TEACHER DATA_ROOT OUT [N]
#   TEACHER: a trained v-prediction checkpoint (e.g. runs/ddpm_mnist.pt); N: samples per evaluation (default 2000).
#   Writes OUT/<teacher>_distilled{32,16,8,4,2,1}.pt, OUT/distill.log and OUT/seed<S>/quality_*.json; prints the
#   minutes of each round (the students' record) and, per seed, the table of the reports with their sampling seconds.
# Environment: PYTHON, SEEDS (default "0 1 2"), DEVICE (default auto), JUDGE_DIR (default: main.py's),
#   DISTILL_FLAGS (more --distill options, e.g. "--distill-updates 3000"), REFERENCE (0 skips the teacher's
#   1000-step sampler: about 2 hours per seed at N = 2000 on 2 CPU cores, docs/results.md), STUDENTS (the students
#   to score, default "32 16 8 4 2 1"; the distillation stops at the smallest, e.g. "8 4" distils down to 4 steps),
#   STUDENT_SAMPLERS (the samplers each student is scored with, default "distilled"; "distilled distilled-stochastic"
#   adds Meng et al.'s stochastic sampler), TEACHER_SAMPLERS (default "ddim dpm++"; "" scores the students alone).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 3 ]; then
  echo "usage: bench/distill_table.sh TEACHER DATA_ROOT OUT [N]" >&2
  exit 2
fi
CKPT=$1; DATA=$2; OUT=$3; N=${4:-2000}
PY=${PYTHON:-python}
DEVICE=${DEVICE:-auto}
STUDENTS=${STUDENTS:-32 16 8 4 2 1}
last=$(printf '%s\n' $STUDENTS | sort -n | head -1)
stem=$(basename "$CKPT" .pt)
mkdir -p "$OUT"
if [ ! -f "$OUT/${stem}_distilled$last.pt" ]; then
  resume=()
  [ -f "$OUT/distill_${stem}_last.pt" ] && resume=(--resume)
  # shellcheck disable=SC2086
  $PY main.py --distill --checkpoint "$CKPT" --distill-start 64 --distill-steps "$last" --data-root "$DATA" \
    --out-dir "$OUT" --device "$DEVICE" "${resume[@]}" ${DISTILL_FLAGS:-} 2>&1 | tee -a "$OUT/distill.log"
fi
$PY - "$OUT/${stem}_distilled$last.pt" <<'PY'
import sys

import torch

record = torch.load(sys.argv[1], weights_only=True, map_location="cpu")["config"]["distillation"]
print(f"Distilled from {record['origin']} ({record['teacher_weights']} weights)")
print("| round | steps | updates | batch | lr | final loss | minutes |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for i, r in enumerate(record["rounds"], 1):
    print(f"| {i} | {r['teacher_steps']} -> {r['steps']} | {r['updates']} | {r['batch_size']} | {r['lr']:g} "
          f"| {r['final_loss']:.5f} | {r['minutes']:.1f} |")
print(f"| all | | | | | | {sum(r['minutes'] for r in record['rounds']):.1f} |")
PY
for seed in ${SEEDS:-0 1 2}; do
  common=(--evaluate --n-samples "$N" --seed "$seed" --data-root "$DATA" --out-dir "$OUT/seed$seed"
          --device "$DEVICE" --quiet ${JUDGE_DIR:+--judge-dir "$JUDGE_DIR"})
  for steps in $STUDENTS; do
    for sampler in ${STUDENT_SAMPLERS:-distilled}; do
      $PY main.py "${common[@]}" --checkpoint "$OUT/${stem}_distilled$steps.pt" --sampler "$sampler"
    done
    for sampler in ${TEACHER_SAMPLERS-ddim dpm++}; do
      $PY main.py "${common[@]}" --checkpoint "$CKPT" --sampler "$sampler" --sample-steps "$steps"
    done
  done
  if [ "${REFERENCE:-1}" != 0 ]; then
    $PY main.py "${common[@]}" --checkpoint "$CKPT"
  fi
done
for seed in ${SEEDS:-0 1 2}; do
  echo "Seed $seed:"
  $PY bench/quality_table.py "$OUT/seed$seed"/quality_*.json
done
