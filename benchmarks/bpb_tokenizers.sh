#!/usr/bin/env bash
# Bits per byte across tokenizers (docs/results.md, "Bits per byte: byte level against BPE"): the tiny
# EBT (System 1) and Transformer++ on Shakespeare, each trained with the byte tokenizer and a 2048-token
# BPE trained on the training split (the Transformer++ also with GPT-2's BPE: the EBT's 50257-way
# candidate makes its steps too slow for this CPU), at the same steps, batch (16 windows) and context
# (128 tokens; so a BPE window covers more bytes); then `ebt eval` on the same number of validation
# windows. Per-token perplexities of different tokenizers cannot be compared; bits per byte can.
#
#   benchmarks/bpb_tokenizers.sh [OUT] [STEPS]      # defaults: runs/bpb 300
#
# Resumable: a finished run is not trained again. Environment: PYTHON (.venv/bin/python),
# WINDOWS (validation windows, 64), OMP_NUM_THREADS (1).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/bpb}
STEPS=${2:-300}
PYTHON=${PYTHON:-.venv/bin/python}
WINDOWS=${WINDOWS:-64}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc --all) cores; $OMP_NUM_THREADS torch thread(s)"
for kind in transformer ebt; do
  for tokenizer in byte bpe gpt2; do
    if [[ $kind == ebt && $tokenizer == gpt2 ]]; then continue; fi
    run="$OUT/$kind-$tokenizer"
    [[ -f $run/model.safetensors ]] || "$PYTHON" -m ebt.cli train --preset "text-$kind-tiny" --out "$run" --overwrite \
      --quiet --text.tokenizer="$tokenizer" --train.steps="$STEPS" --train.eval_every=0 --train.log_every=50 \
      --train.eval_examples="$WINDOWS" >/dev/null
    [[ -f $run/eval.json ]] || "$PYTHON" -m ebt.cli eval "$run" --max-examples "$WINDOWS" --json > "$run/eval.json"
  done
done
"$PYTHON" - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
print("\n| model | tokenizer | vocabulary | bytes per token | loss (nats per token) | perplexity per token | bits per byte |")
print("|---" * 7 + "|")
for kind, label in (("transformer", "Transformer++"), ("ebt", "EBT S1")):
    for tokenizer in ("byte", "bpe", "gpt2"):
        run = out / f"{kind}-{tokenizer}"
        if not run.is_dir():
            continue
        r = json.loads((run / "eval.json").read_text())
        vocab = json.loads((run / "config.json").read_text())["text"]["vocab_size"]
        print(f"| {label} | {tokenizer} | {vocab} | {r['bytes'] / r['tokens']:.2f} | {r['loss']:.3f} | {r['ppl']:.1f} "
              f"| {r['bpb']:.3f} |")
PY
