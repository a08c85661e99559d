#!/usr/bin/env bash
# The CPU scaling study of docs/results.md ("Scaling"): byte-level Shakespeare, the tiny backbone,
# EBT (System 1) against the Transformer++, 2 seeds, 256 validation windows per point.
#   data:  one constant-rate run per kind and seed, 1920 steps, validated at 9 log-spaced steps
#   width: model.dim 64, 96, 128, 192;  depth: 1, 2, 4 blocks;  batch: 4, 8, 16, 32 sequences
#          (400 steps each, the batch axis at fixed steps as in the paper)
#   params and FLOPs: refits of the width and depth runs
# About 60-70 minutes on 2 idle cores (--jobs 2: two points side by side, one thread each).
# Every sweep resumes where it stopped: run the script again after an interruption.
set -euo pipefail
OUT=${1:-runs/scaling}
EBT=${EBT:-.venv/bin/ebt}
JOBS=${JOBS:-2}
$EBT scale run --axis data  --out "$OUT/data"  --seeds 2 --steps 1920 --jobs "$JOBS"
$EBT scale run --axis width --out "$OUT/width" --seeds 2 --steps 400 --jobs "$JOBS"
$EBT scale run --axis depth --out "$OUT/depth" --seeds 2 --steps 400 --jobs "$JOBS"
$EBT scale run --axis batch --out "$OUT/batch" --seeds 2 --steps 400 --jobs "$JOBS"
for axis in data width depth batch; do
  $EBT scale fit "$OUT/$axis" --plots "$OUT/plots" > "$OUT/fit-$axis.txt"
  $EBT scale fit "$OUT/$axis" --json > "$OUT/fit-$axis.json"
done
$EBT scale fit "$OUT/width" "$OUT/depth" --axis params --plots "$OUT/plots" > "$OUT/fit-params.txt"
$EBT scale fit "$OUT/width" "$OUT/depth" --axis params --json > "$OUT/fit-params.json"
$EBT scale fit "$OUT/width" "$OUT/depth" --axis flops --plots "$OUT/plots" > "$OUT/fit-flops.txt"
$EBT scale fit "$OUT/width" "$OUT/depth" --axis flops --json > "$OUT/fit-flops.json"
cat "$OUT"/fit-*.txt
