#!/usr/bin/env bash
# Issue 32: the position modes as their authors' code draws them (lenx.positions), on run.sh's model and run
# (settings.sh): randomized draws per attention layer (ALiBi: sorted distances placed Toeplitz), PoSE and offsets
# per example, offsets scored at SHAPE's K. The study's earlier rows (run.sh, run_pose_offset.sh) were trained with
# the draws now named randomized_shared, pose_batch and offset_batch.
#   rope, alibi, fire x positions=contiguous,randomized x seeds 0,1,2;
#   rope, alibi, learned, fire x positions=pose, and learned x contiguous (the pose slice's reference) x 0,1,2;
#   fire x positions=offset (scored at K = max_len - seq_len + 1), learned x positions=offset with eval_offset 0
#   (SHAPE's K would read rows of the table that offsets never train; lenx warns) x 0,1,2.
# `bash experiments/2026-11-29_positions-and-extensions/run_authors_draws.sh`; per-run files in $RUNS (not
# committed), the aggregates in $OUT. Budget and measured wall time: README.md beside this file.
set -euo pipefail
cd "$(dirname "$0")/../.."
main() {  # the whole script is read before it runs: editing this file during a study cannot change the study
RUNS=${RUNS:-multirun/positions_authors_draws}
OUT=${OUT:-results/positions_extensions/authors_draws}
JOBS=${JOBS:-2}
STEPS=${STEPS:-300}
if [ -e "$RUNS" ] && [ -z "${RESUME:-}" ]; then  # RESUME=1 continues a cut-short study (finished runs are kept)
  echo "run_authors_draws.sh: $RUNS already exists; move it away (or set RUNS=..., or RESUME=1 to continue it)" >&2
  exit 1
fi
CORES=$(nproc)  # (before OMP_NUM_THREADS is set: GNU nproc reads it)
THREADS=$(( CORES / JOBS )); export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( THREADS > 0 ? THREADS : 1 ))}
source experiments/2026-11-29_positions-and-extensions/settings.sh
start=$(date +%s)
sweep=(hydra/launcher=joblib hydra.launcher.n_jobs="$JOBS" hydra.sweep.dir="$RUNS/train"
       'hydra.sweep.subdir=${hydra:runtime.choices.pos}_${hydra:runtime.choices.positions}_s${seed}')
python train.py -m "${COMMON[@]}" pos=rope,alibi,fire positions=contiguous,randomized seed=0,1,2 "${sweep[@]}"
python train.py -m "${COMMON[@]}" pos=rope,alibi,learned,fire positions=pose seed=0,1,2 "${sweep[@]}"
python train.py -m "${COMMON[@]}" pos=learned positions=contiguous seed=0,1,2 "${sweep[@]}"
python train.py -m "${COMMON[@]}" pos=fire positions=offset seed=0,1,2 "${sweep[@]}"
python train.py -m "${COMMON[@]}" pos=learned positions=offset positions.eval_offset=0 seed=0,1,2 "${sweep[@]}"
mkdir -p "$OUT"
echo "wall time: $(( ($(date +%s) - start) / 60 )) min ($(( $(date +%s) - start )) s) on $CORES CPU cores, JOBS=$JOBS" \
  | tee "$OUT/wall_time.txt"
python scripts/aggregate.py "$RUNS/train" --out "$OUT"
python experiments/2026-11-29_positions-and-extensions/ratios.py "$RUNS" "$OUT/ratios.md" --positions-only
}
main "$@"
exit
