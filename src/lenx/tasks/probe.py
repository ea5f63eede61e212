"""Scoring tasks: exact match and per-token accuracy at multiplier x train_size, or on a set of sizes such as every
size in (N, 2N] (the TaskAccuracy probe), under a paper's task protocol where one is named."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping

import numpy as np
import torch

from lenx import positions as positions_lib
from lenx.errors import ConfigError, OutOfRangeError, check_int
from lenx.positions import Positions
from lenx.results import _figure, _save, extension_label, scheme_label
from lenx.scoring import Probe
from lenx.tasks.base import Task, build_task, pad

TASK_COLUMNS = ["task", "pos", "scaling", "extension", "positions", "train_size", "size", "multiplier", "size_set",
                "protocol", "mean_tokens",
                "accuracy", "acc_ci_low", "acc_ci_high", "token_accuracy", "instances", "decode", "eval_positions",
                "status", "train_len", "seed", "git_sha", "ckpt"]


# The papers' task protocols (configs/protocol/): what each scores, and what a run needs to be scored that way.
# kazemnejad (arXiv:2305.19466, McGill-NLP/length-generalization): a greedy generation (generation_num_beams: 1,
#   configs/trainer/base.jsonnet) is right only if it equals the target up to the end token (seq2seq_runtime.py:
#   `is_correct = prediction == target`; targets end in EOS, s2s_dl_factory.py), on every size in (N, 2N]
#   (make_*_dataset.py: test_min = train_max + 1, test_max = 2 train_max) with the same count per size, so the
#   paper's test accuracy is the mean of exact match over those sizes.
# ruoss (arXiv:2305.16843, google-deepmind/randomized_positional_encodings): per-token accuracy per test length
#   (experiments/example.py: accuracy_fn, sum(mask * correct) / sum(mask)), averaged over the test lengths
#   (range_evaluation.py scores each length; example.py: score = np.mean(accuracies[N + 1:])).
PROTOCOLS = {"kazemnejad": "accuracy", "ruoss": "token_accuracy"}  # protocol -> the metric its paper reports


MAX_SIZES = 10_000  # sizes in one `lo..hi` set (each is scored on `instances` instances)


def resolve_sizes(spec, train_size: int | None) -> list[int]:
    """The sizes of `eval.probes.tasks.sizes`, sorted: a list of sizes, or `lo..hi` (every size from lo to hi, both
    included), where a bound is an integer or a multiple of the training size N with an offset: `N+1..2N` is
    Kazemnejad et al.'s (N, 2N], `41..500` a fixed range. train_size None: the form alone is checked ([])."""
    if isinstance(spec, (list, tuple)):
        sizes = sorted({check_int(s, "eval.probes.tasks.sizes") for s in spec})
    else:
        lo, sep, hi = str(spec).partition("..")
        if not sep:
            raise ConfigError(f"eval.probes.tasks.sizes must be a list of sizes or lo..hi (e.g. N+1..2N), "
                              f"got {spec!r}")
        lo, hi = _bound(lo, train_size or 1, spec), _bound(hi, train_size or 1, spec)
        if train_size is None:
            return []
        if hi - lo + 1 > MAX_SIZES:
            raise ConfigError(f"eval.probes.tasks.sizes={spec!r} is {hi - lo + 1} sizes (N = {train_size}); at most "
                              f"{MAX_SIZES}: a narrower range, or a list of sizes")
        sizes = list(range(lo, hi + 1))
    if not sizes or sizes[0] < 1:
        raise ConfigError(f"eval.probes.tasks.sizes={spec!r} gives no positive sizes (N = {train_size})")
    return sizes


def _bound(text: str, n: int, spec) -> int:
    m = re.fullmatch(r"\s*(?:(\d+)|(\d*)\s*N\s*(?:([+-])\s*(\d+))?)\s*", text)
    if m is None:
        raise ConfigError(f"eval.probes.tasks.sizes={spec!r}: a bound is an integer, or kN+j / kN-j "
                          "(N the training size)")
    if m[1]:
        return int(m[1])
    return int(m[2] or 1) * n + (int(m[4]) if m[3] == "+" else -int(m[4]) if m[3] else 0)


