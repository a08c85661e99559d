#!/usr/bin/env bash
# Why thinking does or does not help (docs/results.md): the trained S2 run of
# thinking_experiment.sh scored on the validation split and the KJV Bible while varying one
# inference setting at a time — thinking steps, step size α, Langevin noise, samples — and an
# earlier checkpoint for "data seen" (EARLY=run dir trained for fewer steps, optional).
# Prints one JSON line per evaluation. ≈ 10 min on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
EBT=.venv/bin/ebt
RUN=${RUN:-runs/thinking/s2-full}
WINDOWS=${WINDOWS:-32}

score() {  # label run data args...
  local label=$1 run=$2 data=$3; shift 3
  $EBT eval "$run" --data "$data" --max-examples "$WINDOWS" --json "$@" |
    python3 -c "import json,sys; r=json.load(sys.stdin); print(json.dumps({'setting': '$label', 'data': '$data', 'ppl': round(r['ppl'], 4), 'forward_passes': r['forward_passes'], **({'mean_steps': round(r['mean_steps'], 3)} if 'mean_steps' in r else {})}))"
}

for data in shakespeare kjv; do
  for steps in 1 2 3 5 8; do score "steps=$steps" "$RUN" $data --steps $steps; done
  for alpha in 0.1 0.15 0.6 1.2; do score "step_size=$alpha" "$RUN" $data --step-size $alpha; done
  for sigma in 0.5 1 3; do score "langevin_std=$sigma" "$RUN" $data --langevin-std $sigma; done
  score "langevin_std=3,samples=5" "$RUN" $data --langevin-std 3 --samples 5
  score "samples=5" "$RUN" $data --samples 5
  score "steps=8,tolerance=0.01" "$RUN" $data --steps 8 --tolerance 0.01
  if [ -n "${EARLY:-}" ]; then
    for steps in 2 3 5; do score "early,steps=$steps" "$EARLY" $data --steps $steps; done
    score "early,samples=5" "$EARLY" $data --samples 5
  fi
done
