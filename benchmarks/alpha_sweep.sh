#!/usr/bin/env bash
# Step-size sweeps behind the byte-level presets (docs/results.md). For each α₀ in ALPHAS:
# train PRESET for 300 steps (LR multiplier 3 × α₀; System 2 presets keep α fixed), then score
# 64 validation windows at each thinking step count in THINK and with best-of-4.
#   benchmarks/alpha_sweep.sh                                   # S1: ~15 min on 2 CPU cores
#   PRESET=text-ebt-s2paper-tiny ALPHAS="0.3 1 3" THINK="2 3 5" benchmarks/alpha_sweep.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EBT=.venv/bin/ebt
PRESET=${PRESET:-text-ebt-tiny}
OUT=${OUT:-runs/alpha-sweep/$PRESET}
for alpha in ${ALPHAS:-5 20 80 200 500}; do
  run=$OUT/alpha-$alpha
  $EBT train --preset "$PRESET" --out "$run" --overwrite --quiet --train.steps=300 --train.eval_every=0 --train.log_every=25 \
    --think.step_size="$alpha" --think.step_size_lr_mult="$(python3 -c "print(3 * $alpha)")" > /dev/null
  first=$(head -n 1 "$run/metrics.jsonl" | python3 -c "import json,sys; print(round(json.load(sys.stdin)['loss'], 2))")
  row="$PRESET alpha0=$alpha loss@step25=$first"
  for steps in ${THINK:-1 2 3 4 6}; do
    ppl=$($EBT eval "$run" --max-examples 64 --steps "$steps" --json | python3 -c "import json,sys; print(round(json.load(sys.stdin)['ppl'], 3))")
    row="$row ppl@$steps=$ppl"
  done
  ppl=$($EBT eval "$run" --max-examples 64 --samples 4 --json | python3 -c "import json,sys; print(round(json.load(sys.stdin)['ppl'], 3))")
  echo "$row ppl@best-of-4=$ppl"
done
