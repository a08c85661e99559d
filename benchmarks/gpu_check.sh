#!/usr/bin/env bash
# The GPU check: on one CUDA device, in under 8 minutes, one JSON file with
#   - environment: torch, CUDA, the device's name;
#   - equivalence: the shared-context and candidate-block equivalence tests, float64, on the device;
#   - train_ebt, train_ebt_s2, train_transformer: `ebt train` of the 3xs presets (text S1, S2 and
#     the Transformer++) in bf16 for STEPS steps: first and last loss, finite, falling;
#   - bench: `ebt bench --preset 3xs` in bf16 on the device: train_ratio, MFU against the device's
#     measured bf16 matmul throughput, activation memory with and without checkpointing, cached vs
#     uncached generation;
# each part with its seconds, or its error (a failing part never stops the others; the script
# exits 1 when any failed). The figures go into docs/results.md with the device named.
#
#   benchmarks/gpu_check.sh [--device cuda] [--out gpu_check.json] [--python python3] [--corpus FILE]
#                           [--steps N] [--precision bf16] [--budget SECONDS] [--keep DIR]
#
# Needs torch and the library's own dependencies, no package registry: the working tree runs as
# `PYTHONPATH=src python3 -m ebt.cli ...`. The corpus is --corpus (a UTF-8 text file; its last 10%
# is validation) or generated (synthetic arithmetic and Dyck lines, benchmarks/gpu_check.py).
# `--device cpu` is a dry run of the same parts at tiny sizes, one torch thread, fp32 (this CPU
# has no bf16 matmul units): about a minute of CPU time; tests/test_gpu_check.py runs it.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
DEVICE=cuda OUT=gpu_check.json PY=${PYTHON:-python3} CORPUS="" STEPS="" PRECISION="" BUDGET=450 KEEP=""

usage() { sed -n '13,14p' "$0" | sed 's/^# *//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --device|--out|--python|--corpus|--steps|--precision|--budget|--keep)
      [ $# -ge 2 ] || { echo "gpu_check.sh: $1 needs a value" >&2; exit 2; }
      case $1 in
        --device) DEVICE=$2 ;; --out) OUT=$2 ;; --python) PY=$2 ;; --corpus) CORPUS=$2 ;;
        --steps) STEPS=$2 ;; --precision) PRECISION=$2 ;; --budget) BUDGET=$2 ;; --keep) KEEP=$2 ;;
      esac
      shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [ -n "$CORPUS" ] && [ ! -f "$CORPUS" ]; then
  echo "gpu_check.sh: --corpus $CORPUS is not a file; give a UTF-8 text file, or leave it out to generate one" >&2
  exit 2
fi
for n in "$BUDGET" ${STEPS:+"$STEPS"}; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || { echo "gpu_check.sh: $n is not a positive integer (--steps, --budget)" >&2; exit 2; }
done

if [ "$DEVICE" = cpu ]; then  # the dry run
  # 24 steps: the text EBTs start at the uniform guess (a zero energy head) and need a couple of
  # dozen steps before their loss falls below it.
  SIZE=tiny STEPS=${STEPS:-24} PRECISION=${PRECISION:-fp32} MEGABYTES=0.2 LOG_EVERY=1 WINDOWS=8
  SHRINK=(--model.n_layers=1 --model.dim=32 --model.n_heads=2 --model.context_len=32 --train.batch_size=8)
  BENCH=(--repeats 1 --prompt-len 16 --new-tokens 2)
  # Several threads on a CPU shared with other work wait on each other (10× slower here); one does not.
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
  SIZE=3xs STEPS=${STEPS:-300} PRECISION=${PRECISION:-bf16} MEGABYTES=3 LOG_EVERY=10 WINDOWS=64
  SHRINK=()
  BENCH=(--repeats 10 --prompt-len 256 --new-tokens 16)
fi

export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "$KEEP" ]; then  # the runs, the parts' logs and the corpus stay there
  mkdir -p "$KEEP" && WORK=$(cd "$KEEP" && pwd)
