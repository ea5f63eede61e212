#!/usr/bin/env bash
# Train-time position augmentation (issue 21) and training-free extensions (issue 23) on a short LM run:
# rope, alibi, none, learned, fire x positions=contiguous,randomized x seeds 0,1,2 (30 runs), then every
# contiguous rope/alibi/none/fire checkpoint re-scored under each extension that applies to it.
# `bash experiments/2026-11-29_positions-and-extensions/run.sh`; per-run files in $RUNS (not committed), the
# aggregates in $OUT. Budget and measured wall time: README.md beside this file.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-multirun/positions_extensions}
OUT=${OUT:-results/positions_extensions}
JOBS=${JOBS:-2}
STEPS=${STEPS:-300}
if [ -e "$RUNS" ] && [ -z "${RESUME:-}" ]; then  # RESUME=1 continues a cut-short study (runs resume, scored rows stay)
  echo "run.sh: $RUNS already exists; move it away (or set RUNS=..., or RESUME=1 to continue it)" >&2
  exit 1
fi
THREADS=$(( $(nproc) / JOBS )); export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( THREADS > 0 ? THREADS : 1 ))}
source experiments/2026-11-29_positions-and-extensions/settings.sh  # COMMON: the model and run
declare -A EXT=([rope]="none,self_extend,rerope,lm_infinite,streaming,logn"
                [alibi]="none,self_extend,rerope,lm_infinite,streaming,logn"
                [none]="none,lm_infinite,streaming,logn" [fire]="none,logn")
start=$(date +%s)
for pos in ${SCHEMES:-rope alibi none fire learned}; do  # scheme by scheme: a cut-short run leaves whole schemes
  python train.py -m "${COMMON[@]}" pos="$pos" positions=contiguous,randomized seed=0,1,2 \
    hydra/launcher=joblib hydra.launcher.n_jobs="$JOBS" hydra.sweep.dir="$RUNS/train" \
    'hydra.sweep.subdir=${hydra:runtime.choices.pos}_${hydra:runtime.choices.positions}_s${seed}'
  [ -n "${EXT[$pos]:-}" ] || continue
  for seed in 0 1 2; do  # the contiguous checkpoints, under every extension that applies to the scheme
    python evaluate.py ckpt="$RUNS/train/${pos}_contiguous_s${seed}/checkpoints/last.ckpt" "extensions=[${EXT[$pos]}]" \
      'eval.multipliers=[1,2,4,8,16]' eval.probes.probe=null hydra.run.dir="$RUNS/extensions/${pos}_s${seed}"
  done
done
python scripts/aggregate.py "$RUNS/train" --out "$OUT/positions"
python scripts/aggregate.py "$RUNS/extensions" --out "$OUT/extensions"
python experiments/2026-11-29_positions-and-extensions/ratios.py "$RUNS" "$OUT/ratios.md"  # within-seed comparisons
echo "wall time: $(( ($(date +%s) - start) / 60 )) min" | tee "$OUT/wall_time.txt"
