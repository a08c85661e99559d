#!/usr/bin/env bash
# The figures of docs/results.md, "Reach: precision, memory, processes", and their tables:
#   1. bf16 against fp32: the same runs (seed, batches, steps) trained at both precisions, tiny and 3xs,
#      EBT System 1 and Transformer++: final training loss, validation loss, seconds per step;
#   2. memory per process: one process, DDP and FSDP2 on 2 gloo processes (benchmarks/parallel_memory.py);
#   3. activation memory of a training step at tiny and 3xs, EBT S1, S2 and Transformer++, without and with
#      activation checkpointing (ebt.bench.activation_memory, what `ebt bench --json` reports);
#   4. FSDP2 with activation checkpointing: memory per process on 2 gloo processes, the 3xs EBT widened to
#      768 at batch 8 x 256 tokens (activations dominate), without checkpointing (a unit per block), without
#      it in one unit (the layout checkpointing uses), and with it.
#
#   benchmarks/reach_figures.sh [RUNS_DIR] [PARTS]     # defaults: runs/reach "1 2 3 4"
#
# Environment: PYTHON (default .venv/bin/python), THREADS (torch threads per process, default 1:
# the machine this was measured on is shared), TINY_STEPS (20), XS3_STEPS (5), XS3_BATCH (8),
# MMAP_THRESHOLD (part 2: glibc's MALLOC_MMAP_THRESHOLD_, default 65536; empty for glibc's default).
# Measured: 22 + 4.5 + 6.5 min for parts 1, 2, 3 on 2 AMD EPYC cores shared with other jobs (load
# average 4-8), most of it the bf16 EBT runs (bf16 is slow on that CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/reach}
PARTS=${2:-1 2 3 4}
PYTHON=${PYTHON:-.venv/bin/python}
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH}
export OMP_NUM_THREADS=${THREADS:-1}
TINY_STEPS=${TINY_STEPS:-20}
XS3_STEPS=${XS3_STEPS:-5}
XS3_BATCH=${XS3_BATCH:-8}
mkdir -p "$RUNS"

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc --all) cores;" \
     "$("$PYTHON" -c 'import torch; print("torch", torch.__version__)'), $OMP_NUM_THREADS torch thread(s) per process"

train() {  # train OUT PRESET STEPS PRECISION [overrides...]
  local out=$1 preset=$2 steps=$3 precision=$4
  shift 4
  "$PYTHON" -m ebt.cli train --preset "$preset" --out "$RUNS/$out" --overwrite --train.steps="$steps" \
    --train.eval_every=0 --train.log_every=1 --train.device=cpu --train.precision="$precision" "$@" >/dev/null 2>&1 \
    || { echo "failed: $out (rerun the command without >/dev/null to see why)"; exit 1; }
}

if [[ " $PARTS " == *" 1 "* ]]; then
  for precision in fp32 bf16; do
    train "tiny-ebt-$precision" text-ebt-tiny "$TINY_STEPS" "$precision" --train.eval_examples=32
    train "tiny-transformer-$precision" text-transformer-tiny "$TINY_STEPS" "$precision" --train.eval_examples=32
    train "3xs-ebt-$precision" text-ebt-3xs "$XS3_STEPS" "$precision" --train.batch_size="$XS3_BATCH" --train.eval_examples=16
    train "3xs-transformer-$precision" text-transformer-3xs "$XS3_STEPS" "$precision" --train.batch_size="$XS3_BATCH" --train.eval_examples=16
  done
  "$PYTHON" - "$RUNS" <<'EOF'
import json, sys
from pathlib import Path

runs = Path(sys.argv[1])

