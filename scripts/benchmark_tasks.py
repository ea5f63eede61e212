"""The task row of scripts/benchmark.py: one training step of a task model through Lightning (as train.py runs it)
against the LM of the same shape, split into data generation, the bare model step and the rest."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from benchlib import CONFIGS, StepTimer, config, median_spread, sync
from omegaconf import OmegaConf

from lenx.hardware import resolve_precision
from lenx.lit import LenxModule, RandomWindows, build_model
from lenx.tasks import TaskItems, build_task, masked_loss, pad


class BatchTokens(L.Callback):
    """Counts the positions the model reads in the timed steps (padding included, as train/tokens_per_s does)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.tokens = warmup, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx >= self.warmup:
            ids_BT = batch[0] if isinstance(batch, (tuple, list)) else batch
            self.tokens += ids_BT[:, 1:].numel()


def lightning_run(cfg: dict, dataset, collate, warmup: int, steps: int, precision: str, device, log_dir) -> dict:
    """A real LenxModule (its optimizer, schedule, logging, per-step seeding) through a Trainer fed by a DataLoader
    as WindowData builds it; the CSV logger every 10 steps as train.py's default. Steps/s and tokens/s after
    `warmup` steps."""
    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    timer, count = StepTimer(warmup), BatchTokens(warmup)
    trainer = L.Trainer(max_steps=warmup + steps, logger=CSVLogger(str(log_dir)), log_every_n_steps=10,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        gradient_clip_val=1.0, callbacks=[timer, count], precision=precision,
                        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, num_sanity_val_steps=0,
                        limit_val_batches=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg["batch_size"], shuffle=False, num_workers=0,
                                         collate_fn=collate)
    trainer.fit(LenxModule(cfg), train_dataloaders=loader)
    dt = timer.t1 - timer.t0
    return {"step_ms": 1e3 * dt / steps, "tokens_per_s": count.tokens / dt}


def bare_task_steps(cfg: dict, batches: list, warmup: int, autocast: bool, device) -> float:
    """ms per step of the bare loop (model, answer-only loss, backward, clipping, AdamW) on pre-built task batches."""
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for i, batch in enumerate(batches):  # (ids, answer mask[, labels]), as pad builds it
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        batch = [x.to(device) for x in batch]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = masked_loss(model(batch[0][:, :-1]), *batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return 1e3 * (time.perf_counter() - t0) / (len(batches) - warmup)


def task_row(args, device, bf16: bool, out_dir: Path) -> dict:
    """The task model (configs/data/<task>.yaml, --task-shape) against the LM of the same shape, through Lightning,
    and where a task step's time goes: data generation, the bare model step, the rest (Lightning and logging)."""
    data = OmegaConf.to_container(OmegaConf.load(CONFIGS / "data" / f"{args.task}.yaml"))
    task = build_task({"data": data})
    d, n_layers, n_heads = (int(x) for x in args.task_shape.split(","))
    lm = config("none", task.seq_len(), args.task_batch, args.task_warmup + args.task_steps)
    lm["model"].update(d_model=d, n_layers=n_layers, n_heads=n_heads)
    tk = {**lm, "data": {**data, "vocab_size": task.vocab_size}}
    n = (args.task_warmup + args.task_steps) * args.task_batch
    tokens = np.random.default_rng(0).integers(0, lm["data"]["vocab_size"], 200_000).astype(np.uint16)
    gen = []
    for r in range(args.task_repeats):  # fresh items each time (the generator is what is timed)
        t0 = time.perf_counter()
        items = TaskItems(task, n, seed=0, start=r * n)
        batches = [pad([items[b * args.task_batch + i] for i in range(args.task_batch)])
                   for b in range(n // args.task_batch)]
        gen.append(1e3 * (time.perf_counter() - t0) / len(batches))
    flops = {k: 6 * sum(p.numel() for p in build_model(c).parameters()) * args.task_batch * task.seq_len()
             for k, c in (("task", tk), ("lm", lm))}
    precisions = ["32-true"] + (["bf16-mixed"] if bf16 else [])
    res = {f"{k}_{p}": [] for k in ("task", "lm", "bare") for p in precisions}
    for r in range(args.task_repeats):  # interleaved, so drift hits all alike
        for p in precisions:
            res[f"task_{p}"].append(lightning_run(tk, TaskItems(task, n, seed=0), pad, args.task_warmup,
                                                  args.task_steps, p, device, out_dir / "task_logs"))
            res[f"lm_{p}"].append(lightning_run(lm, RandomWindows(tokens, lm["seq_len"], n, seed=0), None,
                                                args.task_warmup, args.task_steps, p, device, out_dir / "task_logs"))
            res[f"bare_{p}"].append(bare_task_steps(tk, batches, args.task_warmup, p == "bf16-mixed", device))
    row = {"task": args.task, "task_config": data["task"], "shape": {"d_model": d, "n_layers": n_layers,
           "n_heads": n_heads}, "batch": args.task_batch, "seq_len": task.seq_len(),
           "vocab": {"task": task.vocab_size, "lm": lm["data"]["vocab_size"]}, "flops_per_step": flops,
           "auto_precision": {k: resolve_precision("auto", "auto", f) for k, f in flops.items()},
           "data_generation_ms_per_step": median_spread(gen)}
    for p in precisions:
        t, m = res[f"task_{p}"], res[f"lm_{p}"]
        step = statistics.median(x["step_ms"] for x in t)
        bare = statistics.median(res[f"bare_{p}"])
        row[p] = {"task_tokens_per_s": median_spread([x["tokens_per_s"] for x in t]),
                  "lm_tokens_per_s": median_spread([x["tokens_per_s"] for x in m]),
                  "task_over_lm": statistics.median(x["tokens_per_s"] for x in t)
                  / statistics.median(x["tokens_per_s"] for x in m),
                  "task_step_ms": median_spread([x["step_ms"] for x in t]),
                  "bare_task_step_ms": median_spread(res[f"bare_{p}"]),
                  "share_data_generation": statistics.median(gen) / step, "share_model": bare / step,
                  "share_rest": max(0.0, 1 - (statistics.median(gen) + bare) / step)}
    return row


def print_task(t: dict) -> None:
    print(f"\ntask row: {t['task']} {t['task_config']}, d_model {t['shape']['d_model']}, {t['shape']['n_layers']} "
          f"layers, batch {t['batch']}, length {t['seq_len']}, vocabulary {t['vocab']['task']} (LM {t['vocab']['lm']});"
          f" trainer.precision=auto picks {t['auto_precision']['task']} for the task model, "
          f"{t['auto_precision']['lm']} for the LM")
    g = t["data_generation_ms_per_step"]
    print(f"data generation: {g['median']:.2f} ms per batch [{g['min']:.2f}-{g['max']:.2f}]")
    for p in ("32-true", "bf16-mixed"):
        if p not in t:
            continue
        r = t[p]
        print(f"{p:>10}: task {r['task_tokens_per_s']['median']:.0f} tok/s, LM same shape "
              f"{r['lm_tokens_per_s']['median']:.0f} tok/s -> task/LM {r['task_over_lm']:.2f}; task step "
              f"{r['task_step_ms']['median']:.1f} ms = data {100 * r['share_data_generation']:.0f}% + model "
              f"(bare loop {r['bare_task_step_ms']['median']:.1f} ms) {100 * r['share_model']:.0f}% + Lightning and "
              f"logging {100 * r['share_rest']:.0f}%")
