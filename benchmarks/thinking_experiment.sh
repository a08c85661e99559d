#!/usr/bin/env bash
# The System 2 thinking experiment (docs/results.md): a Transformer++ and an S2 EBT of the same
# size on the same data (byte-level Shakespeare, tiny preset), the paper suite on both, and the
# S2 ablation (each trick removed alone), each scored by the suite. ≈ 45 min on 2 CPU cores at
# the default STEPS=1000. Results: $OUT/*.json and $OUT/s2-full/suite/*.png; the markdown tables
# come from `python benchmarks/thinking_tables.py $OUT`.
set -euo pipefail
cd "$(dirname "$0")/.."
EBT=.venv/bin/ebt
OUT=${OUT:-runs/thinking}
STEPS=${STEPS:-1000}
WINDOWS=${WINDOWS:-64}
common=(--quiet --train.steps="$STEPS" --train.eval_every=0 --train.log_every=25)

train() {  # name preset overrides...
  local name=$1 preset=$2; shift 2
  [ -f "$OUT/$name/model.safetensors" ] || $EBT train --preset "$preset" --out "$OUT/$name" "${common[@]}" "$@" > /dev/null
}

train transformer text-transformer-tiny
train s2-full text-ebt-s2-tiny
train s2-no-random-alpha text-ebt-s2-tiny --think.randomize_step_size=false
train s2-no-random-steps text-ebt-s2-tiny --think.min_steps=0
train s2-no-langevin text-ebt-s2-tiny --think.langevin_std=0
train s2-no-replay text-ebt-s2-tiny --think.replay_buffer_size=0

$EBT eval "$OUT/s2-full" --suite paper --baseline "$OUT/transformer" --max-windows "$WINDOWS" --json > "$OUT/s2-full.json"
for name in s2-no-random-alpha s2-no-random-steps s2-no-langevin s2-no-replay; do
  $EBT eval "$OUT/$name" --suite paper --max-windows "$WINDOWS" --json > "$OUT/$name.json"
done
.venv/bin/python benchmarks/thinking_tables.py "$OUT"
