#!/usr/bin/env bash
# The System 2 thinking experiment (docs/results.md): a Transformer++ and an S2 EBT of the same
# size on the same data (byte-level Shakespeare, tiny preset) trained for STEPS, the paper suite
# on both; then the S2 ablation (full, and each trick removed alone), each trained for
# ABLATION_STEPS and scored by the suite on fewer windows. Training runs JOBS at a time with one
# torch thread each. ≈ 45 min on 2 idle CPU cores at the defaults. Results: $OUT/*.json and
# $OUT/s2-full/suite/*.png; the markdown tables come from `python benchmarks/thinking_tables.py $OUT`.
set -euo pipefail
cd "$(dirname "$0")/.."
EBT=.venv/bin/ebt
OUT=${OUT:-runs/thinking}
STEPS=${STEPS:-1000}
ABLATION_STEPS=${ABLATION_STEPS:-500}
WINDOWS=${WINDOWS:-64}
ABLATION_WINDOWS=${ABLATION_WINDOWS:-32}
JOBS=${JOBS:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((2 / JOBS > 0 ? 2 / JOBS : 1))}

train() {  # name preset steps overrides...
  local name=$1 preset=$2 steps=$3; shift 3
  [ -f "$OUT/$name/model.safetensors" ] || $EBT train --preset "$preset" --out "$OUT/$name" --overwrite --quiet \
    --train.steps="$steps" --train.eval_every=0 --train.log_every=25 "$@" > /dev/null
}
export -f train; export EBT OUT

printf '%s\n' \
  "transformer text-transformer-tiny $STEPS" \
  "s2-full text-ebt-s2paper-tiny $STEPS" \
  "ablation/s2-full text-ebt-s2paper-tiny $ABLATION_STEPS" \
  "ablation/s2-no-random-alpha text-ebt-s2paper-tiny $ABLATION_STEPS --think.randomize_step_size=false" \
  "ablation/s2-no-random-steps text-ebt-s2paper-tiny $ABLATION_STEPS --think.min_steps=0" \
  "ablation/s2-no-langevin text-ebt-s2paper-tiny $ABLATION_STEPS --think.langevin_std=0" \
  "ablation/s2-langevin-1 text-ebt-s2paper-tiny $ABLATION_STEPS --think.langevin_std=1" \
  "ablation/s2-no-replay text-ebt-s2paper-tiny $ABLATION_STEPS --think.replay_buffer_size=0" |
  xargs -P "$JOBS" -L 1 bash -c 'train "$@"' _

$EBT eval "$OUT/s2-full" --suite paper --baseline "$OUT/transformer" --max-examples "$WINDOWS" --json > "$OUT/s2-full.json"
for name in s2-full s2-no-random-alpha s2-no-random-steps s2-no-langevin s2-langevin-1 s2-no-replay; do
  [ -f "$OUT/ablation/$name.json" ] ||
    $EBT eval "$OUT/ablation/$name" --suite paper --max-examples "$ABLATION_WINDOWS" --json > "$OUT/ablation/$name.json"
done
.venv/bin/python benchmarks/thinking_tables.py "$OUT"
