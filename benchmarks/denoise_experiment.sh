#!/usr/bin/env bash
# Image denoising, bidirectional EBT vs DiT at equal parameters on Fashion-MNIST (SPEC §5).
# Trains image-ebt-tiny and image-dit-tiny for the same steps and images, then scores both at the
# training noise level λ = 0.1 (in distribution) and λ = 0.2 (out of distribution) on held-out
# images, with their forward passes, and writes plots. Figures: docs/results.md.
#
# One torch thread per process: on the shared 2-core machine, 2 threads oversubscribe the cores
# and a training step runs up to ~100× slower (docs/results.md).
# Usage: benchmarks/denoise_experiment.sh [OUT_DIR] [TRAIN_STEPS] [IMAGES]
#        (defaults: runs/denoise, 1200 steps, 256 validation images: 25 minutes on the shared 2-core machine)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/denoise}
STEPS=${2:-1200}
IMAGES=${3:-256}
EBT=.venv/bin/ebt
export OMP_NUM_THREADS=1
mkdir -p "$OUT"

for KIND in ebt dit; do
  start=$(date +%s)
  $EBT train --preset "image-$KIND-tiny" --out "$OUT/$KIND" --overwrite --quiet --train.steps="$STEPS" | sed "s/^/$KIND: /"
  echo "$KIND: trained in $(( $(date +%s) - start )) s"
done

echo "== EBT: thinking 1, 2, 3 steps (1 step as trained) =="
for S in 1 2 3; do
  $EBT denoise "$OUT/ebt" --noise 0.1,0.2 --images "$IMAGES" --steps "$S" --json | tee "$OUT/ebt-steps$S.json"
done
echo "== DiT: DDIM t+1 passes, and recursive (twice) =="
$EBT denoise "$OUT/dit" --noise 0.1,0.2 --images "$IMAGES" --json | tee "$OUT/dit.json"
$EBT denoise "$OUT/dit" --noise 0.1,0.2 --images "$IMAGES" --repeats 2 --json | tee "$OUT/dit-recursive.json"
echo "== side by side, plots =="
$EBT denoise "$OUT/ebt" --vs "$OUT/dit" --noise 0.1,0.2 --images "$IMAGES" --plots "$OUT/plots"