def size_set_label(sizes: list[int]) -> str:
    """`lo..hi` for a run of consecutive sizes, else the sizes joined by commas (aggregate.py reads both back)."""
    if sizes == list(range(sizes[0], sizes[0] + len(sizes))):
        return f"{sizes[0]}..{sizes[-1]}"
    return ",".join(map(str, sizes))


def sizes_of_label(label: str) -> list[int]:
    lo, sep, hi = label.partition("..")
    return list(range(int(lo), int(hi) + 1)) if sep else [int(x) for x in label.split(",")]


@torch.no_grad()
def predict(model: torch.nn.Module, ids_BT: torch.Tensor, mask_BT: torch.Tensor, decode: str,
            pos_T: torch.Tensor | None = None, labels_BT: torch.Tensor | None = None) -> torch.Tensor:
    """The model's token at every answer position (B, T; elsewhere the target: the input, or labels_BT where the
    batch carries labels). `teacher`: argmax given the true prefix, one forward. `greedy`: answer tokens generated
    left to right, each fed back (non-answer tokens, e.g. kv_recall's queries, are given). Whole-answer exact match
    is the same under both (all tokens right given the true prefix is what greedy decoding produces); per-token
    accuracy differs after a first error. Answers that are labels only (labels_BT given, e.g. MQAR) are never in
    the input (Zoology's input holds noise there whatever the model says, arXiv:2312.04927), so nothing is fed
    back and greedy decoding is teacher decoding: one forward. pos_T: the positions of the T - 1 input tokens
    (None: 0..T-2)."""
    def run(x_BT: torch.Tensor) -> torch.Tensor:
        return model(x_BT) if pos_T is None else model(x_BT, pos_T[:x_BT.shape[1]])

    if decode == "teacher" or labels_BT is not None:
        target_BT = ids_BT if labels_BT is None else labels_BT
        pred_BT = target_BT.clone()
        pred_BT[:, 1:] = torch.where(mask_BT[:, 1:], run(ids_BT[:, :-1]).argmax(-1), target_BT[:, 1:])
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
                  positions: Positions | None = None, sizes: list[int] | None = None,
                  protocol: str = "") -> Iterator[dict]:
    """One row per multiplier, then one per size of `sizes`: exact match (every answer token right; with an end
    token, the answer must also stop there) and per-token accuracy on `instances` held-out instances of size
    multiplier x train_size (or that size), with a Wilson 95% interval on the exact match. Rows of `sizes` carry
    `size_set` (e.g. `21..40`), which aggregate.py averages per run before it takes statistics over seeds.
    `skip`: (size_set, size) pairs already scored. `positions`: a position mode (lenx.positions) whose draws the
    model reads instead of 0..T-1, one draw per batch of instances from (seed, multiplier or size, batch); None or
    contiguous: 0..T-1. `protocol`: a label for the rows (PROTOCOLS)."""
    model.eval()
    mode = positions if positions is not None and positions.name != "contiguous" else None
    label = size_set_label(sizes) if sizes else ""
    todo = [(m, m * task.train_size, "") for m in multipliers] + [(s, s, label) for s in sizes or []]
    for m, size, size_set in todo:
        if (size_set, size) in skip:
            continue
        row = {"task": task.name, "train_size": task.train_size, "size": size,
               "multiplier": size / task.train_size if size_set else m, "size_set": size_set, "protocol": protocol,
               "instances": instances, "decode": decode, "eval_positions": mode.name if mode else "contiguous"}
        why = task.problem(size)
        if why:
            yield {**row, "mean_tokens": math.nan, "accuracy": math.nan, "acc_ci_low": math.nan,
                   "acc_ci_high": math.nan, "token_accuracy": math.nan, "status": "too_large", "error": why}
            continue
        items = [task.instance(seed, "eval", i, size) for i in range(instances)]
        hits, right, total = 0, 0, 0
        try:
            for b in range(0, instances, batch):
                ids_BT, mask_BT, *labels = pad(items[b:b + batch])  # labels: [labels_BT] for label-only answers
                target_BT = labels[0] if labels else ids_BT
                pos_T = None if mode is None else mode.for_eval(ids_BT.shape[1] - 1, seed, m, b).to(device)
                pred_BT = predict(model, ids_BT.to(device), mask_BT.to(device), decode, pos_T,
                                  *(y.to(device) for y in labels)).cpu()
                ok_BT = (pred_BT == target_BT) | ~mask_BT
                hits += int(ok_BT.all(1).sum())
                right, total = right + int((ok_BT & mask_BT).sum()), total + int(mask_BT.sum())
        except OutOfRangeError as e:  # a learned position table (or the position mode) shorter than these
            yield {**row, "mean_tokens": float(np.mean([len(i) for i, *_ in items])), "accuracy": math.nan,
                   "acc_ci_low": math.nan, "acc_ci_high": math.nan, "token_accuracy": math.nan,
                   "status": "out_of_range", "error": str(e)}
            continue
        lo, hi = wilson(hits, instances)
        yield {**row, "mean_tokens": float(np.mean([len(i) for i, *_ in items])), "accuracy": hits / instances,
               "acc_ci_low": lo, "acc_ci_high": hi, "token_accuracy": right / max(total, 1), "status": "ok"}


