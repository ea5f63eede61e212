#!/usr/bin/env bash
# Issue 21's addition to the task study: the same tasks, training and scoring as run.sh (settings.sh), with
# train-time randomised positions (POSITIONS=randomized, the default: Ruoss et al. 2023, arXiv:2305.16843) or PoSE
# (POSITIONS=pose: Zhu et al. 2023, arXiv:2309.10400), for rope, alibi, learned, fire, 3 seeds. NoPE reads no
# positions: randomized trains the very model contiguous does (tested bitwise in tests/test_positions.py), so its
# rows are run.sh's. Randomized models are scored twice: on positions 0..T-1 (lenx's default) and under their own
# train-time mode (eval.probes.tasks.positions=train: a fresh sorted random draw per batch, as the authors' code
# does at test time), rows `teacher` and `teacher@randomized`; PoSE's on 0..T-1 only, as its paper scores them.
# `bash experiments/2026-11-29_length-generalisation-tasks/run_randomized.sh`; per-run files in $RUNS (not
# committed), the aggregates in $OUT (results/tasks_cpu/$POSITIONS/summary.{md,csv,png}, wall_time.txt).
set -euo pipefail
cd "$(dirname "$0")/../.."
main() {  # the whole script is read before it runs: editing this file during a study cannot change the study
POSITIONS=${POSITIONS:-randomized}
RUNS=${RUNS:-multirun/tasks_cpu_$POSITIONS}
OUT=${OUT:-results/tasks_cpu/$POSITIONS}
JOBS=${JOBS:-2}
TASKS=${TASKS:-copy reverse niah_multikey sort parity}
SCHEMES=${SCHEMES:-rope,alibi,learned,fire}
read -ra TRAIN_EXTRA <<< "${TRAIN_EXTRA:-}"
CORES=$(nproc)
THREADS=$(( CORES / JOBS )); export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( THREADS > 0 ? THREADS : 1 ))}
if [ -e "$RUNS" ] && [ -z "${RESUME:-}" ]; then
  echo "run_randomized.sh: $RUNS already exists; move it away (or set RUNS=..., or RESUME=1)" >&2
  exit 1
fi
source experiments/2026-11-29_length-generalisation-tasks/settings.sh  # exactly run.sh's settings
start=$(date +%s)
for task in $TASKS; do
  read -ra settings <<< "${SETTINGS[$task]}"
  # positions.max_len null: seq_len (the longest training instance) x 16, the largest of eval.multipliers
  python train.py -m data="$task" pos="$SCHEMES" positions="$POSITIONS" seed=0,1,2 "${settings[@]}" "${MODEL[@]}" \
    hydra/launcher=joblib hydra.launcher.n_jobs="$JOBS" hydra.sweep.dir="$RUNS/$task" \
    'hydra.sweep.subdir=${hydra:runtime.choices.pos}_${hydra:runtime.choices.positions}_s${seed}' "${TRAIN_EXTRA[@]}"
  pids=()
  for run in "$RUNS/$task"/*_s[0-9]*/; do  # the same checkpoints, scored under their train-time positions, JOBS at once
    [ "$POSITIONS" = randomized ] || break
    scored="$RUNS/${task}_train_positions/$(basename "$run")"
    [ -e "$scored/tasks.jsonl" ] && continue  # RESUME: scored already
    python evaluate.py ckpt="$run/checkpoints/last.ckpt" eval.probes.tasks.positions=train \
      'eval.probes.tasks.multipliers=[1,2,4,8]' eval.probes.tasks.instances=200 hydra.run.dir="$scored" &
    pids+=($!)
    if (( ${#pids[@]} == JOBS )); then for p in "${pids[@]}"; do wait "$p"; done; pids=(); fi
  done
  for p in "${pids[@]}"; do wait "$p"; done  # a failed scoring stops the script (set -e)
  echo "$task done after $(( ($(date +%s) - start) / 60 )) min" | tee -a "$RUNS/task_times.txt"
done
echo "wall time: $(( ($(date +%s) - start) / 60 )) min ($(( $(date +%s) - start )) s) on $CORES CPU cores, JOBS=$JOBS" \
  | tee "$RUNS/wall_time.txt"
cat "$RUNS/task_times.txt" >> "$RUNS/wall_time.txt"
python scripts/aggregate.py "$RUNS" --out "$OUT"
for ext in md csv png; do mv "$OUT/tasks_summary.$ext" "$OUT/summary.$ext"; done
cp "$RUNS/wall_time.txt" "$OUT/wall_time.txt"
}
main "$@"
exit
