#!/usr/bin/env bash
# The α₀ sweep behind the byte-level presets (docs/results.md): text-ebt-tiny for 300 steps at
# several initial step sizes (LR multiplier 3 × α₀), each scored on 64 validation windows
# with 1, 2, 3, 4 and 6 thinking steps and best-of-4. About 15 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
EBT=.venv/bin/ebt
OUT=${OUT:-runs/alpha-sweep}
for alpha in ${ALPHAS:-5 20 80 200 500}; do
  run=$OUT/alpha-$alpha
  $EBT train --preset text-ebt-tiny --out "$run" --quiet --train.steps=300 --train.eval_every=0 --train.log_every=25 \
    --think.step_size="$alpha" --think.step_size_lr_mult="$(python3 -c "print(3 * $alpha)")" > /dev/null
  first=$(head -n 1 "$run/metrics.jsonl" | python3 -c "import json,sys; print(round(json.load(sys.stdin)['loss'], 2))")
  row="alpha0=$alpha loss@step25=$first"
  for steps in 1 2 3 4 6; do
    ppl=$($EBT eval "$run" --max-windows 64 --steps "$steps" --json | python3 -c "import json,sys; print(round(json.load(sys.stdin)['ppl'], 3))")
    row="$row ppl@$steps=$ppl"
  done
  ppl=$($EBT eval "$run" --max-windows 64 --samples 4 --json | python3 -c "import json,sys; print(round(json.load(sys.stdin)['ppl'], 3))")
  echo "$row ppl@best-of-4=$ppl"
done
