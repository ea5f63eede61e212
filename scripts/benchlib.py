"""Helpers shared by the benchmark scripts: configs, timing, memory (CUDA max_memory_allocated; on CPU the
peak RSS from /proc, reset per measurement), one forward's evaluation point, the matmul peak."""

from __future__ import annotations

import ctypes
import statistics
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from lenx.checkpoint import scheme_config
from lenx.errors import OutOfRangeError
from lenx.lit import build_model
from lenx.throughput import matmul_peak  # noqa: F401  (benchmark.py imports it from here)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


ALL_SCHEMES = sorted(p.stem for p in (CONFIGS / "pos").glob("*.yaml"))


def config(scheme: str, seq_len: int, batch: int, steps: int, compile: bool = False, model: str = "tiny") -> dict:
    pos = scheme_config(scheme)  # configs/pos/<scheme>.yaml with its default scaling
    return {"model": OmegaConf.to_container(OmegaConf.load(CONFIGS / "model" / f"{model}.yaml")), "pos": pos,
            "data": {"vocab_size": 8192}, "seq_len": seq_len, "batch_size": batch, "compile": compile, "seed": 0,
            "optim": OmegaConf.to_container(OmegaConf.load(CONFIGS / "optim" / "adamw.yaml")),
            "trainer": {"max_steps": steps}}


def median_spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def batches(cfg: dict, n: int, device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, cfg["data"]["vocab_size"], (cfg["batch_size"], cfg["seq_len"] + 1), generator=g)
            .to(device) for _ in range(n)]


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.t1 = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            sync(pl_module.device)
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        sync(pl_module.device)
        self.t1 = time.perf_counter()


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def proc_status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS: resident now, VmHWM: its peak), in MiB."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field))
    return int(line.split()[1]) / 1024


def reset_peak(device) -> float:
    """Start a peak-memory measurement; returns the baseline (MiB) that the measurement's peak is compared to."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    try:  # glibc keeps freed heap mapped: hand it back, so that a later peak counts what it allocates itself
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    return proc_status_mib("VmRSS")


def peak_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return proc_status_mib("VmHWM")


@torch.no_grad()
def eval_point(model: torch.nn.Module, vocab: int, length: int, device, repeats: int = 1) -> dict | None:
    """Tokens/s (median of `repeats`) and memory of one forward + per-token loss over `length` tokens."""
    x = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(1)).to(device)
    times, added, peak = [], 0.0, 0.0
    for _ in range(repeats):
        base = reset_peak(device)
        sync(device)
        t0 = time.perf_counter()
        try:
            logits = model(x)
        except OutOfRangeError:  # a learned table past its end
            return None
        F.cross_entropy(logits.float()[0], x[0], reduction="none")
        sync(device)
        times.append(time.perf_counter() - t0)
        del logits
        peak = max(peak, peak_mib(device))
        added = max(added, peak_mib(device) - base)
    return {"tokens_per_s": length / statistics.median(times), "peak_mib": peak, "added_mib": added}


def scheme_list(arg: str) -> list[str]:
    names = ALL_SCHEMES if arg == "all" else [s for s in arg.split(",") if s]
    unknown = sorted(set(names) - set(ALL_SCHEMES))
    if unknown:
        raise SystemExit(f"benchmark: unknown scheme(s) {unknown}; known: {ALL_SCHEMES}")
    return names


class PlainGPT(torch.nn.Module):
    """A plain decoder of lenx's GPT-2 block shape (nanoGPT's model.py, with its learned position table, or
    rotate-half RoPE as Llama's and litgpt's code apply it; no positions for "none"): token embedding, pre-LN
    blocks (one qkv Linear, SDPA's causal kernel, GELU MLP), final LayerNorm, tied head. What the benchmark's
    end-to-end comparison calls "a plain PyTorch loop of the same model and shape": no plan, no scheme hooks."""

    def __init__(self, *, vocab_size: int, d_model: int, n_layers: int, n_heads: int, seq_len: int, pos: str,
                 mlp_ratio: float = 4.0, bias: bool = False, rope_base: float = 10000.0) -> None:
        super().__init__()
        if pos not in ("none", "learned", "rope"):
            raise ValueError(f"PlainGPT has pos none, learned or rope, not {pos}")
        nn = torch.nn
        self.n_heads, self.pos = n_heads, pos
        self.tok = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(seq_len, d_model) if pos == "learned" else None
        hidden = int(mlp_ratio * d_model)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "ln1": nn.LayerNorm(d_model, bias=bias), "qkv": nn.Linear(d_model, 3 * d_model, bias=bias),
            "proj": nn.Linear(d_model, d_model, bias=bias), "ln2": nn.LayerNorm(d_model, bias=bias),
            "fc": nn.Linear(d_model, hidden, bias=bias), "out": nn.Linear(hidden, d_model, bias=bias)})
            for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model, bias=bias)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tok.weight
        D = d_model // n_heads
        inv = rope_base ** (-torch.arange(0, D, 2).float() / D)
        ang = torch.arange(seq_len).float()[:, None] * inv[None]
        self.register_buffer("cos", torch.cat([ang.cos()] * 2, -1), persistent=False)
        self.register_buffer("sin", torch.cat([ang.sin()] * 2, -1), persistent=False)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        T, half = x.shape[2], x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * self.cos[:T].to(x.dtype) + rot * self.sin[:T].to(x.dtype)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        x = self.tok(idx)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(T, device=idx.device))
        for b in self.blocks:
            q, k, v = b["qkv"](b["ln1"](x)).view(B, T, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
            if self.pos == "rope":
                q, k = self.rotate(q), self.rotate(k)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + b["proj"](y.transpose(1, 2).reshape(B, T, -1))
            x = x + b["out"](F.gelu(b["fc"](b["ln2"](x))))
        return self.head(self.ln_f(x))


def bare_loop(cfg: dict, data: list[torch.Tensor], warmup: int, autocast: bool, device) -> dict:
    """Plain PyTorch: the lenx model (compiled if cfg says so), AdamW, clipping; tokens/s after `warmup` steps."""
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    if cfg["compile"]:
        model.compile()
    return timed_loop(model, data, warmup, autocast, device)


def timed_loop(model: torch.nn.Module, data: list[torch.Tensor], warmup: int, autocast: bool, device) -> dict:
    """A plain training loop of `model` (AdamW, clipping at 1, as train.py): tokens/s after `warmup` steps, and the
    seconds those warm-up steps took (a compiled model's compilation)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    t_start = time.perf_counter()
    for i, b in enumerate(data):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(b[:, :-1]).float().flatten(0, 1), b[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return {"tokens_per_s": (len(data) - warmup) * data[0][:, 1:].numel() / (time.perf_counter() - t0),
            "warmup_s": t0 - t_start}
