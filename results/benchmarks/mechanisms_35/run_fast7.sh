#!/usr/bin/env bash
# The seventh round (2026-12-07, eighth session): DAPE's compiled kernel with fused multiply-adds, FIRE scored in
# chunks of 2^23 logits (its own size), on top of the sixth round's FIRE chunk mask under DAPE. The three DAPE
# models and FIRE alone, three repeats each. Same measurement as run_fast5.sh: 8192 tokens, one thread, RoPE
# measured beside each scheme.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=results/benchmarks/mechanisms_35
export OMP_NUM_THREADS=1
python scripts/benchmark_long.py --lengths 8192 --repeats 3 --out $OUT/fast_paths7_8192.json \
  --schemes alibi+dape,kerple_log+dape,fire,fire+dape
