#!/usr/bin/env bash
# Issue 35's speed criterion: each new mechanism scores 8192 tokens at >= 0.3x RoPE's tokens/s and <= 1.5x its peak
# memory, RoPE measured beside each scheme in the same run (scripts/benchmark_long.py; one thread: the machine's
# 2 cores held one job each while it ran). Stick-breaking's scoring cost depends on how fast a model spends its
# sticks: measured again with the mechanisms study's trained seed-0 checkpoint (same tiny architecture). DAPE
# (alibi+dape) stands for kerple_log+dape and fire+dape: its per-pair MLP is the cost (4.6 s a forward at 2048).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=results/benchmarks/mechanisms_35
export OMP_NUM_THREADS=1
python scripts/benchmark_long.py --lengths 8192 --repeats 1 --out $OUT/mechanisms_8192.json \
  --schemes fox,fox_pro,stickbreaking,selective,rope_nope,rnope_swa,irope,rope+ssmax,rope+forget,rope+selective,alibi+forget,alibi+dape
python scripts/benchmark_long.py --lengths 8192 --repeats 1 --out $OUT/stickbreaking_trained_8192.json \
  --schemes stickbreaking --ckpt stickbreaking=multirun/mechanisms_cpu/stickbreaking_s0/checkpoints/last.ckpt
