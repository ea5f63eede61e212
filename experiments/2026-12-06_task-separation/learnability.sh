#!/usr/bin/env bash
# The four tasks the previous study could not learn in distribution (addition, MQAR, variable tracking, the
# multi-key needle; experiments/2026-11-29_length-generalisation-tasks/README.md): how in-distribution exact match
# and per-token accuracy grow with steps (eval.every_n_steps: task/acc_1x, task/token_acc_1x in logs/metrics.csv),
# at the study's model (d 64, 2 layers) and one twice as wide and deep (d 128, 4 layers), pos=rope, seed 0.
# `bash experiments/2026-12-06_task-separation/learnability.sh`
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-multirun/task_learnability}
STEPS=${STEPS:-6000}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
declare -A TASK=(
  [addition]="data=addition data.task.train_size=3"
  [kv_recall]="data=kv_recall data.task.train_size=4"
  [variable_tracking]="data=variable_tracking data.task.train_size=2"
  [niah_multikey]="data=niah_multikey data.task.train_size=16"
)
declare -A MODEL=(
  [d64]="model.d_model=64 model.n_layers=2 model.n_heads=2"
  [d128]="model.d_model=128 model.n_layers=4 model.n_heads=4"
)
for task in addition kv_recall variable_tracking niah_multikey; do
  for size in d64 d128; do
    out="$RUNS/$task/${size}_rope_s0"
    [ -e "$out/.done" ] && continue
    start=$(date +%s)
    read -ra t <<< "${TASK[$task]}"
    read -ra m <<< "${MODEL[$size]}"
    python train.py "${t[@]}" "${m[@]}" pos=rope seed=0 trainer.max_steps="$STEPS" trainer.val_check_interval=2000 \
      trainer.limit_val_batches=2 trainer.enable_progress_bar=false optim.warmup_steps=50 \
      eval.every_n_steps=500 'eval.during.multipliers=[1]' eval.during.instances=100 \
      'eval.probes.tasks.multipliers=[1,2]' eval.probes.tasks.instances=200 hydra.run.dir="$out" > /dev/null 2>&1 \
      && touch "$out/.done" || echo "$task $size: failed"
    echo "$task ($size): $(( $(date +%s) - start )) s" | tee -a "$RUNS/times.txt"
  done
done
