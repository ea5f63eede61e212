#!/usr/bin/env bash
# The GPU check of issue 38, in one go on a CUDA machine (about 6-8 minutes on one H100; never run in CI):
# the gpu-marked tests (CUDA attention paths, FlexAttention, compiled bf16 training of a Llama-style model) and
# the Llama-125M benchmark (tokens/s and MFU for rope, alibi, t5, fire; eager and torch.compile, bf16).
# Usage: bash scripts/gpu_check.sh [outdir]   (default outputs/gpu_check; PYTHON=... picks the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${1:-outputs/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device here')" || exit 2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/device.txt"
status=0
# 1. the gpu-marked tests (with the slow CUDA FlexAttention ones), at most 3 minutes
timeout 180 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_attention_paths.py tests/test_presets.py \
    2>&1 | tee "$OUT/tests.txt" || status=1
# 2. tokens/s and MFU of llama_125m at L 512, batch 16, bf16, attention=flex, eager and compiled, at most 5 minutes
timeout 300 "$PY" scripts/benchmark.py --preset llama_125m --schemes rope,alibi,t5,fire --repeats 1 --steps 12 \
    --warmup 4 --out "$OUT/benchmark.json" 2>&1 | tee "$OUT/benchmark.txt" || status=1
echo "gpu_check: exit status $status; outputs in $OUT"
exit $status
