"""Measure lenx's speed and memory: `python scripts/benchmark.py [--schemes none,rope,alibi] [--out bench.json]`.

In one process, so the ratios are fair on a noisy machine (median of --repeats, with min-max spread):
- training tokens/s through Lightning (LenxModule.training_step in a Trainer) vs a bare PyTorch loop (same model,
  AdamW, batches, dtype): the harness overhead;
- bare-loop training tokens/s per positional scheme, relative to NoPE;
- evaluation tokens/s and peak memory (CPU: peak RSS, /proc VmHWM reset per measurement; CUDA:
  max_memory_allocated) at 1x, 4x, 16x the training length, per scheme;
- model FLOPs per token (6N + attention) and the achieved fraction of the measured matmul peak, fp32 and bf16;
- the data path: random training windows per second from the token memmap.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from lenx.errors import OutOfRangeError
from lenx.hardware import cpu_has_fast_bf16
from lenx.lit import LenxModule, RandomWindows, build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def config(scheme: str, seq_len: int, batch: int, steps: int) -> dict:
    pos = OmegaConf.to_container(OmegaConf.load(CONFIGS / "pos" / f"{scheme}.yaml"))
    pos.pop("defaults", None)
    if scheme in ("rope", "rope_partial", "xpos"):
        pos["scaling"] = {"method": "none"}
    return {"model": OmegaConf.to_container(OmegaConf.load(CONFIGS / "model" / "tiny.yaml")), "pos": pos,
            "data": {"vocab_size": 8192}, "seq_len": seq_len, "batch_size": batch,
            "optim": OmegaConf.to_container(OmegaConf.load(CONFIGS / "optim" / "adamw.yaml")),
            "trainer": {"max_steps": steps}}


def median_spread(xs: list[float]) -> dict:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def batches(cfg: dict, n: int, device) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, cfg["data"]["vocab_size"], (cfg["batch_size"], cfg["seq_len"] + 1), generator=g)
            .to(device) for _ in range(n)]


def bare_loop(cfg: dict, data: list[torch.Tensor], warmup: int, autocast: bool, device) -> float:
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
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
    return (len(data) - warmup) * data[0][:, 1:].numel() / (time.perf_counter() - t0)


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


def lightning_loop(cfg: dict, data: list[torch.Tensor], warmup: int, autocast: bool, device) -> float:
    torch.manual_seed(0)
    timer = StepTimer(warmup)
    trainer = L.Trainer(max_steps=len(data), logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, gradient_clip_val=1.0, callbacks=[timer],
                        precision="bf16-mixed" if autocast else "32-true",
                        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, num_sanity_val_steps=0)
    module = LenxModule(cfg)
    module.configure_optimizers = lambda: torch.optim.AdamW(module.parameters(), lr=1e-3)  # same as bare loop
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([b.cpu() for b in data], batch_size=None))
    return (len(data) - warmup) * data[0][:, 1:].numel() / (timer.t1 - timer.t0)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def peak_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


@torch.no_grad()
def eval_point(cfg: dict, length: int, device) -> dict:
    model = build_model(cfg).to(device).eval()
    x = torch.randint(0, cfg["data"]["vocab_size"], (1, length), device=device)
    model(x[:, : cfg["seq_len"]])  # warm-up
    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    try:
        logits = model(x)
    except OutOfRangeError:
        return None
    F.cross_entropy(logits.float()[0], x[0], reduction="none")
    sync(device)
    return {"tokens_per_s": length / (time.perf_counter() - t0), "peak_mib": peak_mib(device)}


def matmul_peak(dtype, device, n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def flops_per_token(cfg: dict) -> float:
    """6 N (forward + backward of the weights, unembedding included) + 12 n_layers T d (causal attention ~half)."""
    m, T = cfg["model"], cfg["seq_len"]
    n = build_model(cfg).num_params(non_embedding=True) + cfg["data"]["vocab_size"] * m["d_model"]
    return 6 * n + 6 * m["n_layers"] * T * m["d_model"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemes", default="none,sinusoidal,learned,rope,alibi,t5,fire")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--eval-multipliers", default="1,4,16")
    ap.add_argument("--out", type=Path, default=Path("outputs/benchmark.json"))
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda" or cpu_has_fast_bf16()
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "threads": torch.get_num_threads(), "torch": torch.__version__, "args": vars(args) | {"out": str(args.out)}}
    peaks = {"fp32": matmul_peak(torch.float32, device)}
    if bf16:
        peaks["bf16"] = matmul_peak(torch.bfloat16, device)
    report["matmul_peak_gflops"] = {k: v / 1e9 for k, v in peaks.items()}

    base = config("none", args.seq_len, args.batch, args.steps)
    data = batches(base, args.steps, device)
    fpt = flops_per_token(base)
    report["flops_per_token"] = fpt
    bare_loop(base, data, args.warmup, False, device)  # throwaway: first-touch allocations, kernel selection
    for name, autocast in [("fp32", False)] + ([("bf16", True)] if bf16 else []):
        bare, lit = [], []
        for _ in range(args.repeats):  # interleaved, so drift hits both alike
            bare.append(bare_loop(base, data, args.warmup, autocast, device))
            lit.append(lightning_loop(base, data, args.warmup, autocast, device))
        report[f"train_{name}"] = {"bare_tokens_per_s": median_spread(bare), "lightning_tokens_per_s":
                                   median_spread(lit), "lightning_over_bare": statistics.median(lit) /
                                   statistics.median(bare), "bare_fraction_of_matmul_peak":
                                   statistics.median(bare) * fpt / peaks[name]}
    schemes = {}
    for s in args.schemes.split(","):
        cfg = config(s, args.seq_len, args.batch, args.steps)
        tps = [bare_loop(cfg, data, args.warmup, False, device) for _ in range(args.repeats)]
        schemes[s] = {"train_fp32_tokens_per_s": median_spread(tps),
                      "eval": {m: eval_point(cfg, int(m) * args.seq_len, device)
                               for m in args.eval_multipliers.split(",")}}
        for m, v in schemes[s]["eval"].items():
            if v is None:  # a learned table past its end
                schemes[s]["eval"][m] = {"tokens_per_s": float("nan"), "peak_mib": float("nan")}
    for s in schemes:
        schemes[s]["train_relative_to_none"] = (schemes[s]["train_fp32_tokens_per_s"]["median"]
                                                / schemes.get("none", schemes[s])["train_fp32_tokens_per_s"]["median"])
    report["schemes"] = schemes
    tokens = np.random.default_rng(0).integers(0, 8192, 2_000_000).astype(np.uint16)
    ds = RandomWindows(tokens, args.seq_len, 10_000, seed=0)
    t0 = time.perf_counter()
    for i in range(10_000):
        ds[i]
    report["data_windows_per_s"] = 10_000 / (time.perf_counter() - t0)
    report["data_tokens_per_s"] = report["data_windows_per_s"] * args.seq_len
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print_report(report)


def print_report(r: dict) -> None:
    print(f"device {r['device']} ({r['threads']} threads), torch {r['torch']}; matmul peak (GFLOP/s): "
          + ", ".join(f"{k} {v:.0f}" for k, v in r["matmul_peak_gflops"].items()))
    print(f"model FLOPs per training token: {r['flops_per_token'] / 1e6:.1f} M")
    for key in [k for k in r if k.startswith("train_")]:
        t = r[key]
        print(f"{key}: bare {t['bare_tokens_per_s']['median']:.0f} tok/s "
              f"[{t['bare_tokens_per_s']['min']:.0f}-{t['bare_tokens_per_s']['max']:.0f}], lightning "
              f"{t['lightning_tokens_per_s']['median']:.0f} tok/s "
              f"[{t['lightning_tokens_per_s']['min']:.0f}-{t['lightning_tokens_per_s']['max']:.0f}] -> ratio "
              f"{t['lightning_over_bare']:.3f}; {100 * t['bare_fraction_of_matmul_peak']:.1f}% of matmul peak")
    mults = list(next(iter(r["schemes"].values()))["eval"])
    print(f"\n{'scheme':<14}{'train tok/s':>12}{'vs none':>9}" + "".join(f"{'eval ' + m + 'x tok/s':>16}{'MiB':>8}"
                                                                 for m in mults))
    for s, v in r["schemes"].items():
        print(f"{s:<14}{v['train_fp32_tokens_per_s']['median']:>12.0f}{v['train_relative_to_none']:>9.2f}"
              + "".join(f"{v['eval'][m]['tokens_per_s']:>16.0f}{v['eval'][m]['peak_mib']:>8.0f}" for m in mults))
    print(f"\ndata path: {r['data_windows_per_s']:.0f} windows/s = {r['data_tokens_per_s'] / 1e6:.1f} M tokens/s")


if __name__ == "__main__":
    main()
