"""Measure lenx's speed and memory: `python scripts/benchmark.py [--schemes all] [--out outputs/benchmark.json]`.

In one process, so the ratios are fair on a noisy machine (median of --repeats interleaved runs, min-max spread):
- training tokens/s through Lightning (LenxModule.training_step in a Trainer) vs a bare PyTorch loop (same model,
  AdamW, batches, dtype): the harness overhead, fp32 and (where the device has fast bf16) bf16 autocast;
- torch.compile: the bare loop eager vs compiled (nn.Module.compile, as `compile=true` does), per --compile-schemes;
- bare-loop training tokens/s per positional scheme, relative to NoPE;
- evaluation tokens/s and peak memory at 1x, 4x, 16x the training length, per scheme;
- the long-context check: every scheme at 8x and 16x a --long-seq-len training length (4096 and 8192 tokens by
  default), with the memory a forward adds and its excess over NoPE's. Past one attention chunk (2^25 logits)
  that excess is a few chunk-sized buffers whatever T, and the growth ratio 16x / 8x tends to 2 (linear); a
  dense heads x T x T fp32 tensor would make it ~4;
- model FLOPs per token and the achieved fraction of the matmul peak measured in the same run;
- the data path: random training windows per second from the token memmap, against the training rate;
- the task row (lenx.tasks, --task): one training step of a task model through Lightning (as train.py runs it:
  loader, CSV logger, checkpoint-free) against the LM of the same shape (same width, depth, batch and length, the
  corpus vocabulary), split into data generation, the bare model step and the rest (Lightning, logging), in fp32
  and, where the device has fast bf16, bf16 autocast, with the precision `trainer.precision=auto` picks for each.
Memory: on CUDA `max_memory_allocated`; on CPU the peak RSS (/proc VmHWM, reset per measurement after returning
freed heap to the OS) minus the RSS before the forward.
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
from benchlib import (
    CONFIGS,
    StepTimer,
    bare_loop,
    batches,
    config,
    eval_point,
    matmul_peak,
    median_spread,
    scheme_list,
)
from benchmark_e2e import end_to_end, print_end_to_end
from benchmark_tasks import print_task, task_row
from omegaconf import OmegaConf

import lenx.attention
from lenx.hardware import cpu_has_fast_bf16, resolve_precision
from lenx.lit import LenxModule, RandomWindows, build_model
from lenx.throughput import device_peak, model_flops_per_token

ROOT = CONFIGS.parent


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


def flops_per_token(cfg: dict) -> float:
    """lenx.throughput's count (PaLM's 6 N + 12 n_layers d T; docs/performance.md) for cfg's model."""
    with torch.device("meta"):
        return model_flops_per_token(build_model(cfg), cfg["seq_len"])


def preset_config(preset: str, scheme: str, args, compile: bool) -> dict:
    cfg = config(scheme, args.seq_len, args.batch, args.steps, compile=compile)
    cfg["model"] = OmegaConf.to_container(OmegaConf.load(CONFIGS / "model" / f"{preset}.yaml"))
    cfg["data"]["vocab_size"] = args.vocab
    cfg["attention"] = args.attention
    return cfg


def preset_rows(args, device) -> dict:
    """Training tokens/s and MFU of each --preset with each scheme: the bare loop (lenx's model, AdamW, clipping) in
    the precision training would use (CUDA: bf16 autocast; CPU: trainer.precision=auto's choice), eager and, per
    --preset-compile, compiled; MFU against the device's peak (lenx.throughput.device_peak) in that precision."""
    out = {}
    for preset in args.preset.split(","):
        probe = preset_config(preset, scheme_list(args.schemes)[0], args, False)
        fpt = flops_per_token(probe)
        tokens_per_step = args.batch * args.seq_len
        if args.bf16 == "auto":
            precision = resolve_precision("auto", "auto", fpt * tokens_per_step)
        else:
            precision = "bf16-mixed" if args.bf16 == "on" else "32-true"
        autocast = precision == "bf16-mixed"
        peak, what = device_peak(device, torch.bfloat16 if autocast else torch.float32)
        if args.peak_tflops:
            peak, what = args.peak_tflops * 1e12, f"--peak-tflops {args.peak_tflops}"
        compiled = args.preset_compile == "on" or (args.preset_compile == "auto" and device.type == "cuda")
        with torch.device("meta"):
            counts = build_model(probe).param_counts()
        row = {"flops_per_token": fpt, "params": counts, "precision": precision, "peak_flops": peak, "peak": what,
               "seq_len": args.seq_len, "batch": args.batch, "attention": args.attention, "schemes": {}}
        data = batches(probe, args.steps, device)
        for s in scheme_list(args.schemes):
            modes = {"eager": []} | ({"compiled": []} if compiled else {})
            warm = {}
            for _ in range(args.repeats):
                for mode in modes:
                    r = bare_loop(preset_config(preset, s, args, mode == "compiled"), data, args.warmup, autocast,
                                  device)
                    modes[mode].append(r["tokens_per_s"])
                    warm.setdefault(mode, r["warmup_s"])
            fpt_s = flops_per_token(preset_config(preset, s, args, False))
            row["schemes"][s] = {mode: {"tokens_per_s": median_spread(v), "mfu": statistics.median(v) * fpt_s / peak
                                        if peak else None, "first_warmup_s": warm[mode]} for mode, v in modes.items()}
            print(f"[{preset}] {s} done", flush=True)
        out[preset] = row
    return out


