"""Scoring tasks: exact match and per-token accuracy at multiplier x train_size (the TaskAccuracy probe)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from lenx import positions as positions_lib
from lenx.errors import ConfigError, OutOfRangeError, check_int
from lenx.positions import Positions
from lenx.results import extension_label, scheme_label
from lenx.scoring import Probe
from lenx.tasks.base import Task, build_task, pad

TASK_COLUMNS = ["task", "pos", "scaling", "extension", "positions", "train_size", "size", "multiplier", "mean_tokens",
                "accuracy", "acc_ci_low", "acc_ci_high", "token_accuracy", "instances", "decode", "eval_positions",
                "status", "train_len", "seed", "git_sha", "ckpt"]


@torch.no_grad()
def predict(model: torch.nn.Module, ids_BT: torch.Tensor, mask_BT: torch.Tensor, decode: str,
            pos_T: torch.Tensor | None = None) -> torch.Tensor:
    """The model's token at every answer position (B, T; elsewhere the input). `teacher`: argmax given the true
    prefix, one forward. `greedy`: answer tokens generated left to right, each fed back (non-answer tokens, e.g.
    MQAR's queries, are given). Whole-answer exact match is the same under both (all tokens right given the true
    prefix is what greedy decoding produces); per-token accuracy differs after a first error. pos_T: the positions
    of the T - 1 input tokens (None: 0..T-2)."""
    def run(x_BT: torch.Tensor) -> torch.Tensor:
        return model(x_BT) if pos_T is None else model(x_BT, pos_T[:x_BT.shape[1]])

    if decode == "teacher":
        pred_BT = ids_BT.clone()
        pred_BT[:, 1:] = torch.where(mask_BT[:, 1:], run(ids_BT[:, :-1]).argmax(-1), ids_BT[:, 1:])
        return pred_BT
    x_BT = ids_BT.clone()
    for t in torch.nonzero(mask_BT.any(0)).flatten().tolist():
        nxt_B = run(x_BT[:, :t])[:, -1].argmax(-1)
        x_BT[:, t] = torch.where(mask_BT[:, t], nxt_B, x_BT[:, t])
    return x_BT


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score 95% interval of a proportion k/n (Wilson 1927)."""
    if n == 0:
        return math.nan, math.nan
    p = k / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (
        1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@torch.no_grad()
def task_accuracy(model: torch.nn.Module, task: Task, *, multipliers: list[int], instances: int, batch: int,
                  decode: str, device, seed: int = 0, skip: frozenset = frozenset(),
                  positions: Positions | None = None) -> Iterator[dict]:
    """One row per multiplier: exact match (every answer token right) and per-token accuracy on `instances`
    held-out instances of size multiplier x train_size, with a Wilson 95% interval on the exact match.
    `positions`: a position mode (lenx.positions) whose draws the model reads instead of 0..T-1, one draw per
    batch of instances from (seed, multiplier, batch); None or contiguous: 0..T-1."""
    model.eval()
    mode = positions if positions is not None and positions.name != "contiguous" else None
    for m in multipliers:
        if m in skip:
            continue
        size = m * task.train_size
        row = {"task": task.name, "train_size": task.train_size, "size": size, "multiplier": m,
               "instances": instances, "decode": decode, "eval_positions": mode.name if mode else "contiguous"}
        why = task.too_large(size)
        if why:
            yield {**row, "mean_tokens": math.nan, "accuracy": math.nan, "acc_ci_low": math.nan,
                   "acc_ci_high": math.nan, "token_accuracy": math.nan, "status": "too_large", "error": why}
            continue
        items = [task.instance(seed, "eval", i, size) for i in range(instances)]
        hits, right, total = 0, 0, 0
        try:
            for b in range(0, instances, batch):
                ids_BT, mask_BT = pad(items[b:b + batch])
                pos_T = None if mode is None else mode.for_eval(ids_BT.shape[1] - 1, seed, m, b).to(device)
                pred_BT = predict(model, ids_BT.to(device), mask_BT.to(device), decode, pos_T).cpu()
                ok_BT = (pred_BT == ids_BT) | ~mask_BT
                hits += int(ok_BT.all(1).sum())
                right, total = right + int((ok_BT & mask_BT).sum()), total + int(mask_BT.sum())
        except OutOfRangeError as e:  # a learned position table (or the position mode) shorter than these
            yield {**row, "mean_tokens": float(np.mean([len(i) for i, _ in items])), "accuracy": math.nan,
                   "acc_ci_low": math.nan, "acc_ci_high": math.nan, "token_accuracy": math.nan,
                   "status": "out_of_range", "error": str(e)}
            continue
        lo, hi = wilson(hits, instances)
        yield {**row, "mean_tokens": float(np.mean([len(i) for i, _ in items])), "accuracy": hits / instances,
               "acc_ci_low": lo, "acc_ci_high": hi, "token_accuracy": right / max(total, 1), "status": "ok"}


class TaskAccuracy(Probe):
    """Exact-match accuracy of a task model at each multiplier x train_size (tasks.csv / .jsonl / .png). run: auto
    scores models trained on a task (data.task with a _target_) only. The 95% interval is Wilson's, over
    instances; the evaluation instances are the same for every scheme and seed (`seed` here, default 0).
    positions: contiguous (0..T-1, the default) or train: the run's own train-time position mode, drawn afresh
    per batch of instances, as Ruoss et al.'s released code also samples random positions at test time
    (`eval_positions` column; a run's rows for both are kept apart)."""

    columns = {"tasks": TASK_COLUMNS}
    task_probe = True  # runs on task models (train.py skips probes that read a corpus there)

    def __init__(self, *, run: str | bool = "auto", multipliers: list[int], instances: int = 100, batch: int = 50,
                 decode: str = "teacher", seed: int = 0, positions: str = "contiguous") -> None:
        if run not in ("auto", True, False):
            raise ConfigError(f"run must be auto, true or false, got {run!r}")
        if not multipliers:
            raise ConfigError("multipliers must be a non-empty list of positive integers")
        for m in multipliers:
            check_int(m, "multipliers")
        check_int(instances, "instances")
        check_int(batch, "batch")
        check_int(seed, "seed", minimum=0)
        if decode not in ("teacher", "greedy"):
            raise ConfigError(f"decode must be teacher or greedy, got {decode!r}")
        if positions not in ("contiguous", "train"):
            raise ConfigError(f"positions must be contiguous or train, got {positions!r}")
        self.when, self.multipliers, self.instances, self.batch = run, list(multipliers), instances, batch
        self.decode, self.seed, self.positions = decode, seed, positions

    def run(self, model, run) -> Iterator[dict]:
        task = build_task(run.cfg)
        if task is None or self.when is False:
            return
        mode = positions_lib.build(run.cfg) if self.positions == "train" else None
        label = mode.name if mode is not None else "contiguous"
        done = frozenset(r["multiplier"] for r in run.done(self.name)
                         if r.get("decode") == self.decode and r.get("eval_positions", "contiguous") == label)
        yield from task_accuracy(model, task, multipliers=self.multipliers, instances=self.instances,
                                 batch=self.batch, decode=self.decode, device=run.device, seed=self.seed, skip=done,
                                 positions=mode)

    def report(self, run, new: dict[str, list[dict]]) -> str:
        return self.lines_report(
            run, new, "task accuracy (exact match of the whole answer; Wilson 95% interval), by size", lambda r: (
                f"  {r['task']:<18} {r['pos']:<14} size={r['size']:<5} ({r['multiplier']}x, "
                f"{r['mean_tokens']:.0f} tokens)  {r['accuracy']:.3f} [{r['acc_ci_low']:.2f}, {r['acc_ci_high']:.2f}]"
                f"  per token {r['token_accuracy']:.3f}  {r['status']}"), plot_tasks)


def plot_tasks(rows: list[dict], path):
    """Exact-match accuracy against the size multiplier (log2 x axis), one line per (task, pos, scaling, decode)."""
    from lenx.results import _figure, _save

    plt, fig, ax = _figure()
    keys = list(dict.fromkeys((r["task"], scheme_label(r), extension_label(r), r.get("decode", "teacher")) for r in rows))
    for key in keys:
        pts = sorted((r["multiplier"], r["accuracy"]) for r in rows
                     if (r["task"], scheme_label(r), extension_label(r), r.get("decode", "teacher")) == key)
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=" ".join([*key[:2]] + [k for k in key[2:] if k not in ("none", "teacher")]))
    ax.set_xscale("log", base=2)
    ax.set(xlabel="size / training size", ylabel="exact-match accuracy", ylim=(-0.05, 1.05),
           title="length generalisation on tasks")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(plt, fig, path)
