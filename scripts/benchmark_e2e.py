"""The end-to-end comparison of scripts/benchmark.py (`--end-to-end`, issue 38): train.py as a user runs it against a
plain PyTorch loop of the same model and shape (benchlib.PlainGPT) and against lenx's own model in that loop, at
one precision and thread count; train.py's rate from the difference of two run lengths (`trained in` in
train.log)."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from benchlib import CONFIGS, PlainGPT, batches, median_spread, timed_loop

from lenx.checkpoint import load_model
from lenx.hardware import resolve_precision
from lenx.lit import build_model

ROOT = CONFIGS.parent


def train_py_seconds(overrides: list[str], run_dir: Path, threads: int) -> float:
    """train.py's own training time (`trained in` in train.log: the fit, with its validation, checkpoints and
    logging; no start-up, no scoring) of a run with these overrides, in a fresh `run_dir`."""
    shutil.rmtree(run_dir, ignore_errors=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, "train.py", *overrides, f"hydra.run.dir={run_dir}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    found = re.search(r"trained in ([0-9.]+)s", (run_dir / "train.log").read_text()) \
        if (run_dir / "train.log").exists() else None
    if proc.returncode or not found:
        raise SystemExit(f"benchmark: train.py {' '.join(overrides)} failed (rc {proc.returncode}):\n"
                         f"{proc.stderr[-2000:]}")
    return float(found.group(1))


def end_to_end(args, device) -> dict:
    """train.py as a user runs it (`python train.py pos=<scheme>`: validation every 100 steps, checkpoints, CSV
    logging, deterministic algorithms, clipping) against a plain PyTorch loop of the same model and shape
    (benchlib.PlainGPT), at the same precision (trainer.precision=auto's choice unless --e2e-precision) and threads.
    train.py's tokens/s is the difference of two run lengths (N and 2N steps: start-up, the sanity check and the
    first steps' warm-up cancel); the loops' are timed in one process, interleaved over --e2e-repeats, beside
    lenx's own model in the same bare loop, which splits the gap into the harness (train.py over lenx's loop) and
    the model's kernels (lenx's loop over the plain one)."""
    n, scheme, threads = args.e2e_steps, args.e2e_scheme, torch.get_num_threads()
    common = [f"pos={scheme}", f"trainer.precision={args.e2e_precision}", "trainer.enable_progress_bar=false",
              "eval.multipliers=[1]", "eval.tokens=4096", "eval.probes.probe=null"]  # (scoring: not timed)
    runs = args.out.parent / "end_to_end"
    times = {}
    for r in range(args.e2e_repeats):
        for steps in (n, 2 * n):
            times.setdefault(steps, []).append(train_py_seconds(
                [*common, f"trainer.max_steps={steps}"], runs / f"{scheme}_{steps}_{r}", threads))
    ckpt = runs / f"{scheme}_{n}_0" / "checkpoints" / "last.ckpt"
    _, cfg = load_model(ckpt)  # the run's own config: its vocabulary, shape and batch
    m, L_, batch = cfg["model"], cfg["seq_len"], cfg["batch_size"]
    with torch.device("meta"):  # the precision train.py took, as it takes it (lenx.train)
        params = sum(p.numel() for p in build_model(cfg).parameters())
    precision = resolve_precision(args.e2e_precision, cfg["trainer"]["accelerator"], 6 * params * batch * L_
                                  * cfg["trainer"]["accumulate_grad_batches"])
    per_step_s = (statistics.median(times[2 * n]) - statistics.median(times[n])) / n
    autocast = precision.startswith("bf16")
    data = batches({"data": cfg["data"], "batch_size": batch, "seq_len": L_}, args.warmup + n, device)
    loops = {"plain": [], "lenx": []}
    for _ in range(args.e2e_repeats):  # interleaved, so drift hits both alike
        torch.manual_seed(0)
        plain = PlainGPT(vocab_size=cfg["data"]["vocab_size"], d_model=m["d_model"], n_layers=m["n_layers"],
                         n_heads=m["n_heads"], seq_len=L_, pos=scheme, mlp_ratio=m["mlp_ratio"], bias=m["bias"])
        loops["plain"].append(timed_loop(plain.to(device).train(), data, args.warmup, autocast, device)
                              ["tokens_per_s"])
        torch.manual_seed(0)
        loops["lenx"].append(timed_loop(build_model(cfg).to(device).train(), data, args.warmup, autocast, device)
                             ["tokens_per_s"])
    train_py = batch * L_ / per_step_s
    plain, lenx = statistics.median(loops["plain"]), statistics.median(loops["lenx"])
    return {"scheme": scheme, "precision": {"train.py": precision, "loops": "bf16 autocast" if autocast else "fp32"},
            "threads": threads, "steps": [n, 2 * n], "train_py_seconds": times, "shape": {**m, "seq_len": L_,
                                                                                           "batch_size": batch},
            "train_py_tokens_per_s": train_py, "plain_tokens_per_s": median_spread(loops["plain"]),
            "lenx_loop_tokens_per_s": median_spread(loops["lenx"]), "train_py_over_plain": train_py / plain,
            "train_py_over_lenx_loop": train_py / lenx, "lenx_loop_over_plain": lenx / plain}


def print_end_to_end(r: dict) -> None:
    print(f"\nend to end, pos={r['scheme']}, {r['precision']['train.py']} (loops: {r['precision']['loops']}), "
          f"{r['threads']} thread(s), d{r['shape']['d_model']} x {r['shape']['n_layers']} layers, batch "
          f"{r['shape']['batch_size']} x {r['shape']['seq_len']}:")
    print(f"  train.py (difference of {r['steps'][0]} and {r['steps'][1]} steps): {r['train_py_tokens_per_s']:.0f} tok/s")
    print(f"  lenx's model, bare loop: {r['lenx_loop_tokens_per_s']['median']:.0f} tok/s; plain model "
          f"(benchlib.PlainGPT): {r['plain_tokens_per_s']['median']:.0f} tok/s")
    print(f"  train.py / plain {r['train_py_over_plain']:.2f}x = harness (train.py / lenx loop) "
          f"{r['train_py_over_lenx_loop']:.2f}x * kernels (lenx loop / plain) {r['lenx_loop_over_plain']:.2f}x")