def print_presets(r: dict) -> None:
    for preset, row in r.items():
        c = row["params"]
        print(f"\n{preset}: {c['total'] / 1e6:.1f} M parameters ({c['non_embedding'] / 1e6:.1f} M non-embedding), "
              f"L {row['seq_len']}, batch {row['batch']}, {row['precision']}, attention={row['attention']}; "
              f"{row['flops_per_token'] / 1e9:.3f} GFLOP a token (6N + 12 n_layers d T); MFU against {row['peak']}")
        print(f"{'scheme':<15}{'mode':<10}{'tok/s':>12}{'spread':>9}{'MFU':>8}{'warm-up s':>11}")
        for s, modes in row["schemes"].items():
            for mode, v in modes.items():
                t = v["tokens_per_s"]
                mfu = "n/a" if v["mfu"] is None else f"{100 * v['mfu']:.1f}%"
                spread = f"±{50 * (t['max'] - t['min']) / t['median']:.0f}%"
                print(f"{s:<15}{mode:<10}{t['median']:>12.0f}{spread:>9}{mfu:>8}{v['first_warmup_s']:>11.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemes", default="all", help="'all' or a comma list of configs/pos names")
    ap.add_argument("--seq-len", type=int, default=None, help="training length (default 128; 512 with --preset)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--preset", default="", help="configs/model presets (comma list), e.g. llama_125m: tokens/s "
                    "and MFU of each with each of --schemes, and nothing else")
    ap.add_argument("--preset-compile", choices=["auto", "on", "off"], default="auto",
                    help="with --preset: also time torch.compile (auto: on CUDA)")
    ap.add_argument("--attention", choices=["auto", "sdpa", "flex", "reference"], default="auto",
                    help="with --preset: lenx's attention setting (auto: flex on CUDA, sdpa on CPU, where "
                    "FlexAttention has no backward)")
    ap.add_argument("--vocab", type=int, default=32000, help="with --preset: the vocabulary (the presets' nominal "
                    "counts assume 32000)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="with --preset: the device's peak, where "
                    "lenx.throughput's table does not know the GPU")
    ap.add_argument("--steps", type=int, default=8, help="training steps per timed run, warm-up included")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--overhead-steps", type=int, default=20, help="timed steps per run in the Lightning vs bare "
                    "comparison (the figure the harness is judged by: longer runs, less noise)")
    ap.add_argument("--overhead-repeats", type=int, default=5)
    ap.add_argument("--eval-multipliers", default="1,4,16")
    ap.add_argument("--long-seq-len", type=int, default=512, help="the long-context check's training length "
                    "(evaluated at 8x and 16x it; 0 skips the check)")
    ap.add_argument("--long-schemes", default="all")
    ap.add_argument("--long-multipliers", default="8,16", help="two multipliers of --long-seq-len; memory growth "
                    "is the ratio of the second's added memory to the first's")
    ap.add_argument("--compile-schemes", default="none,alibi", help="schemes timed eager vs torch.compile "
                    "('' skips)")
    ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                    help="measure bf16 autocast: auto = on GPUs and CPUs with fast bf16 (AMX / avx512_bf16)")
    ap.add_argument("--task", default="copy", help="the task row: a configs/data/<task>.yaml task with its "
                    "defaults, against the LM of the same shape ('' skips the row)")
    ap.add_argument("--task-shape", default="64,2,2", help="d_model,n_layers,n_heads of the task row's models")
    ap.add_argument("--task-batch", type=int, default=32)
    ap.add_argument("--task-steps", type=int, default=100, help="timed Lightning steps per task-row run")
    ap.add_argument("--task-warmup", type=int, default=10)
    ap.add_argument("--task-repeats", type=int, default=3)
    ap.add_argument("--task-only", action="store_true", help="measure the task row only (about a minute)")
    ap.add_argument("--end-to-end", action="store_true", help="train.py as users run it against a plain PyTorch "
                    "loop of the same model and shape, same precision (a few minutes), and nothing else")
    ap.add_argument("--e2e-scheme", choices=["none", "learned", "rope"], default="rope")
    ap.add_argument("--e2e-steps", type=int, default=100, help="train.py runs of N and 2N steps; the loops time N")
    ap.add_argument("--e2e-repeats", type=int, default=2)
    ap.add_argument("--e2e-precision", choices=["auto", "32-true", "bf16-mixed"], default="auto")
    ap.add_argument("--out", type=Path, default=Path("outputs/benchmark.json"))
    args = ap.parse_args()
    if args.seq_len is None:
        args.seq_len = 512 if args.preset else 128
    schemes, long_schemes = scheme_list(args.schemes), scheme_list(args.long_schemes)
    compile_schemes = scheme_list(args.compile_schemes)
    long_mults = [int(m) for m in args.long_multipliers.split(",")]
    if len(long_mults) != 2 or long_mults[0] >= long_mults[1]:
        raise SystemExit(f"benchmark: --long-multipliers needs two increasing values, got {args.long_multipliers}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and (device.type == "cuda" or cpu_has_fast_bf16()))
    t_start = time.perf_counter()
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "fast_bf16": device.type == "cuda" or cpu_has_fast_bf16(), "args": vars(args) | {"out": str(args.out)}}
    if args.preset:
        if args.attention == "auto":
            args.attention = "flex" if device.type == "cuda" else "sdpa"
        report["args"]["attention"] = args.attention
        report["presets"] = preset_rows(args, device)
        write_report(report, args.out, t_start)
        print_presets(report["presets"])
        print(f"\nwritten: {args.out} ({report['wall_s']:.0f} s)")
        return
    if args.end_to_end:
        report["end_to_end"] = end_to_end(args, device)
        write_report(report, args.out, t_start)
        print_end_to_end(report["end_to_end"])
        print(f"\nwritten: {args.out} ({report['wall_s']:.0f} s)")
        return
    if args.task_only:
        report["task"] = task_row(args, device, bf16, args.out.parent)
        write_report(report, args.out, t_start)
        print_task(report["task"])
        print(f"\nwritten: {args.out} ({report['wall_s']:.0f} s)")
        return
    peaks = {"fp32": matmul_peak(torch.float32, device)}
    if bf16:
        peaks["bf16"] = matmul_peak(torch.bfloat16, device)
    report["matmul_peak_gflops"] = {k: v / 1e9 for k, v in peaks.items()}

    base = config("none", args.seq_len, args.batch, args.steps)
    data = batches(base, args.steps, device)
    long_data = batches(base, args.warmup + args.overhead_steps, device)
    fpt = flops_per_token(base)
    report["flops_per_token"] = fpt
    bare_loop(base, data, args.warmup, False, device)  # throwaway: first-touch allocations, kernel selection
    for name, autocast in [("fp32", False)] + ([("bf16", True)] if bf16 else []):
        bare, lit = [], []
        for _ in range(args.overhead_repeats):  # interleaved, so drift hits both alike
            bare.append(bare_loop(base, long_data, args.warmup, autocast, device)["tokens_per_s"])
            lit.append(lightning_loop(base, long_data, args.warmup, autocast, device))
        report[f"train_{name}"] = {"precision": {"bare": "bf16 autocast" if autocast else "fp32 (no autocast)",
                                                 "lightning": "bf16-mixed" if autocast else "32-true"},
                                   "bare_tokens_per_s": median_spread(bare), "lightning_tokens_per_s":
                                   median_spread(lit), "lightning_over_bare": statistics.median(lit) /
                                   statistics.median(bare), "bare_fraction_of_matmul_peak":
                                   statistics.median(bare) * fpt / peaks[name]}
        print(f"[{time.perf_counter() - t_start:.0f} s] harness overhead, {name}", flush=True)

    report["compile"] = {}
    for s in compile_schemes:
        runs = {"eager": [], "compiled": []}
        warm = {}
        for _ in range(args.repeats):
            for mode in runs:
                r = bare_loop(config(s, args.seq_len, args.batch, args.steps, compile=mode == "compiled"),
                              data, args.warmup, False, device)
                runs[mode].append(r["tokens_per_s"])
                warm.setdefault(mode, r["warmup_s"])  # the first run's warm-up holds the compilation
        report["compile"][s] = {"eager_tokens_per_s": median_spread(runs["eager"]),
                                "compiled_tokens_per_s": median_spread(runs["compiled"]),
                                "compiled_over_eager": statistics.median(runs["compiled"])
                                / statistics.median(runs["eager"]), "first_warmup_s": warm}
        print(f"[{time.perf_counter() - t_start:.0f} s] compile, {s}", flush=True)

    mults = [int(m) for m in args.eval_multipliers.split(",")]
    tps = {s: [] for s in schemes}
    for r in range(args.repeats):  # round robin over the schemes, so that drift hits every scheme alike
        for s in schemes:
            tps[s].append(bare_loop(config(s, args.seq_len, args.batch, args.steps), data, args.warmup, False,
                                    device)["tokens_per_s"])
        print(f"[{time.perf_counter() - t_start:.0f} s] training per scheme, round {r + 1}", flush=True)
    report["schemes"] = {}
    for s in schemes:
        cfg = config(s, args.seq_len, args.batch, args.steps)
        model = build_model(cfg).to(device).eval()
        with torch.no_grad():
            model(data[0][:1, : args.seq_len])  # warm-up
        report["schemes"][s] = {"train_fp32_tokens_per_s": median_spread(tps[s]), "eval": {
            str(m): eval_point(model, cfg["data"]["vocab_size"], m * args.seq_len, device, args.repeats)
            for m in mults}}
    print(f"[{time.perf_counter() - t_start:.0f} s] evaluation per scheme", flush=True)
    none = report["schemes"].get("none")
    for v in report["schemes"].values():
        v["train_relative_to_none"] = (v["train_fp32_tokens_per_s"]["median"]
                                       / none["train_fp32_tokens_per_s"]["median"] if none else None)

    report["long"] = {}
    if args.long_seq_len:
        for s in long_schemes:
            cfg = config(s, args.long_seq_len, 1, 1)
            model = build_model(cfg).to(device).eval()
            with torch.no_grad():
                model(data[0][:1, : min(args.seq_len, args.long_seq_len)])  # warm-up
            points = {str(m): eval_point(model, cfg["data"]["vocab_size"], m * args.long_seq_len, device)
                      for m in long_mults}
            ok = all(points.values())
            report["long"][s] = {"eval": points, "growth": points[str(long_mults[1])]["added_mib"]
                                 / points[str(long_mults[0])]["added_mib"] if ok else None}
            print(f"[{time.perf_counter() - t_start:.0f} s] long context, {s}", flush=True)
        longest = long_mults[1] * args.long_seq_len
        report["dense_fp32_scores_mib_at_longest"] = base["model"]["n_heads"] * longest ** 2 * 4 / 2**20
        report["chunk_fp32_mib"] = lenx.attention.CHUNK_LOGITS * 4 / 2**20
        none = report["long"].get("none")
        for v in report["long"].values():  # the memory a scheme's attention adds over NoPE's, at the longest
            v["over_none_mib"] = (v["eval"][str(long_mults[1])]["added_mib"]
                                  - none["eval"][str(long_mults[1])]["added_mib"]
                                  if none and v["growth"] is not None else None)

    tokens = np.random.default_rng(0).integers(0, 8192, 2_000_000).astype(np.uint16)
    ds = RandomWindows(tokens, args.seq_len, 10_000, seed=0)
    t0 = time.perf_counter()
    for i in range(10_000):
        ds[i]
    report["data_windows_per_s"] = 10_000 / (time.perf_counter() - t0)
    report["data_tokens_per_s"] = report["data_windows_per_s"] * args.seq_len
    report["data_over_training"] = report["data_tokens_per_s"] / report["train_fp32"]["bare_tokens_per_s"]["median"]
    if args.task:
        report["task"] = task_row(args, device, bf16, args.out.parent)
        print(f"[{time.perf_counter() - t_start:.0f} s] task row", flush=True)
    write_report(report, args.out, t_start)
    print_report(report)
    if "task" in report:
        print_task(report["task"])
    print(f"\nwritten: {args.out} ({report['wall_s']:.0f} s)")


