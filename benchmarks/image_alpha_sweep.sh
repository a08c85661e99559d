#!/usr/bin/env bash
# Step size α₀ for the image EBT on 28×28 Fashion-MNIST (SPEC §5 gives α₀ = 3000 for 128×128 COCO).
# Short runs of the image-ebt-tiny preset, multiplier 3 × α₀, validation PSNR at λ = 0.1.
# One torch thread: on the shared 2-core machine two threads oversubscribe (see docs/results.md).
# Usage: [ALPHAS="300 1000"] benchmarks/image_alpha_sweep.sh [OUT_DIR] [STEPS]   (about 2 minutes per value)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/image-alpha-sweep}
STEPS=${2:-300}
export OMP_NUM_THREADS=1
mkdir -p "$OUT"
for ALPHA in ${ALPHAS:-300 1000 3000 10000}; do
  .venv/bin/ebt train --preset image-ebt-tiny --out "$OUT/alpha-$ALPHA" --overwrite --quiet --train.steps="$STEPS" \
    --think.step_size="$ALPHA" --think.step_size_lr_mult="$((3 * ALPHA))" --train.eval_examples=512 \
    | sed "s/^/alpha $ALPHA: /"
  tail -n 2 "$OUT/alpha-$ALPHA/metrics.jsonl" | head -n 1 | sed "s/^/alpha $ALPHA last train row: /"
done