def read(name):
    rows = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "validation"][-1]
    return {"steps": val["step"], "train": train[-1]["loss"], "val": val["loss"], "step_s": val["train_s"] / val["step"],
            "max_train": max(r["loss"] for r in train[len(train) // 2:])}

print("\n| run | steps | train loss fp32 / bf16 (last step) | difference | validation loss fp32 / bf16 | difference "
      "| s per step fp32 / bf16 |")
print("|---" * 7 + "|")
for size in ("tiny", "3xs"):
    for kind in ("ebt", "transformer"):
        a, b = read(f"{size}-{kind}-fp32"), read(f"{size}-{kind}-bf16")
        print(f"| {size} {'EBT S1' if kind == 'ebt' else 'Transformer++'} | {a['steps']} | {a['train']:.4f} / {b['train']:.4f} "
              f"| {b['train'] - a['train']:+.4f} ({(b['train'] - a['train']) / a['train']:+.2%}) "
              f"| {a['val']:.4f} / {b['val']:.4f} | {b['val'] - a['val']:+.4f} ({(b['val'] - a['val']) / a['val']:+.2%}) "
              f"| {a['step_s']:.2f} / {b['step_s']:.2f} ({b['step_s'] / a['step_s']:.1f}×) |")
EOF
fi

if [[ " $PARTS " == *" 2 "* ]]; then
  # Width 1536 on the 3xs depth (66M non-embedding parameters: 255 MiB of fp32 weights) with a short
  # context and batch, so parameters, gradients and optimizer state dominate the activations.
  # glibc's dynamic mmap threshold keeps freed blocks in the heap, and FSDP2 allocates and frees its
  # gathered parameters every step, so without a fixed threshold the peak RSS measures fragmentation
  # (MMAP_THRESHOLD= with nothing after it: glibc's default, as a user's run would have it).
  threshold=${MMAP_THRESHOLD-65536}
  if [[ -n $threshold ]]; then export MALLOC_MMAP_THRESHOLD_=$threshold; fi
  big=(--preset text-ebt-3xs --model.dim=1536 --model.context_len=32 --train.batch_size=2 --train.steps=3
       --train.eval_examples=2 --train.log_every=1 --train.device=cpu --overwrite)
  "$PYTHON" benchmarks/parallel_memory.py "${big[@]}" --out "$RUNS/memory-one" >/dev/null 2>&1
  for parallel in ddp fsdp; do
    "$PYTHON" -m torch.distributed.run --nproc_per_node 2 benchmarks/parallel_memory.py "${big[@]}" \
      --out "$RUNS/memory-$parallel" --train.parallel=$parallel >/dev/null 2>&1
  done
  echo
  "$PYTHON" benchmarks/parallel_memory.py --table "$RUNS/memory-one" "$RUNS/memory-ddp" "$RUNS/memory-fsdp"
  unset MALLOC_MMAP_THRESHOLD_
fi

if [[ " $PARTS " == *" 3 "* ]]; then
  "$PYTHON" - "$RUNS" <<'EOF'
import json, sys
import ebt.objectives
from ebt.bench import activation_memory

print("\nMiB of a training step (ebt.bench.activation_memory): held for the backward pass / the step's peak")
print("\n| size, batch × context | model | held | peak | held, checkpointed | peak, checkpointed |")
print("|---" * 6 + "|")
for size, shape in (("tiny", "16 × 128"), ("3xs", "32 × 256")):
    drawn, think = [], ebt.objectives.think
    def counted(*args, **kwargs):  # the step counts the EBTs thought (System 2 draws 2 or 3 per batch)
        drawn.append(kwargs["steps"])
        return think(*args, **kwargs)
    ebt.objectives.think = counted
    r = activation_memory(size)
    ebt.objectives.think = think
    # Three training steps per EBT: unmeasured, measured, measured with checkpointing (S1, then S2).
    r["thinking_steps"] = {"ebt": drawn[:3], "ebt_s2": drawn[3:6]}
    with open(f"{sys.argv[1]}/activation-{size}.json", "w") as f:
        json.dump(r, f, indent=1)
    for kind, label in (("ebt", "EBT S1"), ("ebt_s2", "EBT S2"), ("transformer", "Transformer++")):
        steps = f" ({r['thinking_steps'][kind][1]} / {r['thinking_steps'][kind][2]} steps)" if kind != "transformer" else ""
        print(f"| {size}, {shape} | {label}{steps} | {r[f'{kind}_activation_mib']:.0f} | {r[f'{kind}_peak_mib']:.0f} "
              f"| {r[f'{kind}_activation_mib_checkpointed']:.0f} | {r[f'{kind}_peak_mib_checkpointed']:.0f} |")
EOF
fi

if [[ " $PARTS " == *" 4 "* ]]; then
  threshold=${MMAP_THRESHOLD-65536}  # as part 2
  if [[ -n $threshold ]]; then export MALLOC_MMAP_THRESHOLD_=$threshold; fi
  wide=(--preset text-ebt-3xs --model.dim=${AC_DIM:-768} --train.batch_size=${AC_BATCH:-8} --train.steps=2
        --train.eval_every=0 --train.eval_examples=2 --train.log_every=1 --train.device=cpu --train.parallel=fsdp
        --overwrite)
  for run in "fsdp-blocks:" "fsdp-one-unit:--fsdp-one-unit" "fsdp-checkpointed:"; do
    name=${run%%:*} first=${run#*:} extra=()
    if [[ $name == fsdp-checkpointed ]]; then extra=(--train.activation_checkpointing=true); fi
    "$PYTHON" -m torch.distributed.run --nproc_per_node 2 benchmarks/parallel_memory.py $first "${wide[@]}" \
      --out "$RUNS/memory-$name" "${extra[@]}" >/dev/null 2>&1 || { echo "failed: memory-$name"; exit 1; }
  done
  echo
  "$PYTHON" benchmarks/parallel_memory.py --table "$RUNS/memory-fsdp-blocks" "$RUNS/memory-fsdp-one-unit" \
    "$RUNS/memory-fsdp-checkpointed"
  unset MALLOC_MMAP_THRESHOLD_
fi