def write_report(report: dict, out: Path, t_start: float) -> None:
    """The report with its wall time (since t_start), as JSON at `out`."""
    report["wall_s"] = time.perf_counter() - t_start
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))


def print_report(r: dict) -> None:
    print(f"\ndevice {r['device']} ({r['threads']} threads), torch {r['torch']}; matmul peak (GFLOP/s): "
          + ", ".join(f"{k} {v:.0f}" for k, v in r["matmul_peak_gflops"].items())
          + ("" if "bf16" in r["matmul_peak_gflops"] else " (bf16 not measured: no fast bf16 on this device)"))
    print(f"model FLOPs per training token: {r['flops_per_token'] / 1e6:.1f} M")
    for key in [k for k in r if k.startswith("train_")]:
        t = r[key]
        print(f"{key} (bare: {t['precision']['bare']}, lightning: {t['precision']['lightning']}): bare "
              f"{t['bare_tokens_per_s']['median']:.0f} tok/s "
              f"[{t['bare_tokens_per_s']['min']:.0f}-{t['bare_tokens_per_s']['max']:.0f}], lightning "
              f"{t['lightning_tokens_per_s']['median']:.0f} tok/s "
              f"[{t['lightning_tokens_per_s']['min']:.0f}-{t['lightning_tokens_per_s']['max']:.0f}] -> ratio "
              f"{t['lightning_over_bare']:.3f}; {100 * t['bare_fraction_of_matmul_peak']:.1f}% of matmul peak")
    for s, c in r["compile"].items():
        print(f"compile, {s}: eager {c['eager_tokens_per_s']['median']:.0f} tok/s "
              f"[{c['eager_tokens_per_s']['min']:.0f}-{c['eager_tokens_per_s']['max']:.0f}], compiled "
              f"{c['compiled_tokens_per_s']['median']:.0f} tok/s [{c['compiled_tokens_per_s']['min']:.0f}-"
              f"{c['compiled_tokens_per_s']['max']:.0f}] -> {c['compiled_over_eager']:.3f}x; first warm-up "
              f"{c['first_warmup_s']['eager']:.1f} s eager, {c['first_warmup_s']['compiled']:.1f} s compiled")
    if r["schemes"]:
        mults = list(next(iter(r["schemes"].values()))["eval"])
        print(f"\n{'scheme':<15}{'train tok/s':>12}{'spread':>8}{'vs none':>8}"
              + "".join(f"{'eval ' + m + 'x tok/s':>16}{'+MiB':>6}" for m in mults))
        for s, v in r["schemes"].items():
            rel = v["train_relative_to_none"]
            t = v["train_fp32_tokens_per_s"]
            spread = f"±{50 * (t['max'] - t['min']) / t['median']:.0f}%"
            print(f"{s:<15}{t['median']:>12.0f}{spread:>8}"
                  + (f"{rel:>8.2f}" if rel is not None else f"{'':>8}")
                  + "".join(f"{v['eval'][m]['tokens_per_s']:>16.0f}{v['eval'][m]['added_mib']:>6.0f}"
                            if v["eval"][m] else f"{'out of range':>22}" for m in mults))
    if r["long"]:
        L0, (m1, m2) = r["args"]["long_seq_len"], [int(m) for m in r["args"]["long_multipliers"].split(",")]
        print(f"\nlong context (training length {L0}). A dense fp32 heads x T x T tensor at {m2 * L0} tokens: "
              f"{r['dense_fp32_scores_mib_at_longest']:.0f} MiB; one attention chunk: {r['chunk_fp32_mib']:.0f} MiB")
        print(f"{'scheme':<15}{f'{m1 * L0} tok/s':>12}{'+MiB':>7}{f'{m2 * L0} tok/s':>13}{'+MiB':>7}"
              f"{'peak MiB':>10}{f'{m2}x/{m1}x mem':>13}{'vs none MiB':>13}")
        for s, v in r["long"].items():
            a, b = v["eval"][str(m1)], v["eval"][str(m2)]
            if a is None or b is None:
                print(f"{s:<15}{'out of range (learned table)':>62}")
                continue
            over = "" if v["over_none_mib"] is None else f"{v['over_none_mib']:+.0f}"
            print(f"{s:<15}{a['tokens_per_s']:>12.0f}{a['added_mib']:>7.0f}{b['tokens_per_s']:>13.0f}"
                  f"{b['added_mib']:>7.0f}{b['peak_mib']:>10.0f}{v['growth']:>13.2f}{over:>13}")
    print(f"\ndata path: {r['data_windows_per_s']:.0f} windows/s = {r['data_tokens_per_s'] / 1e6:.1f} M tokens/s, "
          f"{r['data_over_training']:.0f}x the fp32 training rate")


if __name__ == "__main__":
    main()
