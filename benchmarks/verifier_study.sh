#!/usr/bin/env bash
# The verifier study (issue 22, docs/results.md "Thinking that verifies"): tiny byte-level System 2
# EBTs on Shakespeare, 1,000 steps, each cell one training lever on our recipe (text-ebt-s2-tiny:
# σ = 0, Nesterov μ = 0.5) or on mirror descent, then scored by `benchmarks/verifier_study.py
# score` (budgets, selection options, step acceptance, verifier diagnostics on validation, KJV,
# Austen). CELLS (default: all) picks cells by name; JOBS cells train at a time, one torch thread
# each; finished cells are skipped and interrupted ones resumed, so the script can be re-run to
# extend the study. Tables: `python benchmarks/verifier_study.py table $OUT`.
set -euo pipefail
cd "$(dirname "$0")/.."
EBT=${EBT:-.venv/bin/ebt}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/verifier}
JOBS=${JOBS:-1}
STEPS=${STEPS:-1000}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
OURS=text-ebt-s2-tiny
PAPER=text-ebt-s2paper-tiny
MIRROR="--think.mirror_descent=true --think.langevin_std=0"  # the recipe study's mirror-sigma0 cell
RANK="--think.ranking_weight=1 --think.ranking_temperature=0.1"
MONO="--think.monotone_weight=1"
FORGET="--think.start_std=0 --think.langevin_std=1 --think.logit_decay=0.2"

# name preset overrides...
ALL_CELLS=$(cat <<CELLS
paper $PAPER
ours $OURS
ours-rank $OURS $RANK
ours-mono $OURS $MONO
mirror $PAPER $MIRROR
mirror-rank $PAPER $MIRROR $RANK
mirror-forget $PAPER $MIRROR $FORGET
mirror-decay $PAPER $MIRROR --think.logit_decay=0.2
mirror-mono $PAPER $MIRROR $MONO
ours-rank-mono $OURS $RANK $MONO
mirror-forget-rank $PAPER $MIRROR $FORGET $RANK
mirror-rank4 $PAPER $MIRROR $RANK --think.ranking_samples=4
ours-rank0.1 $OURS --think.ranking_weight=0.1 --think.ranking_temperature=0.1
CELLS
)
mkdir -p "$OUT"
cells() {
  if [ -z "${CELLS:-}" ]; then echo "$ALL_CELLS"; return; fi
  for c in $CELLS; do echo "$ALL_CELLS" | awk -v c="$c" '$1 == c' | grep . || { echo "no cell $c" >&2; exit 1; }; done
}

cell() {  # name preset overrides...: train (or resume), then score
  local name=$1 preset=$2; shift 2
  if [ ! -f "$OUT/$name/done" ]; then
    if [ -f "$OUT/$name/train_state.pt" ]; then
      $EBT train --resume --out "$OUT/$name" --quiet > /dev/null || return 1
    else
      $EBT train --preset "$preset" --out "$OUT/$name" --overwrite --quiet \
        --train.steps="$STEPS" --train.eval_every=0 --train.log_every=25 "$@" > /dev/null || return 1
    fi
    touch "$OUT/$name/done"
  fi
  [ -f "$OUT/$name.score.json" ] || $PY benchmarks/verifier_study.py score "$OUT/$name"
}
export -f cell; export EBT PY OUT STEPS

cells | xargs -P "$JOBS" -L 1 bash -c 'cell "$@"' _
