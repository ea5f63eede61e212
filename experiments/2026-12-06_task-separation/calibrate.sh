#!/usr/bin/env bash
# Calibration for the task-separation study (issue 36): each new task once, seed 0, pos=rope (and the tasks the
# previous study could not learn), the previous study's model, with its in-distribution accuracy logged every 250
# steps (eval.every_n_steps: task/acc_1x, task/token_acc_1x and 2x in logs/metrics.csv), so that a task's steps
# are chosen from its curve. `bash experiments/2026-12-06_task-separation/calibrate.sh [task ...]`
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-multirun/task_calibration}
STEPS=${STEPS:-2000}
POS=${POS:-rope}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
declare -A SIZE=(
  [flip_flop]=16 [word_problem_s5]=6 [word_problem_a5]=6 [counting]=12 [selective_copy]=8
  [duplicate_string]=8 [bucket_sort]=8 [odds_first]=8 [modular_arithmetic]=9 [cycle_navigation]=8
  [stack_manipulation]=8 [binary_addition]=8 [binary_multiplication]=6 [missing_duplicate]=8
)
TASKS=("$@")
[ ${#TASKS[@]} -gt 0 ] || TASKS=(flip_flop word_problem_s5 word_problem_a5 counting selective_copy duplicate_string
  bucket_sort odds_first modular_arithmetic cycle_navigation stack_manipulation binary_addition
  binary_multiplication missing_duplicate)
for task in "${TASKS[@]}"; do
  start=$(date +%s)
  python train.py -m data="$task" pos="$POS" seed=0 data.task.train_size="${SIZE[$task]}" \
    model.d_model=64 model.n_layers=2 model.n_heads=2 trainer.max_steps="$STEPS" trainer.val_check_interval=1000 \
    trainer.limit_val_batches=2 trainer.enable_progress_bar=false optim.warmup_steps=50 \
    eval.every_n_steps=250 'eval.during.multipliers=[1,2]' eval.during.instances=100 \
    'eval.probes.tasks.multipliers=[1,2,4]' eval.probes.tasks.instances=200 \
    hydra.sweep.dir="$RUNS/$task" 'hydra.sweep.subdir=${hydra:runtime.choices.pos}_s${seed}' > /dev/null 2>&1 \
    || echo "$task: failed (rc $?)"
  echo "$task ($POS, size ${SIZE[$task]}): $(( $(date +%s) - start )) s" | tee -a "$RUNS/times.txt"
done