else
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") && trap 'rm -rf "$WORK"' EXIT
fi
PARTS=$WORK/parts RUNS=$WORK/runs
rm -rf "$PARTS" && mkdir -p "$PARTS" "$RUNS"
CORPUS=${CORPUS:+$(cd "$(dirname "$CORPUS")" && pwd)/$(basename "$CORPUS")}
CORPUS=${CORPUS:-$WORK/corpus.txt}
START=$(date +%s)
RESERVE=20  # seconds kept for the merge

now() { date +%s.%N; }

limited() {  # COMMAND...: run it for at most $LIMIT seconds (SIGTERM: `ebt train` saves and exits 143)
  if command -v timeout > /dev/null; then timeout -k 15 "$LIMIT" "$@"; else "$@"; fi
}

part() {  # NAME LIMIT COMMAND...: run COMMAND, keeping its exit code, seconds and output in $PARTS
  local name=$1 limit=$2 rc=0 start left
  shift 2
  start=$(now)
  left=$(( START + BUDGET - RESERVE - $(date +%s) ))
  if (( left < 5 )); then
    echo "skipped: the time budget (--budget $BUDGET s) ran out" > "$PARTS/$name.log"
    rc=125
  else
    (( limit <= left )) || limit=$left
    echo "gpu_check: $name (at most ${limit}s)" >&2
    LIMIT=$limit "$@" > "$PARTS/$name.log" 2>&1 || rc=$?
  fi
  echo "$rc" > "$PARTS/$name.rc"
  awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.2f\n", b - a }' > "$PARTS/$name.seconds"
  (( rc == 0 )) || echo "gpu_check: $name failed (exit $rc); see the JSON" >&2
}

train_part() {  # KIND PRESET: train into $RUNS/KIND (the merge reads its losses, also those of a run cut short)
  limited "$PY" -m ebt.cli train --preset "$2" --out "$RUNS/$1" --data "$CORPUS" --overwrite --quiet \
    --train.steps="$STEPS" --train.precision="$PRECISION" --train.device="$DEVICE" --train.eval_every=0 \
    --train.log_every="$LOG_EVERY" --train.eval_examples="$WINDOWS" ${SHRINK[@]+"${SHRINK[@]}"}
}

bench_part() {
  limited "$PY" -m ebt.cli bench --preset "$SIZE" --device "$DEVICE" --precision "$PRECISION" --json \
    "${BENCH[@]}" ${SHRINK[@]+"${SHRINK[@]}"} > "$PARTS/bench.json"
}

part environment 60 limited "$PY" "$HERE/gpu_check.py" environment --device "$DEVICE" --out "$PARTS/environment.json"
[ -f "$CORPUS" ] || part corpus 60 limited "$PY" "$HERE/gpu_check.py" corpus --out "$CORPUS" --megabytes "$MEGABYTES"
part equivalence 90 limited "$PY" "$HERE/gpu_check.py" equivalence --device "$DEVICE" --out "$PARTS/equivalence.json"
part train_ebt 100 train_part ebt "text-ebt-$SIZE"
part train_ebt_s2 100 train_part ebt_s2 "text-ebt-s2-$SIZE"
part train_transformer 80 train_part transformer "text-transformer-$SIZE"
part bench 150 bench_part

rc=0
"$PY" "$HERE/gpu_check.py" merge "$PARTS" --runs "$RUNS" --out "$OUT" \
  --setting device="$DEVICE" --setting size="$SIZE" --setting steps="$STEPS" --setting precision="$PRECISION" \
  --setting corpus="$CORPUS" --setting corpus_bytes="$(wc -c < "$CORPUS" 2>/dev/null || echo 0)" \
  --setting dry_run="$([ "$DEVICE" = cpu ] && echo true || echo false)" || rc=$?
echo "gpu_check: $( ((rc == 0)) && echo passed || echo FAILED) in $(( $(date +%s) - START ))s; wrote $OUT" >&2
exit $rc
