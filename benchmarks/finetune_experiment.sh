#!/usr/bin/env bash
# The fine-tuning experiment (docs/results.md, "Fine-tuning on arithmetic"): a Transformer++ and an
# EBT (System 1, tiny preset, context 64) pretrained PRE_STEPS on byte-level Shakespeare, then each
# fine-tuned FT_STEPS on generated arithmetic problems (prompt "Question: …\nAnswer:", answer " N";
# `make downstream-data` writes them with reasoning-gym), the loss on the answers only. Scored on
# the held-out problems: answer perplexity and exact match (greedy answers), the EBT at the paper
# suite's thinking budgets; before that, the downstream suite on the pretrained runs. Needs
# `make downstream-data`. Results: $OUT/*.json and markdown tables on stdout. ≈ 30 min on 2 idle CPU cores at the defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
EBT=.venv/bin/ebt
OUT=${OUT:-runs/finetune}
PRE_STEPS=${PRE_STEPS:-600}
FT_STEPS=${FT_STEPS:-3000}
FT_LR=${FT_LR:-1e-3}
DATA=${EBT_DOWNSTREAM_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ebt/downstream}
TRAIN_PAIRS=$DATA/arithmetic_train.jsonl
TEST_PAIRS=$DATA/arithmetic_test.jsonl
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
[ -f "$TRAIN_PAIRS" ] && [ -f "$TEST_PAIRS" ] || { echo "no arithmetic pairs in $DATA: run make downstream-data" >&2; exit 2; }
mkdir -p "$OUT"

for kind in transformer ebt; do
  [ -f "$OUT/$kind/model.safetensors" ] || $EBT train --preset "text-$kind-tiny" --out "$OUT/$kind" --overwrite \
    --quiet --model.context_len=64 --train.steps="$PRE_STEPS" --train.eval_every=0 --train.log_every=50 > /dev/null
  [ -f "$OUT/$kind-ft/model.safetensors" ] || $EBT finetune "$OUT/$kind" --data "$TRAIN_PAIRS" --out "$OUT/$kind-ft" \
    --overwrite --quiet --train.steps="$FT_STEPS" --train.lr="$FT_LR" --train.eval_every=0 --train.log_every=50 > /dev/null
done

# The downstream suite on the pretrained runs (the first table of docs/results.md's section).
[ -f "$OUT/downstream.json" ] || $EBT eval "$OUT/ebt" --suite downstream --baseline "$OUT/transformer" \
  --max-examples 100 --json > "$OUT/downstream.json"

score() {  # name run [thinking options]
  local name=$1 run=$2; shift 2
  [ -f "$OUT/$name.json" ] || $EBT eval "$run" --data "$TEST_PAIRS" --json "$@" > "$OUT/$name.json"
}
score transformer-pretrained "$OUT/transformer"
score transformer-finetuned "$OUT/transformer-ft"
score ebt-pretrained "$OUT/ebt"
for budget in "2 1" "3 1" "3 2" "3 5" "3 10"; do
  set -- $budget
  score "ebt-finetuned-$1x$2" "$OUT/ebt-ft" --steps "$1" --samples "$2"
done

.venv/bin/python - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
suite = json.loads((out / "downstream.json").read_text())["datasets"]
print("| set | T++ | EBT, 2 steps | 3 steps | best of 10 | EBT / T++ |")
print("|---|---|---|---|---|---|")
for name, e in suite.items():
    ppl = [b["ppl"] for b in e["budgets"]]
    print(f"| {name} | {e['transformer_ppl']:.4g} | {ppl[0]:.4g} | {ppl[1]:.4g} | {ppl[-1]:.4g} | "
          f"{ppl[0] / e['transformer_ppl']:.3g} |")
print()
print("| model | thinking | forward passes | answer ppl | exact match |")
print("|---|---|---|---|---|")
rows = [(path.stem.split("-"), json.loads(path.read_text())) for path in out.glob("*-*.json")]
for (kind, stage, *budget), r in sorted(rows, key=lambda x: (x[0][0], x[0][1] == "finetuned", x[1]["forward_passes"])):
    print(f"| {kind} {stage} | {budget[0] if budget else '—'} | {r['forward_passes']:g} | {r['ppl']:.3f} | "
          f"{100 * r['exact_match']:.1f}% of {r['pairs']} |")
EOF
