#!/usr/bin/env bash
# Study 2 (issue 22): when does the published extrapolation ordering appear at CPU scale?
# Study 1's grid (experiment=alibi_table2_cpu: tiny model, L = 64, batch 32, lr 3e-3, fp32, stdlib corpus) trained
# 5.1x longer (1280 steps = 2.62 M tokens against 250 steps = 512 k), scored during training every 80 steps at
# 1x-16x on the same 8192 validation targets (extrap/ppl_<m>x in each run's logs/metrics.csv), and at the end at
# 1x-16x nonoverlapping and sliding on study 1's 16384 targets.
# `bash experiments/2026-11-29_separation/run.sh`; per-run files in $RUNS (not committed), aggregates in $OUT.
# Budget and measured wall time: README.md beside this file.
set -euo pipefail
cd "$(dirname "$0")/../.."
main() {  # the whole script is read before it runs: editing this file during a study cannot change the study
RUNS=${RUNS:-multirun/separation_cpu}
OUT=${OUT:-results/separation_cpu}
JOBS=${JOBS:-2}
STEPS=${STEPS:-1280}
EVERY=${EVERY:-80}
read -ra TRAIN_EXTRA <<< "${TRAIN_EXTRA:-}"  # dry run: STEPS=4 EVERY=2 TRAIN_EXTRA="eval.tokens=1024"
CORES=$(nproc)
THREADS=$(( CORES / JOBS )); export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( THREADS > 0 ? THREADS : 1 ))}
if [ -e "$RUNS" ] && [ -z "${RESUME:-}" ]; then  # RESUME=1 continues a cut-short study (runs resume, scored rows stay)
  echo "run.sh: $RUNS already exists; move it away (or set RUNS=..., or RESUME=1 to continue it)" >&2
  exit 1
fi
start=$(date +%s)
# Scheme by scheme (two seeds side by side), so that a study cut short leaves whole schemes: the five of the
# issue first, then kerple_log and fire.
for pos in ${SCHEMES:-none sinusoidal rope alibi t5 kerple_log fire}; do
  python train.py -m experiment=alibi_table2_cpu pos="$pos" seed=0,1,2 trainer.max_steps="$STEPS" \
    trainer.val_check_interval="$STEPS" eval.every_n_steps="$EVERY" 'eval.during.multipliers=[1,2,4,8,16]' \
    eval.during.tokens=8192 eval.probes.probe=null \
    hydra/launcher=joblib hydra.launcher.n_jobs="$JOBS" hydra.sweep.dir="$RUNS" \
    'hydra.sweep.subdir=${hydra:runtime.choices.pos}_s${seed}' "${TRAIN_EXTRA[@]}"
  echo "$pos done after $(( ($(date +%s) - start) / 60 )) min"
done
echo "wall time (training and scoring): $(( ($(date +%s) - start) / 60 )) min ($(( $(date +%s) - start )) s) on $CORES CPU cores, JOBS=$JOBS" \
  | tee "$RUNS/wall_time.txt"
python scripts/aggregate.py "$RUNS" --out "$OUT"
python scripts/curves.py "$RUNS" --out "$OUT/curves" --ratio 16/1
cp "$RUNS/wall_time.txt" "$OUT/wall_time.txt"
}
main "$@"
exit
