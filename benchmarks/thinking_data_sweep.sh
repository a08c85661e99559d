#!/usr/bin/env bash
# "Do thinking gains grow with data?" (docs/results.md, under "Scaling laws"): the data axis of the
# scaling study with the System 2 EBT recipe (--recipe s2: the text-ebt-s2-tiny preset; the exact
# config of each run is in its config.json), byte-level Shakespeare, 2 seeds, 1920 steps each,
# validated at 9 log-spaced steps with the weights kept there. The fit then scores every EBT
# checkpoint at the thinking budgets (2 steps, 3 steps, best-of-10) on the first WINDOWS validation
# windows, and reports the gains from thinking longer and from best-of-M against training tokens,
# with 95% bootstrap intervals and the trend of each gain against ln(tokens).
# One point at a time on one thread (the runs of docs/results.md shared the machine's 2 cores with
# another study). Resumable: run the script again after an interruption.
set -euo pipefail
main() {
  OUT=${1:-runs/thinking-data}
  EBT=${EBT:-.venv/bin/ebt}
  JOBS=${JOBS:-1}
  WINDOWS=${WINDOWS:-64}
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
  $EBT scale run --axis data --recipe s2 --out "$OUT" --seeds 2 --steps 1920 --jobs "$JOBS"
  $EBT scale fit "$OUT" --thinking --thinking-windows "$WINDOWS" --plots "$OUT/plots" > "$OUT/fit-thinking.txt"
  cat "$OUT/fit-thinking.txt"
}
main "$@"; exit  # parsed whole before it runs: editing this file cannot upset a running sweep
