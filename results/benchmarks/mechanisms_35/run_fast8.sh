#!/usr/bin/env bash
# The seventh round's measurement repeated at the eighth session's last code commit (2026-12-07): a second,
# independent run of DAPE on ALiBi, KERPLE and FIRE (and FIRE alone) at 8192 tokens, three repeats, one thread,
# RoPE measured beside each scheme.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=results/benchmarks/mechanisms_35
export OMP_NUM_THREADS=1
python scripts/benchmark_long.py --lengths 8192 --repeats 3 --out $OUT/fast_paths8_8192.json \
  --schemes alibi+dape,kerple_log+dape,fire,fire+dape
