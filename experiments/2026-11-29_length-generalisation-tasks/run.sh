#!/usr/bin/env bash
# The length-generalisation task study of issue 20: 5 tasks x 8 schemes x 3 seeds, each scored at 1x, 2x, 4x, 8x
# the training size; `bash experiments/2026-11-29_length-generalisation-tasks/run.sh`.
# Wall time and commit: results/tasks_cpu/wall_time.txt and README.md. Per-task settings (settings.sh: training
# size, steps) come from the calibration runs in README.md: 3000 steps where the best scheme reached >= 90% exact
# match at 1x with seed 0; 6000 for parity; 1500 for the single needle, learned by step ~800. Per-run files go to
# $RUNS (not committed); the aggregates and the wall time (whole and per task) to $OUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
main() {  # the whole script is read before it runs: editing this file during a study cannot change the study
RUNS=${RUNS:-multirun/tasks_cpu}
OUT=${OUT:-results/tasks_cpu}
JOBS=${JOBS:-2}
TASKS=${TASKS:-copy reverse sort parity niah_multikey}
SCHEMES=${SCHEMES:-none,sinusoidal,learned,rope,alibi,t5,fire,kerple_log}
read -ra TRAIN_EXTRA <<< "${TRAIN_EXTRA:-}"  # dry run: TRAIN_EXTRA="trainer.max_steps=4 trainer.val_check_interval=2"
CORES=$(nproc)  # before OMP_NUM_THREADS is set: nproc honours it
THREADS=$(( CORES / JOBS )); export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( THREADS > 0 ? THREADS : 1 ))}
if [ -e "$RUNS" ]; then
  echo "run.sh: $RUNS already exists; move it away (or set RUNS=...) so that old rows are not mixed in" >&2
  exit 1
fi
source experiments/2026-11-29_length-generalisation-tasks/settings.sh  # SETTINGS (per task), MODEL
start=$(date +%s)
others=$(tr ',' '\n' <<< "$SCHEMES" | { grep -vx t5 || true; } | paste -sd, -)  # t5 runs apart, buckets fitted to L
for task in $TASKS; do
  read -ra settings <<< "${SETTINGS[$task]}"
  sweep=(seed=0,1,2 "${settings[@]}" "${MODEL[@]}" hydra/launcher=joblib hydra.launcher.n_jobs="$JOBS"
         hydra.sweep.dir="$RUNS/$task" 'hydra.sweep.subdir=${hydra:runtime.choices.pos}_s${seed}' "${TRAIN_EXTRA[@]}")
  [ -z "$others" ] || python train.py -m data="$task" pos="$others" "${sweep[@]}"
  if tr ',' '\n' <<< "$SCHEMES" | grep -qx t5; then
    read -ra fit <<< "${T5_FIT[$task]}"
    python train.py -m data="$task" pos=t5 "${fit[@]}" "${sweep[@]}"
  fi
  echo "$task done after $(( ($(date +%s) - start) / 60 )) min" | tee -a "$RUNS/task_times.txt"
done
python scripts/aggregate.py "$RUNS" --out "$OUT"
for ext in md csv png; do mv "$OUT/tasks_summary.$ext" "$OUT/summary.$ext"; done
echo "wall time: $(( ($(date +%s) - start) / 60 )) min ($(( $(date +%s) - start )) s) on $CORES CPU cores, JOBS=$JOBS" \
  | tee "$OUT/wall_time.txt"
cat "$RUNS/task_times.txt" >> "$OUT/wall_time.txt"
}
main "$@"
exit
