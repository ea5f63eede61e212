#!/usr/bin/env bash
# The sixth round (2026-12-07, eighth session): FIRE with DAPE takes each chunk's bias from FIRE's own chunk_mask
# on the general path (one pass over the pairs per head) instead of its per-pair bucketize and gather; the three
# DAPE models and FIRE alone measured again, three repeats each (the fifth round had one). Same measurement as
# run_fast5.sh: 8192 tokens, one thread, RoPE measured beside each scheme.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=results/benchmarks/mechanisms_35
export OMP_NUM_THREADS=1
python scripts/benchmark_long.py --lengths 8192 --repeats 3 --out $OUT/fast_paths6_8192.json \
  --schemes alibi+dape,kerple_log+dape,fire,fire+dape
