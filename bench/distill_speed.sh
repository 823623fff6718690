#!/usr/bin/env bash
# Issue 30's speed target, side by side: a distilled student against its teacher's 1000-step sampler (Algorithm 2)
# at the same number of images and the same batch, one `main.py --sample` each, one after the other. Prints the
# seconds that `--sample` logs for drawing (the model's loading and the grid's writing are not in them) and the ratio.
# Usage: bench/distill_speed.sh STUDENT TEACHER OUT [N]
#   STUDENT: a checkpoint of --distill (it samples at its own steps); TEACHER: the checkpoint it was distilled from;
#   N: images, all in one batch (default 100). Environment: PYTHON, SEED (default 0), DEVICE (default auto).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 3 ]; then
  echo "usage: bench/distill_speed.sh STUDENT TEACHER OUT [N]" >&2
  exit 2
fi
STUDENT=$1; TEACHER=$2; OUT=$3; N=${4:-100}
PY=${PYTHON:-python}
mkdir -p "$OUT"
draw() {  # draw NAME CHECKPOINT [sampler options]: the seconds --sample took to draw
  local name=$1 ckpt=$2; shift 2
  if ! $PY main.py --sample --checkpoint "$ckpt" "$@" --n-samples "$N" --sample-batch "$N" --seed "${SEED:-0}" \
      --device "${DEVICE:-auto}" --out-dir "$OUT/$name" 2> "$OUT/$name.log"; then
    tail -n 3 "$OUT/$name.log" >&2
    exit 1
  fi
  sed -n 's/.*Sampled in \([0-9.]*\)s.*/\1/p' "$OUT/$name.log"
}
student=$(draw student "$STUDENT")
teacher=$(draw teacher "$TEACHER" --sampler ddpm)
echo "student ($STUDENT, its own steps): $student s for $N images"
echo "teacher ($TEACHER, DDPM, all T steps): $teacher s for $N images"
$PY -c "import sys; print(f'speed-up: {float(sys.argv[2]) / float(sys.argv[1]):.1f}x (the seconds are logged to 0.01 s)')" "$student" "$teacher"
