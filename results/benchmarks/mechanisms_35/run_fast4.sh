#!/usr/bin/env bash
# The fourth round (2026-12-07, sixth session): CPU scoring writes each chunk's logits or mask in chunks of 2^21
# logits (lenx.attention.CPU_WRITTEN_LOGITS) instead of 2^25, and banded ALiBi+SSMax masks the chunk's own keys
# (exact) instead of running a channel through them. Same measurement as run_fast3.sh: 8192 tokens, one thread.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=results/benchmarks/mechanisms_35
export OMP_NUM_THREADS=1
python scripts/benchmark_long.py --lengths 8192 --repeats 1 --out $OUT/fast_paths4_8192.json \
  --schemes kerple_log+ssmax,sandwich+ssmax,alibi+ssmax,t5+ssmax,selective,rope+selective,alibi+dape,kerple_log+dape,fire+dape
