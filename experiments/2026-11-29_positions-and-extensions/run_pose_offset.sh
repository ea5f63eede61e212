#!/usr/bin/env bash
# Issue 21's PoSE and random-offset slice of the positions study, with run.sh's model and run (settings.sh):
# rope, alibi, learned, fire x positions=contiguous,pose x seeds 0,1,2, and learned, fire x positions=offset x
# seeds 0,1,2 (30 runs, one commit, so every comparison is within a seed against a contiguous run trained beside it).
# PoSE (Zhu et al. 2023, arXiv:2309.10400) and offsets (SHAPE, Kiyono et al. 2021, arXiv:2106.03143) are scored on
# positions 0..T-1, as their papers score them. Offsets are left out for rope and alibi: they see distances only, so
# a shifted window trains the same model up to rounding (lenx warns; tests/test_positions.py checks the invariance).
# NoPE reads no positions: every mode trains the contiguous model (tested bitwise).
# `bash experiments/2026-11-29_positions-and-extensions/run_pose_offset.sh`; per-run files in $RUNS (not
# committed), the aggregates in $OUT. Budget and measured wall time: README.md beside this file.
set -euo pipefail
cd "$(dirname "$0")/../.."
main() {  # the whole script is read before it runs: editing this file during a study cannot change the study
RUNS=${RUNS:-multirun/positions_pose_offset}
OUT=${OUT:-results/positions_extensions/pose_offset}
JOBS=${JOBS:-2}
STEPS=${STEPS:-300}
if [ -e "$RUNS" ] && [ -z "${RESUME:-}" ]; then  # RESUME=1 continues a cut-short study (finished runs are kept)
  echo "run_pose_offset.sh: $RUNS already exists; move it away (or set RUNS=..., or RESUME=1 to continue it)" >&2
  exit 1
fi
CORES=$(nproc)  # (before OMP_NUM_THREADS is set: GNU nproc reads it)
THREADS=$(( CORES / JOBS )); export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( THREADS > 0 ? THREADS : 1 ))}
source experiments/2026-11-29_positions-and-extensions/settings.sh
start=$(date +%s)
sweep=(hydra/launcher=joblib hydra.launcher.n_jobs="$JOBS" hydra.sweep.dir="$RUNS/train"
       'hydra.sweep.subdir=${hydra:runtime.choices.pos}_${hydra:runtime.choices.positions}_s${seed}')
python train.py -m "${COMMON[@]}" pos=rope,alibi,learned,fire positions=contiguous,pose seed=0,1,2 "${sweep[@]}"
python train.py -m "${COMMON[@]}" pos=learned,fire positions=offset seed=0,1,2 "${sweep[@]}"
mkdir -p "$OUT"
echo "wall time: $(( ($(date +%s) - start) / 60 )) min ($(( $(date +%s) - start )) s) on $CORES CPU cores, JOBS=$JOBS" \
  | tee "$OUT/wall_time.txt"
python scripts/aggregate.py "$RUNS/train" --out "$OUT"
python experiments/2026-11-29_positions-and-extensions/ratios.py "$RUNS" "$OUT/ratios.md" --positions-only
}
main "$@"
exit
