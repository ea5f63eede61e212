#!/usr/bin/env bash
# Regenerates results/alibi_table2_cpu/ from scratch: `bash experiments/2026-11-24_alibi-table2-cpu/run.sh`
# (about 75 minutes on 2 CPU cores). Per-run files and checkpoints go to $RUNS (not committed); the aggregates
# committed in the repository go to $OUT. Set JOBS to the number of jobs to run side by side (default 2, each with
# nproc / JOBS torch threads; measured here: two 1-thread jobs train 1.25x faster than one 2-thread job).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-multirun/alibi_table2_cpu}
OUT=${OUT:-results/alibi_table2_cpu}
JOBS=${JOBS:-2}
# Extra overrides for every training / evaluation command, e.g. a dry run of the whole pipeline in ~2 minutes:
#   RUNS=/tmp/dry OUT=/tmp/dry_out TRAIN_EXTRA="trainer.max_steps=2 eval.tokens=1024" EVAL_EXTRA="eval.tokens=1024" bash run.sh
read -ra TRAIN_EXTRA <<< "${TRAIN_EXTRA:-}"
read -ra EVAL_EXTRA <<< "${EVAL_EXTRA:-}"
THREADS=$(( $(nproc) / JOBS )); export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( THREADS > 0 ? THREADS : 1 ))}
if [ -e "$RUNS" ]; then
  echo "run.sh: $RUNS already exists; move it away (or set RUNS=...) so that old rows are not mixed in" >&2
  exit 1
fi
SWEEP=(hydra/launcher=joblib hydra.launcher.n_jobs="$JOBS"
       'hydra.sweep.subdir=${hydra:runtime.choices.pos}_${hydra:runtime.choices.pos/scaling}_s${seed}')

# 1. The grid: 8 schemes x 3 seeds (the preset's sweeper params), trained at L=64, scored at 1x-16x
#    nonoverlapping and sliding, with loss per position and the repeated-segment probe.
python train.py -m experiment=alibi_table2_cpu "${SWEEP[@]}" hydra.sweep.dir="$RUNS/grid" "${TRAIN_EXTRA[@]}"

# 2. RoPE extension, post hoc: each seed's RoPE checkpoint under every scaling, nonoverlapping.
for s in 0 1 2; do
  echo "ckpt=$RUNS/grid/rope_none_s$s/checkpoints/last.ckpt hydra.run.dir=$RUNS/rope_extension/posthoc_s$s"
done | xargs -P "$JOBS" -L 1 python evaluate.py 'scalings=[none,pi,ntk,dynamic_ntk,yarn,llama3,longrope]' \
  eval.mode=nonoverlapping eval.probes.probe=null eval.tokens=16384 "${EVAL_EXTRA[@]}"  # the preset's scored tokens

# 3. RoPE extension, fine-tuned: 60 steps x 8 windows at 4x (L=256) from each seed's checkpoint, with PI or YaRN
#    at factor 4, and without a scaling as the control; scored at 256-1024 (4x-16x of the original 64).
FT=(experiment=alibi_table2_cpu pos=rope seq_len=256 batch_size=8 trainer.max_steps=60 trainer.val_check_interval=60
    optim.lr=3e-4 optim.warmup_steps=6 'eval.multipliers=[1,2,4]' seed=0,1,2
    "init_from=$RUNS/grid/rope_none_s\${seed}/checkpoints/last.ckpt" "${SWEEP[@]}" "${TRAIN_EXTRA[@]}")
for scaling in pi yarn; do  # one sweep each: pos.scaling.factor must exist in the composed group
  python train.py -m "${FT[@]}" pos/scaling=$scaling pos.scaling.factor=4 pos.scaling.original_len=64 \
    hydra.sweep.dir="$RUNS/rope_extension/finetune_$scaling"
done
python train.py -m "${FT[@]}" pos/scaling=none hydra.sweep.dir="$RUNS/rope_extension/finetune_control"

# 4. Aggregates: mean and 95% CI over the 3 seeds, Markdown + CSV + PNG, loss per position, provenance.
python scripts/aggregate.py "$RUNS/grid" --out "$OUT/grid"
python scripts/aggregate.py "$RUNS/rope_extension" --out "$OUT/rope_extension"
echo "run.sh: done; aggregates in $OUT, per-run files in $RUNS"
