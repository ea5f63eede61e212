#!/usr/bin/env bash
# The fifth round (2026-12-07, seventh session): DAPE's MLP scored as one compiled pointwise kernel
# (lenx.modifiers.dape_fused: torch.compile/Inductor, each pair's inputs, hidden units and outputs in registers)
# instead of the authors' concatenation and two matmuls. Same measurement as run_fast4.sh: 8192 tokens, one
# thread. The first DAPE model compiles the kernel (in the warm-up forward, not timed); the others reuse it. FIRE
# alone too: its own MLP builds the bias that fire+dape's MLP reads.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=results/benchmarks/mechanisms_35
export OMP_NUM_THREADS=1
python scripts/benchmark_long.py --lengths 8192 --repeats 1 --out $OUT/fast_paths5_8192.json \
  --schemes alibi+dape,kerple_log+dape,fire,fire+dape
