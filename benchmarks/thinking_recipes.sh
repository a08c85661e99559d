#!/usr/bin/env bash
# The System 2 recipe study (issue 13, docs/results.md "Which System 2 recipe thinks best"): tiny
# S2 EBTs on Shakespeare, each cell one recipe (vocabulary, Langevin σ, inner optimizer, training
# length, seed), each scored by the paper suite (`ebt eval --suite paper`) on WINDOWS windows of
# validation and the OOD sets. CELLS (default: all) picks cells by name; training runs JOBS at a
# time with one torch thread each; finished cells are skipped, so the script can be re-run to
# extend the study. Tables: `python benchmarks/thinking_tables.py --recipes $OUT`.
set -euo pipefail
cd "$(dirname "$0")/.."
EBT=.venv/bin/ebt
OUT=${OUT:-runs/recipes}
WINDOWS=${WINDOWS:-32}
JOBS=${JOBS:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((2 / JOBS > 0 ? 2 / JOBS : 1))}
BPE="--text.tokenizer=bpe --text.bpe_vocab_size=2048"
PAPER=text-ebt-s2paper-tiny

# name preset steps overrides...   (the paper's S2 recipe, with one thing changed per cell)
ALL_CELLS=$(cat <<CELLS
transformer text-transformer-tiny 1000
paper $PAPER 1000
sigma1 $PAPER 1000 --think.langevin_std=1
sigma0 $PAPER 1000 --think.langevin_std=0
sigma0-nesterov $PAPER 1000 --think.langevin_std=0 --think.momentum=0.5 --think.nesterov=true
sigma0-spectral $PAPER 1000 --think.langevin_std=0 --think.spectral_step=1 --think.power_iterations=2
sigma0-steps5 $PAPER 1000 --think.langevin_std=0 --think.steps=5
mirror $PAPER 1000 --think.mirror_descent=true
mirror-sigma1 $PAPER 1000 --think.mirror_descent=true --think.langevin_std=1
mirror-sigma0 $PAPER 1000 --think.mirror_descent=true --think.langevin_std=0
mirror-sigma0-steps5 $PAPER 1000 --think.mirror_descent=true --think.langevin_std=0 --think.steps=5
transformer-bpe text-transformer-tiny 1000 $BPE
paper-bpe $PAPER 1000 $BPE
sigma0-nesterov-bpe $PAPER 1000 $BPE --think.langevin_std=0 --think.momentum=0.5 --think.nesterov=true
paper-3000 $PAPER 3000
sigma0-nesterov-3000 $PAPER 3000 --think.langevin_std=0 --think.momentum=0.5 --think.nesterov=true
sigma0-nesterov-seed1 $PAPER 1000 --think.langevin_std=0 --think.momentum=0.5 --think.nesterov=true --train.seed=1
sigma0-nesterov-seed2 $PAPER 1000 --think.langevin_std=0 --think.momentum=0.5 --think.nesterov=true --train.seed=2
paper-seed1 $PAPER 1000 --train.seed=1
paper-seed2 $PAPER 1000 --train.seed=2
CELLS
)
mkdir -p "$OUT"
cells() {
  if [ -z "${CELLS:-}" ]; then echo "$ALL_CELLS"; return; fi
  for c in $CELLS; do echo "$ALL_CELLS" | awk -v c="$c" '$1 == c' | grep . || { echo "no cell $c" >&2; exit 1; }; done
}

cell() {  # name preset steps overrides...: train, then score with the suite
  local name=$1 preset=$2 steps=$3; shift 3
  # A run cut short leaves a checkpoint but no "done" mark; it is resumed.
  if [ ! -f "$OUT/$name/done" ]; then
    if [ -f "$OUT/$name/train_state.pt" ]; then
      $EBT train --resume --out "$OUT/$name" --quiet > /dev/null || return 1
    else
      $EBT train --preset "$preset" --out "$OUT/$name" --overwrite --quiet \
        --train.steps="$steps" --train.eval_every=0 --train.log_every=25 "$@" > /dev/null || return 1
    fi
    touch "$OUT/$name/done"
  fi
  case $preset in text-transformer-*) return;; esac
  [ -f "$OUT/$name.json" ] && return
  $EBT eval "$OUT/$name" --suite paper --max-examples "$WINDOWS" --json > "$OUT/$name.json.tmp" &&
    mv "$OUT/$name.json.tmp" "$OUT/$name.json"
}
export -f cell; export EBT OUT WINDOWS

cells | xargs -P "$JOBS" -L 1 bash -c 'cell "$@"' _
