"""Device and precision choices, detected rather than assumed."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from lenx.errors import ConfigError


def cpu_has_fast_bf16() -> bool:
    """True where the CPU has native bf16 matmul (AMX or AVX512-BF16); AVX2-only CPUs emulate it ~30x slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("amx_bf16", "avx512_bf16"))


def resolve_device(requested: str = "auto", key: str = "eval.device") -> torch.device:
    """auto (CUDA where available, else CPU), cpu, or cuda[:N] on a machine that has it; else one ConfigError."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{key} must be auto, cpu or cuda (cuda:N), got {requested!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={requested} requested but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{key} must be auto, cpu or cuda (cuda:N), got {requested!r}")
    return device


# Below this many training FLOPs per optimizer step (6 x parameters x tokens), bf16 autocast on a CPU costs more in
# per-op casts than its faster matmuls save. Measured on a 2-core avx512_bf16 CPU, 1 thread, bare AdamW loop (bf16 /
# fp32 step time): task-sized models (vocabulary ~16, d_model 64-128, 2-4 layers, 512-2048 tokens a step, 0.3-10
# GFLOP) 1.1-2.5x SLOWER; the default LM (tiny, vocabulary 8192, 2048-4096 tokens, 22-44 GFLOP) 0.91-0.94, faster.
CPU_BF16_MIN_FLOPS_PER_STEP = 2e10


def resolve_precision(requested: str | int, accelerator: str = "auto", flops_per_step: float | None = None) -> str | int:
    """Lightning precision string; "auto": bf16-mixed on a bf16-capable GPU, or on a bf16-capable CPU when a step is
    large enough to gain from it (`flops_per_step`, when known, at least CPU_BF16_MIN_FLOPS_PER_STEP), else 32-true."""
    if requested != "auto":
        return requested
    on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    big = flops_per_step is None or flops_per_step >= CPU_BF16_MIN_FLOPS_PER_STEP
    return "bf16-mixed" if cpu_has_fast_bf16() and big else "32-true"


def eval_autocast(requested: str, device: torch.device, key: str = "eval.precision") -> torch.autocast:
    """The autocast context for scoring: eval.precision "auto" -> bf16 where the device has fast bf16, "bf16" ->
    bf16, "32" -> off. Positional maths stays fp32 inside the schemes, and the loss is taken on fp32 logits. A bad
    value is one ConfigError naming `key` (the setting it came from)."""
    if requested not in ("auto", "bf16", "32"):
        raise ConfigError(f"{key} must be auto, bf16 or 32, got {requested!r}")
    fast = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_fast_bf16()
    enabled = requested == "bf16" or (requested == "auto" and fast)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@contextlib.contextmanager
def denormals_flushed(on: bool = True):
    """Inside the block, floats below fp32's normal range (1.2e-38) are flushed to zero (x86 FTZ/DAZ through
    `torch.set_flush_denormal`); afterwards the state is what it was. Scoring a distance bias at long lengths puts
    many softmax terms exp(l - max) in the denormal range (l - max from -87 to -104), where x86 arithmetic is
    slow: ALiBi's attention at 8192 tokens took 1.9x as long with them (one thread; 2.4x with two), measured. Such
    weights are invisible beside a row's sum of at least 1. Used for forwards without a gradient on CPU only, so
    training keeps IEEE arithmetic."""
    if not on or flushing_denormals() or not torch.set_flush_denormal(True):  # (False: not supported here)
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def flushing_denormals() -> bool:
    """Whether denormal floats are flushed to zero right now (torch has no getter: a denormal times one)."""
    return (torch.tensor([1e-39], dtype=torch.float32) * 1.0).item() == 0.0
