#!/usr/bin/env bash
# Video next-frame prediction (SPEC §6; docs/results.md "Video: next-frame prediction").
#  1. α₀ sweep: video-ebt-tiny for SWEEP_STEPS steps at each α₀ in ALPHAS (LR multiplier 3 × α₀).
#  2. EBT (α₀ = the preset's) and Transformer++ at equal parameters, STEPS steps each, the same clips.
#  3. Both scored on the validation clips against copy-last-frame; the EBT at THINK steps and best-of-4.
#     Then both again at LONG steps (more passes over the same clips).
#  4. The EBT's energy along clips (uncertainty plot) and a rollout of each model (PNG + GIF).
#  5. The shape of the EBT's energy landscape around the true next frame (benchmarks/video_landscape.py).
# About 30 minutes on 2 shared CPU cores (LONG= skips the longer runs: about 15). Runs that
# already finished are reused (delete OUT to redo).
#   benchmarks/video_experiment.sh
#   STEPS=300 SWEEP_STEPS=0 benchmarks/video_experiment.sh     # skip the sweep, shorter runs
set -euo pipefail
cd "$(dirname "$0")/.."
# One thread per process: on shared cores, several multi-threaded PyTorch processes oversubscribe
# them and every step slows down many-fold.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
EBT=.venv/bin/ebt
OUT=${OUT:-runs/video}
STEPS=${STEPS:-600}
SWEEP_STEPS=${SWEEP_STEPS:-150}
json() { .venv/bin/python -c "import json,sys; d=json.load(sys.stdin); print(' '.join(f'{k}={d[k]:.4g}' for k in sys.argv[1:]))" "$@"; }
train() {  # train PRESET DIR [overrides...], unless DIR already holds a finished run
  local preset=$1 dir=$2; shift 2
  if [ -f "$dir/model.safetensors" ] && grep -q '"split": "validation"' "$dir/metrics.jsonl" 2>/dev/null; then return; fi
  /usr/bin/time -f "$dir: %e s" $EBT train --preset "$preset" --out "$dir" --overwrite --quiet --train.log_every=25 "$@" > /dev/null
}

if [ "$SWEEP_STEPS" -gt 0 ]; then
  echo "== α₀ sweep: video-ebt-tiny, $SWEEP_STEPS steps"
  for alpha in ${ALPHAS:-30 300 30000}; do
    run=$OUT/sweep/alpha-$alpha
    train video-ebt-tiny "$run" --train.steps="$SWEEP_STEPS" --think.step_size="$alpha" \
      --think.step_size_lr_mult="$(.venv/bin/python -c "print(3 * $alpha)")"
    first=$(head -n 1 "$run/metrics.jsonl" | json loss alpha energy_gap)
    last=$(grep '"split": "train"' "$run/metrics.jsonl" | tail -n 1 | json alpha energy_gap)
    echo "alpha0=$alpha step25: $first | end: $last | val: $($EBT eval "$run" --json | json smooth_l1 mse copy_mse)"
  done
fi

echo "== EBT vs Transformer++, $STEPS steps"
for kind in ebt transformer; do
  train "video-$kind-tiny" "$OUT/$kind" --train.steps="$STEPS"
  .venv/bin/python -c "
from ebt.runs import load_run; from ebt.models import count_parameters
m = load_run('$OUT/$kind').model
print('$kind parameters:', count_parameters(m, embeddings=True), 'in all,', count_parameters(m), 'non-embedding')"
done
echo "transformer: $($EBT eval "$OUT/transformer" --json | json smooth_l1 mse pixel_mse copy_smooth_l1 copy_mse copy_pixel_mse forward_passes)"
for steps in ${THINK:-1 2 3 4 6 8}; do
  echo "ebt steps=$steps: $($EBT eval "$OUT/ebt" --steps "$steps" --json | json smooth_l1 mse pixel_mse forward_passes)"
done
echo "ebt best-of-4: $($EBT eval "$OUT/ebt" --samples 4 --json | json smooth_l1 mse pixel_mse forward_passes)"

echo "== more training (the same clips, seen more often): EBT vs Transformer++"
for steps in ${LONG-1200 2400}; do
  for kind in ebt transformer; do
    train "video-$kind-tiny" "$OUT/steps-$steps/$kind" --train.steps="$steps"
    echo "$kind, $steps steps: $($EBT eval "$OUT/steps-$steps/$kind" --json | json smooth_l1 mse pixel_mse)"
  done
done

echo "== uncertainty and rollouts"
$EBT eval "$OUT/ebt" --plots "$OUT/plots" > /dev/null
.venv/bin/python -c "
import json; p = json.load(open('$OUT/plots/energy_by_frame.json'))
print('energy by predicted frame:', ' '.join(f'{e:.3f}' for e in p['energy']))
print('smooth_l1 by predicted frame:', ' '.join(f'{e:.3f}' for e in p['smooth_l1']))
print('energy around a new digit (offset -3..3):', ' '.join(f'{e:.3f}' for e in p['energy_by_offset']))"
for kind in ebt transformer; do
  $EBT generate "$OUT/$kind" --frames 4 --clip 0 --out "$OUT/plots/rollout-$kind.png"
done

echo "== why: the EBT's landscape around the true next frame"
.venv/bin/python benchmarks/video_landscape.py "$OUT/ebt"
