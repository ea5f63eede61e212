#!/usr/bin/env bash
# The second round after run_fast.sh: SSMax on the toeplitz path (alibi+ssmax, t5+ssmax) and stick-breaking's
# exp without its subnormal slow path, random and trained weights (same measurement: 8192 tokens, one thread).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=results/benchmarks/mechanisms_35
export OMP_NUM_THREADS=1
python scripts/benchmark_long.py --lengths 8192 --repeats 1 --out $OUT/fast_paths2_8192.json \
  --schemes alibi+ssmax,t5+ssmax,stickbreaking
python scripts/benchmark_long.py --lengths 8192 --repeats 1 --out $OUT/fast_paths2_stickbreaking_trained_8192.json \
  --schemes stickbreaking --ckpt stickbreaking=multirun/mechanisms_cpu/stickbreaking_s0/checkpoints/last.ckpt