class TaskAccuracy(Probe):
    """Exact-match accuracy of a task model at each multiplier x train_size (tasks.csv / .jsonl / .png). run: auto
    scores models trained on a task (data.task with a _target_) only. The 95% interval is Wilson's, over
    instances; the evaluation instances are the same for every scheme and seed (`seed` here, default 0).
    positions: contiguous (0..T-1, the default) or train: the run's own train-time position mode, drawn afresh
    per batch of instances, as Ruoss et al.'s released code also samples random positions at test time
    (`eval_positions` column; a run's rows for both are kept apart).
    sizes: null, or a set of sizes scored besides the multipliers (resolve_sizes: a list or `lo..hi`, e.g.
    `N+1..2N`). protocol: null, or a paper's task protocol (PROTOCOLS, configs/protocol/), which the probe holds
    the run to: kazemnejad needs greedy decoding, a set of sizes and an end token (data.task.eos: true); ruoss a
    set of sizes.
    task_options: null, or generator options of the run's task to score it under instead of its training ones (a
    test distribution: flip_flop's p_ignore, selective_copy's blank_ratio), e.g. {p_ignore: 0.98}; the task's
    vocabulary must stay the same, and its rows are named with them (flip_flop[p_ignore=0.98])."""

    columns = {"tasks": TASK_COLUMNS}
    FIXED = ("_target_", "train_size", "min_size", "eos")  # what task_options may not change
    task_probe = True  # runs on task models (train.py skips probes that read a corpus there)

    def __init__(self, *, run: str | bool = "auto", multipliers: list[int], instances: int = 100, batch: int = 50,
                 decode: str = "teacher", seed: int = 0, positions: str = "contiguous",
                 sizes: str | list[int] | None = None, protocol: str | None = None,
                 task_options: dict | None = None) -> None:
        if run not in ("auto", True, False):
            raise ConfigError(f"run must be auto, true or false, got {run!r}")
        if not multipliers and sizes is None:
            raise ConfigError("multipliers must be a non-empty list of positive integers (or sizes given)")
        if protocol is not None and protocol not in PROTOCOLS:
            raise ConfigError(f"protocol must be null or one of {sorted(PROTOCOLS)}, got {protocol!r}")
        # configs/protocol/<p>.yaml leaves `sizes` (???) to the task's own preset, configs/protocol/task/<p>_<data>.yaml
        if protocol is not None and sizes in (None, "???"):
            raise ConfigError(f"protocol={protocol} scores a set of test sizes and eval.probes.tasks.sizes is not "
                              "set: configs/protocol/task/ has presets for copy, reverse, sort and parity only")
        if protocol == "kazemnejad" and decode != "greedy":
            raise ConfigError("protocol=kazemnejad scores a greedy generation (decode: greedy), got "
                              f"decode={decode!r}")
        if sizes is not None:
            resolve_sizes(sizes, None)  # the form is checked now; the sizes once the task's N is known
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
        self.sizes, self.protocol = sizes, protocol
        if task_options is not None and (not isinstance(task_options, Mapping) or any(
                not isinstance(k, str) or k in self.FIXED or not isinstance(v, (int, float, str, bool))
                for k, v in task_options.items())):
            raise ConfigError(f"task_options must be null or a mapping of the task's generator options to plain "
                              f"values (not {', '.join(self.FIXED)}), got {task_options!r}")
        self.task_options = dict(task_options or {})

    def scored_task(self, cfg: dict) -> Task | None:
        """The run's task, under task_options where given (named with them; its vocabulary unchanged)."""
        task = build_task(cfg)
        if task is None or not self.task_options:
            return task
        spec = {**cfg["data"]["task"], **self.task_options}
        other = build_task({**cfg, "data": {**cfg["data"], "task": spec}})
        if other.vocab != task.vocab:
            raise ConfigError(f"task_options={self.task_options} change the {task.name} task's vocabulary; only "
                              "options that keep it can score a trained model")
        other.name = f"{task.name}[{','.join(f'{k}={v}' for k, v in sorted(self.task_options.items()))}]"
        return other

    def check_task(self, task) -> list[int] | None:
        """What must hold of the run's task (checked before training, and again before scoring): the sizes
        resolve, and a protocol's needs; returns the sizes."""
        if self.protocol == "kazemnejad" and not task.eos:
            raise ConfigError("protocol=kazemnejad counts an answer right only if the generation stops with it: the "
                              "task needs an end token (data.task.eos: true, set by configs/protocol/kazemnejad.yaml)")
        return resolve_sizes(self.sizes, task.train_size) if self.sizes is not None else None

    def run(self, model, run) -> Iterator[dict]:
        task = self.scored_task(run.cfg)
        if task is None or self.when is False:
            return
        sizes = self.check_task(task)
        mode = positions_lib.build(run.cfg) if self.positions == "train" else None
        label = mode.name if mode is not None else "contiguous"
        done = frozenset((r.get("size_set") or "", r["size"]) for r in run.done(self.name)
                         if r.get("decode") == self.decode and r.get("eval_positions", "contiguous") == label
                         and r.get("task", task.name) == task.name
                         and (r.get("protocol") or "") == (self.protocol or ""))
        yield from task_accuracy(model, task, multipliers=self.multipliers, instances=self.instances,
                                 batch=self.batch, decode=self.decode, device=run.device, seed=self.seed, skip=done,
                                 positions=mode, sizes=sizes, protocol=self.protocol or "")

    def report(self, run, new: dict[str, list[dict]]) -> str:
        rows = new.get(self.name, [])
        shown = {self.name: [r for r in rows if not r.get("size_set")] + set_means(rows)}  # a set: one line
        return self.lines_report(
            run, shown, "task accuracy (exact match of the whole answer; Wilson 95% interval), by size", lambda r: (
                f"  {r['task']:<18} {r['pos']:<14} size={r['size']:<5} ({r['multiplier']:g}x, "
                f"{r['mean_tokens']:.0f} tokens)  {r['accuracy']:.3f} [{r['acc_ci_low']:.2f}, {r['acc_ci_high']:.2f}]"
                f"  per token {r['token_accuracy']:.3f}  {r['status']}" if not r.get("size_set") else
                f"  {r['task']:<18} {r['pos']:<14} sizes {r['size_set']} ({r['protocol'] or 'no protocol'}): "
                f"mean over sizes {r['accuracy']:.3f}  per token {r['token_accuracy']:.3f}  {r['status']}"), plot_tasks)


def set_means(rows: list[dict]) -> list[dict]:
    """One row per size set of `rows`: exact match and per-token accuracy averaged over its sizes (NaN unless
    every size is ok), as the papers' protocols score a run (aggregate.py does the same per run)."""
    out = []
    for label in dict.fromkeys(r["size_set"] for r in rows if r.get("size_set")):
        rs = [r for r in rows if r.get("size_set") == label]
        ok = all(r["status"] == "ok" for r in rs)
        out.append({**rs[0], "status": "ok" if ok else "not every size ok", **{
            k: float(np.mean([r[k] for r in rs])) if ok else math.nan for k in ("accuracy", "token_accuracy")}})
    return out


def plot_tasks(rows: list[dict], path):
    """Exact-match accuracy against the size multiplier (log2 x axis), one line per (task, pos, scaling, decode)."""
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
