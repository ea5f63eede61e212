"""Model FLOPs per token, the device's peak, and MFU (model FLOPs utilisation).

FLOPs per training token, PaLM's count (Chowdhery et al. 2022, arXiv:2204.02311, Appendix B; nanoGPT's
`estimate_mfu` uses the same): 6 N + 12 n_layers d T, where N is the parameters that take part in a matmul (all but
the input token table, which is a lookup; a tied head counts once, as the unembedding matmul), d the model width
and T the sequence length. 6 N is the forward (2 N) and backward (4 N) matmuls of the weights; 12 n_layers d T is
the attention logits q.k and the weighted sum of the values, forward and backward (2 x 2 x T d per token per
layer, times 3), counted for the full T x T matrix as PaLM does, although a causal kernel skips about half of it.
Positional terms (bias tables, rotations, FIRE's MLP) are not counted: MFU compares schemes by the same work.
MFU = tokens/s x FLOPs per token / the device's peak (Chowdhery et al. 2022, Section 4.1).

Peaks: on CUDA the dense bf16 tensor-core peak of a table of known devices (NVIDIA's datasheets give it "with
sparsity", twice the dense figure; the dense one is here); on CPU the matmul peak measured on the spot (1024^3
matmuls in the precision used). Lightning's own table (lightning.fabric.utilities.throughput) is not used: its
H200 entries are the datasheet's with-sparsity figures and an H200 named plainly "NVIDIA H200" is not found.
"""

from __future__ import annotations

import time

import torch
from torch import nn

# (substring of torch.cuda.get_device_name().lower(), dense bf16 TFLOP/s); the first match wins, so a more specific
# name comes before a shorter one it contains ("h100 nvl" before "h100", "a100" before "a10", "l40s" before "l4").
# Sources: NVIDIA datasheets (H100: 1979 TFLOPS bf16 with sparsity -> 989 dense; H100 PCIe 1513 -> 756; H100 NVL
# 1671 -> 835; H200 SXM as H100 SXM, H200 NVL as H100 NVL; A100 312 dense; L40S 733 -> 362; L4 242 -> 121;
# A10 250 -> 125), the Ada whitepaper (RTX 4090: 165 with fp32 accumulate), HGX B200 (4.5 PFLOPS -> 2250).
GPU_BF16_TFLOPS: tuple[tuple[str, float | None], ...] = (  # None: known, no figure here
    ("gh200", 989.0), ("h200 nvl", 835.0), ("h200", 989.0), ("h100 nvl", 835.0), ("h100 pcie", 756.0),
    ("h100", 989.0), ("b200", 2250.0), ("a100", 312.0), ("a10g", None), ("a10", 125.0), ("l40s", 362.0),
    ("l4", 121.0), ("rtx 4090", 165.0),
)


def matmul_params(model: nn.Module) -> int:
    """N of the FLOPs count: every parameter but the input token table (a lookup), unless the head is tied to it
    (then the table is the unembedding matmul and counts once)."""
    counts = model.param_counts()
    tied = model.head.weight is model.tok.weight
    return counts["total"] - (0 if tied else model.tok.weight.numel())


def flops_per_token(n_matmul: int, n_layers: int, d_model: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 N + 12 n_layers d T (PaLM, arXiv:2204.02311, Appendix B)."""
    return 6.0 * n_matmul + 12.0 * n_layers * d_model * seq_len


def model_flops_per_token(model: nn.Module, seq_len: int) -> float:
    """flops_per_token of a lenx Decoder (built anywhere, the meta device included) at sequence length seq_len."""
    return flops_per_token(matmul_params(model), len(model.blocks), model.tok.embedding_dim, seq_len)


def gpu_peak_flops(name: str) -> float | None:
    """Dense bf16 peak (FLOP/s) of a CUDA device by its name, or None where the table does not know it."""
    low = name.lower()
    for key, tflops in GPU_BF16_TFLOPS:
        if key in low:
            return None if tflops is None else tflops * 1e12
    return None


def matmul_peak(dtype: torch.dtype, device: torch.device, n: int = 1024, reps: int = 10) -> float:
    """Measured matmul FLOP/s: `reps` products of two n x n matrices of `dtype` after 3 warm-up products."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_peak(device: torch.device, dtype: torch.dtype) -> tuple[float | None, str]:
    """(peak FLOP/s, what it is) for MFU: a CUDA device's dense bf16 peak from the table (whatever the training
    precision: the device's best), or a CPU's matmul peak measured now in `dtype`."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = gpu_peak_flops(name)
        return peak, f"{name}: dense bf16 peak {'unknown' if peak is None else f'{peak / 1e12:.0f} TFLOP/s'}"
    peak = matmul_peak(dtype, device)
    return peak, f"CPU, measured {str(dtype).removeprefix('torch.')} matmul peak {peak / 1e9:.0f} GFLOP/s"


def format_count(n: float) -> str:
    return f"{n / 1e6:.2f} M" if n < 1e9 else f"{n / 1e9:.2f} B"


def param_line(model: nn.Module) -> str:
    """One line with the model's parameter counts (printed at the start of training)."""
    c = model.param_counts()
    tied = model.head.weight is model.tok.weight
    return (f"parameters: {format_count(c['total'])} total, {format_count(c['non_embedding'])} non-embedding "
            f"({format_count(c['embedding'])} embedding: token table{'' if tied else ' + untied head'}; "
            f"{format_count(c['positional'])} the positional scheme's own)")
