#!/usr/bin/env bash
# Issue 32: Self-Extend with `group: null` chose its group size per chunk of queries until eed0961; LongLM runs one
# per input. This re-scores the study's self_extend rows: the contiguous rope and alibi runs of run.sh (the same
# settings, settings.sh; retrained, since the study's checkpoints were not kept: CPU training is deterministic, and
# the `none` rows, scored beside, must equal the committed ones), each seed under extensions=[none,self_extend].
# `bash experiments/2026-11-29_positions-and-extensions/rescore_self_extend.sh`; per-run files in $RUNS (not
# committed), the aggregates in $OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
main() {  # read whole before it runs
RUNS=${RUNS:-multirun/positions_extensions_self_extend}
OUT=${OUT:-results/positions_extensions/self_extend_rescored}
JOBS=${JOBS:-2}
STEPS=${STEPS:-300}
CORES=$(nproc)  # (before OMP_NUM_THREADS is set: GNU nproc reads it)
THREADS=$(( CORES / JOBS )); export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( THREADS > 0 ? THREADS : 1 ))}
source experiments/2026-11-29_positions-and-extensions/settings.sh  # COMMON: the model and run
start=$(date +%s)
for pos in rope alibi; do
  python train.py -m "${COMMON[@]}" pos="$pos" positions=contiguous seed=0,1,2 \
    hydra/launcher=joblib hydra.launcher.n_jobs="$JOBS" hydra.sweep.dir="$RUNS/train" \
    'hydra.sweep.subdir=${hydra:runtime.choices.pos}_${hydra:runtime.choices.positions}_s${seed}'
  for seed in 0 1 2; do
    echo "ckpt=$RUNS/train/${pos}_contiguous_s${seed}/checkpoints/last.ckpt hydra.run.dir=$RUNS/extensions/${pos}_s${seed}"
  done | xargs -P "$JOBS" -L 1 python evaluate.py "extensions=[none,self_extend]" 'eval.multipliers=[1,2,4,8,16]' \
    eval.probes.probe=null
done
python scripts/aggregate.py "$RUNS/extensions" --out "$OUT"
python experiments/2026-11-29_positions-and-extensions/ratios.py "$RUNS" "$OUT/ratios.md"
echo "wall time: $(( ($(date +%s) - start) / 60 )) min ($(( $(date +%s) - start )) s) on $CORES CPU cores, JOBS=$JOBS" \
  | tee "$OUT/wall_time.txt"
}
main "$@"
exit
