#!/usr/bin/env bash
# Issue 35's speed criterion after the modifiers moved onto the fused paths (FoX's gate as channels of q and k,
# the sinks from the CPU kernel's row logsumexp, SSMax on the chunk masks, stick-breaking's blocks without masks
# past the diagonal): the same measurement as run.sh (8192 tokens, one thread, RoPE beside each scheme), with the
# bias schemes' modifiers of attention_plan_34 and the trained stick-breaking model.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=results/benchmarks/mechanisms_35
export OMP_NUM_THREADS=1
python scripts/benchmark_long.py --lengths 8192 --repeats 1 --out $OUT/fast_paths_8192.json \
  --schemes fox,fox_pro,rope+forget,alibi+forget,rope+sinks,alibi+sinks,t5+sinks,fire+sinks,rope+ssmax,alibi+ssmax,t5+ssmax,fire+ssmax,selective,stickbreaking
python scripts/benchmark_long.py --lengths 8192 --repeats 1 --out $OUT/fast_paths_stickbreaking_trained_8192.json \
  --schemes stickbreaking --ckpt stickbreaking=multirun/mechanisms_cpu/stickbreaking_s0/checkpoints/last.ckpt
