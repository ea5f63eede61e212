#!/usr/bin/env bash
# The third round (2026-12-07): SSMax on ALiBi and T5 scored on path "banded" (the keys far from a chunk through
# the fused kernel without a mask: ALiBi's line as one channel pair, T5's constant last bucket as nothing; the
# near block as before; merged by logsumexp). Same measurement as run_fast2.sh: 8192 tokens, one thread.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=results/benchmarks/mechanisms_35
export OMP_NUM_THREADS=1
python scripts/benchmark_long.py --lengths 8192 --repeats 1 --out $OUT/fast_paths3_8192.json \
  --schemes alibi+ssmax,t5+ssmax,alibi+ssmax+sinks
