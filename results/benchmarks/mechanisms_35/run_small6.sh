#!/usr/bin/env bash
# The sixth round at the `small` preset (d 384, 6 heads, 6 layers; 2026-12-07, eighth session): DAPE's MLP costs
# 96 H multiply-adds per pair and layer against attention's 2 d_model (384 vs 256 at tiny, 576 vs 768 here), so the
# ratio to RoPE depends on the preset. 8192 tokens, one thread, RoPE beside each scheme; the float-mask reference
# path is not measured (--no-reference: minutes per forward at this width).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=results/benchmarks/mechanisms_35
export OMP_NUM_THREADS=1
python scripts/benchmark_long.py --model small --no-reference --lengths 8192 --repeats 2 \
  --out $OUT/fast_paths6_small_8192.json --schemes alibi+dape,kerple_log+dape,fire,fire+dape
