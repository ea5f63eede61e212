#!/usr/bin/env bash
# Addition at the study's model (d 64, 2 layers, 2 heads), 3-digit operands reversed, seed 0, 6000 steps: the
# small-scale remedies the literature uses, beside learnability.sh's pos=rope run of the same model and budget
# (0.02 exact at 1x): Abacus digit positions (McLeish et al. 2024, arXiv:2405.17399, pos=abacus with the authors'
# defaults), a curriculum over operand sizes (+data.task.curriculum=0.5; Zaremba & Sutskever 2014,
# arXiv:1410.4615), and both. In-distribution accuracy every 500 steps; scored at 1x, 2x, 4x (3, 6, 12 digits).
# `bash experiments/2026-12-06_task-separation/addition_remedies.sh`
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-multirun/task_learnability}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
declare -A VARIANT=(
  [abacus]="pos=abacus"
  [rope_curriculum]="pos=rope +data.task.curriculum=0.5"
  [abacus_curriculum]="pos=abacus +data.task.curriculum=0.5"
)
for name in abacus rope_curriculum abacus_curriculum; do
  out="$RUNS/addition/d64_${name}_s0"
  [ -e "$out/.done" ] && continue
  start=$(date +%s)
  read -ra v <<< "${VARIANT[$name]}"
  python train.py data=addition data.task.train_size=3 model.d_model=64 model.n_layers=2 model.n_heads=2 "${v[@]}" \
    seed=0 trainer.max_steps=6000 trainer.val_check_interval=2000 trainer.limit_val_batches=2 \
    trainer.enable_progress_bar=false optim.warmup_steps=50 eval.every_n_steps=500 'eval.during.multipliers=[1]' \
    eval.during.instances=100 'eval.probes.tasks.multipliers=[1,2,4]' eval.probes.tasks.instances=200 \
    hydra.run.dir="$out" > /dev/null 2>&1 && touch "$out/.done" || echo "addition $name: failed"
  echo "addition (d64, $name): $(( $(date +%s) - start )) s" | tee -a "$RUNS/times.txt"
done
