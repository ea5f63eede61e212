"""Length-generalisation tasks: algorithmic and retrieval tasks over small symbol vocabularies, scored by exact match.

Each task is one class (`data.task._target_`, configs/data/<task>.yaml) with its own vocabulary (PAD, BOS, SEP,
then the task's symbols: never the corpus BPE) and a size parameter (symbols, digits, pairs, hops, filler). An
instance is `[BOS] prompt [SEP] answer` (MQAR interleaves queries and answers) with a mask marking the answer
tokens: training puts its loss on those only, and scoring asks for every one of them (exact match) and reports
the fraction right (per-token accuracy).

Sizes: training draws each instance's size uniformly from [min_size, train_size] (as Kazemnejad et al. 2023,
arXiv:2305.19466, and Zhou et al. 2024, arXiv:2402.09371, sample lengths up to the training maximum); scoring uses
size = multiplier x train_size, so the sequence length grows with the multiplier and nothing else changes.

Instance i is a pure function of (seed, split, i): its generator is numpy's PCG64 seeded by that tuple. Training and
evaluation can never share an instance, whatever the seeds: the space of instances is cut in two by one bit of a
hash (blake2b) of an instance's tokens, training draws (by rejection) only from one half and evaluation and
validation only from the other.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from lenx.errors import ConfigError, OutOfRangeError, check_int
from lenx.scoring import Probe

PAD, BOS, SEP = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<sep>")
SPLITS = {"train": 0, "validation": 1, "eval": 2}  # the seed stream of each split
HALF = {"train": 0, "validation": 1, "eval": 1}  # which half of the instance space a split draws from
TASK_COLUMNS = ["task", "pos", "scaling", "train_size", "size", "multiplier", "mean_tokens", "accuracy", "acc_ci_low",
                "acc_ci_high", "token_accuracy", "instances", "decode", "status", "train_len", "seed", "git_sha",
                "ckpt"]


def half_of(ids: np.ndarray) -> int:
    """Which half of the instance space `ids` (an instance's tokens) lies in: one bit of its blake2b hash."""
    return hashlib.blake2b(np.ascontiguousarray(ids, dtype=np.int64).tobytes(), digest_size=8).digest()[0] & 1


class Task:
    """Base class: a task draws instances of a given size; subclasses define `symbols` and `draw`."""

    name = ""
    sizes = "symbols"  # what the size counts (for messages)

    def __init__(self, *, train_size: int, min_size: int = 1) -> None:
        check_int(train_size, "data.task.train_size")
        check_int(min_size, "data.task.min_size")
        if min_size > train_size:
            raise ConfigError(f"data.task.min_size={min_size} is larger than data.task.train_size={train_size}")
        self.train_size, self.min_size = train_size, min_size

    # vocabulary
    def symbols(self) -> list[str]:
        raise NotImplementedError

    @property
    def vocab(self) -> list[str]:
        return [*SPECIALS, *self.symbols()]

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def id(self, name: str) -> int:
        return self.vocab.index(name)

    # instances
    def draw(self, size: int, rng: np.random.Generator) -> tuple[list[int], list[bool]]:
        """The tokens after BOS and their answer mask."""
        raise NotImplementedError

    def max_len(self, size: int) -> int:
        """The longest instance of this size, in tokens (BOS included)."""
        raise NotImplementedError

    def too_large(self, size: int) -> str | None:
        """Why an instance of this size cannot be drawn (vocabulary exhausted), or None."""
        return None

    def qa(self, prompt: list[int], answer: list[int]) -> tuple[list[int], list[bool]]:
        return [*prompt, SEP, *answer], [False] * (len(prompt) + 1) + [True] * len(answer)

    def instance(self, seed: int, split: str, i: int, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, answer mask) of instance i of `split` (a pure function of the arguments). Training draws its
        size uniformly in [min_size, train_size]; evaluation passes the size."""
        rng = np.random.default_rng((seed, SPLITS[split], i, size or 0))
        if size is None:
            size = int(rng.integers(self.min_size, self.train_size + 1))
        for _ in range(64):
            ids, mask = self.draw(size, rng)
            ids = np.asarray([BOS, *ids], dtype=np.int64)
            if half_of(ids) == HALF[split]:
                return ids, np.asarray([False, *mask])
        if split == "train":  # a size with too few instances to split (e.g. parity of 1 bit): training may see it
            return ids, np.asarray([False, *mask])
        raise ConfigError(f"data.task: size {size} has too few distinct {self.name} instances to hold some out of "
                          "training; use a larger train_size")

    def seq_len(self) -> int:
        """The training length: the longest training instance minus one (the model reads all tokens but the last)."""
        return self.max_len(self.train_size) - 1


def query(context: list[int], q: int, answer: list[int]) -> tuple[list[int], list[bool]]:
    """`context SEP q answer` and its mask: a retrieval question about the context."""
    prompt = [*context, SEP, q]
    return prompt + answer, [False] * len(prompt) + [True] * len(answer)


class Copy(Task):
    """Copy a random string of `size` symbols (Kazemnejad et al. 2023, arXiv:2305.19466)."""

    name = "copy"

    def __init__(self, *, train_size: int, min_size: int = 1, alphabet: int = 16) -> None:
        super().__init__(train_size=train_size, min_size=min_size)
        self.alphabet = check_int(alphabet, "data.task.alphabet", minimum=2)

    def symbols(self):
        return [f"s{k}" for k in range(self.alphabet)]

    def transform(self, xs: list[int]) -> list[int]:
        return xs

    def draw(self, size, rng):
        xs = (rng.integers(0, self.alphabet, size) + len(SPECIALS)).tolist()
        return self.qa(xs, self.transform(xs))

    def max_len(self, size):
        return 2 * size + 2


class Reverse(Copy):
    """Write a random string backwards (arXiv:2305.19466)."""

    name = "reverse"

    def transform(self, xs):
        return xs[::-1]


class Sort(Copy):
    """Sort a random string of symbols (with repeats) by symbol id (arXiv:2305.19466)."""

    name = "sort"

    def transform(self, xs):
        return sorted(xs)


class Parity(Task):
    """The parity of `size` random bits, one answer token (arXiv:2305.19466; Ruoss et al. 2023, arXiv:2305.16843)."""

    name = "parity"
    sizes = "bits"

    def symbols(self):
        return ["0", "1"]

    def draw(self, size, rng):
        bits = rng.integers(0, 2, size)
        return self.qa((bits + self.id("0")).tolist(), [self.id("0") + int(bits.sum() % 2)])

    def max_len(self, size):
        return size + 3


class Addition(Task):
    """a + b for two random `size`-digit numbers. `order: reversed` writes every number least significant digit
    first (Zhou et al. 2024, arXiv:2402.09371; McLeish et al. 2024, arXiv:2405.17399), `plain` as usual."""

    name = "addition"
    sizes = "digits"

    def __init__(self, *, train_size: int, min_size: int = 1, order: str = "reversed") -> None:
        super().__init__(train_size=train_size, min_size=min_size)
        if order not in ("reversed", "plain"):
            raise ConfigError(f"data.task.order must be reversed or plain, got {order!r}")
        self.order = order

    def symbols(self):
        return [*"0123456789", "+"]

    def digits(self, n: int) -> list[int]:
        s = str(n)[::-1] if self.order == "reversed" else str(n)
        return [self.id(c) for c in s]

    def draw(self, size, rng):
        lo = 0 if size == 1 else 10 ** (size - 1)
        # Python ints: numpy's int64 would overflow past 18 digits (16x a training size of 2)
        a, b = (lo + int(rng.integers(0, 2**62)) % (10**size - lo) for _ in range(2))
        return self.qa([*self.digits(a), self.id("+"), *self.digits(b)], self.digits(a + b))

    def max_len(self, size):
        return 1 + 2 * size + 2 + size + 1


class MQAR(Task):
    """Multi-query associative recall (Arora et al. 2023, arXiv:2312.04927): `size` key-value pairs, then every key
    again in a random order, each followed by its value (the answers, interleaved with the queries)."""

    name = "mqar"
    sizes = "pairs"

    def __init__(self, *, train_size: int, min_size: int = 1, keys: int = 128, values: int = 32) -> None:
        super().__init__(train_size=train_size, min_size=min_size)
        self.keys, self.values = check_int(keys, "data.task.keys"), check_int(values, "data.task.values")
        if train_size > keys:
            raise ConfigError(f"data.task.train_size={train_size} pairs needs at least as many keys (keys={keys})")

    def symbols(self):
        return [f"k{k}" for k in range(self.keys)] + [f"v{v}" for v in range(self.values)]

    def too_large(self, size):
        return f"{size} pairs need more than keys={self.keys}" if size > self.keys else None

    def draw(self, size, rng):
        k = (rng.choice(self.keys, size, replace=False) + len(SPECIALS)).tolist()
        v = (rng.integers(0, self.values, size) + len(SPECIALS) + self.keys).tolist()
        ids = [t for kv in zip(k, v) for t in kv] + [SEP]
        mask = [False] * len(ids)
        for q in rng.permutation(size).tolist():
            ids += [k[q], v[q]]
            mask += [False, True]
        return ids, mask

    def max_len(self, size):
        return 4 * size + 2


class VariableTracking(Task):
    """RULER's variable tracking (Hsieh et al. 2024, arXiv:2404.06654), over symbols: `chains` chains of
    assignments `x0 = V`, `x1 = x0`, ..., with `size` hops each, interleaved at random, `filler` random filler
    symbols after each statement; the query `SEP V` asks for every variable of V's chain, in assignment order."""

    name = "variable_tracking"
    sizes = "hops"

    def __init__(self, *, train_size: int, min_size: int = 1, variables: int = 128, values: int = 16,
                 chains: int = 2, filler: int = 2, filler_symbols: int = 8) -> None:
        super().__init__(train_size=train_size, min_size=min_size)
        self.variables, self.values = check_int(variables, "data.task.variables"), check_int(values,
                                                                                                "data.task.values")
        self.chains, self.filler = check_int(chains, "data.task.chains"), check_int(filler, "data.task.filler", minimum=0)
        self.filler_symbols = check_int(filler_symbols, "data.task.filler_symbols")
        if chains > values:
            raise ConfigError(f"data.task.chains={chains} needs as many distinct values (values={values})")
        if self.too_large(train_size):
            raise ConfigError(f"data.task: {self.too_large(train_size)}")

    def symbols(self):
        return (["="] + [f"x{k}" for k in range(self.variables)] + [f"V{v}" for v in range(self.values)]
                + [f"f{k}" for k in range(self.filler_symbols)])

    def too_large(self, size):
        need = self.chains * (size + 1)
        return f"{self.chains} chains of {size} hops need {need} variables (variables={self.variables})" \
            if need > self.variables else None

    def draw(self, size, rng):
        x0, v0, f0, eq = len(SPECIALS) + 1, len(SPECIALS) + 1 + self.variables, \
            len(SPECIALS) + 1 + self.variables + self.values, self.id("=")
        names = (rng.choice(self.variables, self.chains * (size + 1), replace=False) + x0).reshape(self.chains, -1)
        vals = (rng.choice(self.values, self.chains, replace=False) + v0).tolist()
        order = rng.permutation(np.repeat(np.arange(self.chains), size + 1)).tolist()  # a random interleaving
        step, ids = [0] * self.chains, []
        for c in order:
            h = step[c]
            ids += [int(names[c, h]), eq, vals[c] if h == 0 else int(names[c, h - 1])]
            ids += (rng.integers(0, self.filler_symbols, self.filler) + f0).tolist()
            step[c] += 1
        return query(ids, vals[0], names[0].tolist())

    def max_len(self, size):
        return 1 + self.chains * (size + 1) * (3 + self.filler) + 2 + size + 1


class NiahMultikey(Task):
    """RULER's multi-key needle in a haystack (arXiv:2404.06654), over symbols: `needles` needles `N key value`
    (distinct keys, values of `value_len` symbols) at random places in `size` random filler symbols; the query
    `SEP key` names one of them, the answer is its value (the other needles are distractors)."""

    name = "niah_multikey"
    sizes = "filler symbols"

    def __init__(self, *, train_size: int, min_size: int = 1, needles: int = 4, keys: int = 32, values: int = 16,
                 value_len: int = 2, filler_symbols: int = 16) -> None:
        super().__init__(train_size=train_size, min_size=min_size)
        self.needles, self.keys = check_int(needles, "data.task.needles"), check_int(keys, "data.task.keys")
        self.values, self.value_len = check_int(values, "data.task.values"), check_int(value_len, "data.task.value_len")
        self.filler_symbols = check_int(filler_symbols, "data.task.filler_symbols")
        if needles > keys:
            raise ConfigError(f"data.task.needles={needles} needs as many distinct keys (keys={keys})")

    def symbols(self):
        return (["N"] + [f"k{k}" for k in range(self.keys)] + [f"v{v}" for v in range(self.values)]
                + [f"f{k}" for k in range(self.filler_symbols)])

    def draw(self, size, rng):
        k0 = len(SPECIALS) + 1
        v0, f0 = k0 + self.keys, k0 + self.keys + self.values
        keys = (rng.choice(self.keys, self.needles, replace=False) + k0).tolist()
        vals = (rng.integers(0, self.values, (self.needles, self.value_len)) + v0).tolist()
        fill = (rng.integers(0, self.filler_symbols, size) + f0).tolist()
        at = np.sort(rng.integers(0, size + 1, self.needles)).tolist()  # insertion points in the filler
        ids, prev = [], 0
        for a, k, v in zip(at, keys, vals):
            ids += fill[prev:a] + [self.id("N"), k, *v]
            prev = a
        ids += fill[prev:]
        q = int(rng.integers(0, self.needles))
        return query(ids, keys[q], vals[q])

    def max_len(self, size):
        return 1 + size + self.needles * (2 + self.value_len) + 2 + self.value_len


def build_task(cfg: Mapping) -> Task | None:
    """The task of a run config (data.task with a _target_), or None for a corpus (LM) or passkey run."""
    spec = cfg["data"].get("task")
    if not isinstance(spec, Mapping):
        return None
    # A checkpoint's config is data, never code (README, "What lenx trusts"): only a Task class of this module,
    # with plain values, is ever built, so rebuilding a checkpoint's model cannot call anything else.
    target = str(spec.get("_target_", ""))
    cls = globals().get(target.removeprefix("lenx.tasks.")) if target.startswith("lenx.tasks.") else None
    if not (isinstance(cls, type) and issubclass(cls, Task) and cls is not Task):
        raise ConfigError(f"data.task: {target or 'a task without _target_'} is not a lenx.tasks.Task")
    params = {k: v for k, v in spec.items() if k != "_target_"}
    bad = [k for k, v in params.items() if str(k).startswith("_") or not isinstance(v, (int, float, str, bool))]
    if bad:
        raise ConfigError(f"data.task: {bad} must be plain values (no nested nodes, no hydra keys)")
    try:
        return cls(**params)
    except TypeError as e:  # an unknown or missing parameter
        raise ConfigError(f"data.task: {e}") from None


def configure(cfg: dict) -> Task | None:
    """For a task run: set data.vocab_size from the task's vocabulary and seq_len to its longest training instance
    (so a learned table holds exactly the trained positions), and a provenance naming the generator; returns the
    task (None for corpus runs, left unchanged)."""
    task = build_task(cfg)
    if task is not None:
        cfg["data"]["vocab_size"], cfg["seq_len"] = task.vocab_size, task.seq_len()
    return task


def provenance(cfg: dict) -> dict:
    """A task run's data provenance: the task and a hash of its generator settings (no corpus, no tokenizer)."""
    import json

    spec = json.dumps(cfg["data"]["task"], sort_keys=True)
    return {"corpus": f"task:{cfg['data'].get('name', '')}", "corpus_hash": hashlib.sha256(spec.encode()).hexdigest(),
            "tokenizer_hash": "", "n_tokens": 0}


def pad(items: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad instances to the longest: (ids (B, T), answer mask (B, T)). Padding is never attended to by
    earlier tokens (causal) and never a target."""
    T = max(len(ids) for ids, _ in items)
    ids_BT = torch.full((len(items), T), PAD, dtype=torch.long)
    mask_BT = torch.zeros((len(items), T), dtype=torch.bool)
    for b, (ids, mask) in enumerate(items):
        ids_BT[b, :len(ids)], mask_BT[b, :len(mask)] = torch.from_numpy(ids), torch.from_numpy(mask)
    return ids_BT, mask_BT


class TaskItems(torch.utils.data.Dataset):
    """Training (or validation) instances: item i is `task.instance(seed, split, start + i)`."""

    def __init__(self, task: Task, n_items: int, seed: int, start: int = 0, split: str = "train") -> None:
        self.task, self.n_items, self.seed, self.start, self.split = task, n_items, seed, start, split

    def __len__(self) -> int:
        return self.n_items  # as RandomWindows: a resumed epoch ends at max_steps, not at n_items - start

    def __getitem__(self, i: int):
        return self.task.instance(self.seed, self.split, i + self.start)


def masked_loss(logits_BTV: torch.Tensor, ids_BT: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over answer tokens only; logits_BTV predicts ids_BT[:, 1:]."""
    nll_BT = F.cross_entropy(logits_BTV.float().transpose(1, 2), ids_BT[:, 1:], reduction="none")
    m = mask_BT[:, 1:].float()
    return (nll_BT * m).sum() / m.sum().clamp(min=1)


@torch.no_grad()
def predict(model: torch.nn.Module, ids_BT: torch.Tensor, mask_BT: torch.Tensor, decode: str) -> torch.Tensor:
    """The model's token at every answer position (B, T; elsewhere the input). `teacher`: argmax given the true
    prefix, one forward. `greedy`: answer tokens generated left to right, each fed back (non-answer tokens, e.g.
    MQAR's queries, are given). Whole-answer exact match is the same under both (all tokens right given the true
    prefix is what greedy decoding produces); per-token accuracy differs after a first error."""
    if decode == "teacher":
        pred_BT = ids_BT.clone()
        pred_BT[:, 1:] = torch.where(mask_BT[:, 1:], model(ids_BT[:, :-1]).argmax(-1), ids_BT[:, 1:])
        return pred_BT
    x_BT = ids_BT.clone()
    for t in torch.nonzero(mask_BT.any(0)).flatten().tolist():
        nxt_B = model(x_BT[:, :t])[:, -1].argmax(-1)
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
                  decode: str, device, seed: int = 0, skip: frozenset = frozenset()) -> Iterator[dict]:
    """One row per multiplier: exact match (every answer token right) and per-token accuracy on `instances`
    held-out instances of size multiplier x train_size, with a Wilson 95% interval on the exact match."""
    model.eval()
    for m in multipliers:
        if m in skip:
            continue
        size = m * task.train_size
        row = {"task": task.name, "train_size": task.train_size, "size": size, "multiplier": m,
               "instances": instances, "decode": decode}
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
                pred_BT = predict(model, ids_BT.to(device), mask_BT.to(device), decode).cpu()
                ok_BT = (pred_BT == ids_BT) | ~mask_BT
                hits += int(ok_BT.all(1).sum())
                right, total = right + int((ok_BT & mask_BT).sum()), total + int(mask_BT.sum())
        except OutOfRangeError:  # a learned position table shorter than these instances
            yield {**row, "mean_tokens": float(np.mean([len(i) for i, _ in items])), "accuracy": math.nan,
                   "acc_ci_low": math.nan, "acc_ci_high": math.nan, "token_accuracy": math.nan,
                   "status": "out_of_range"}
            continue
        lo, hi = wilson(hits, instances)
        yield {**row, "mean_tokens": float(np.mean([len(i) for i, _ in items])), "accuracy": hits / instances,
               "acc_ci_low": lo, "acc_ci_high": hi, "token_accuracy": right / max(total, 1), "status": "ok"}


class TaskAccuracy(Probe):
    """Exact-match accuracy of a task model at each multiplier x train_size (tasks.csv / .jsonl / .png). run: auto
    scores models trained on a task (data.task with a _target_) only. The 95% interval is Wilson's, over
    instances; the evaluation instances are the same for every scheme and seed (`seed` here, default 0)."""

    columns = {"tasks": TASK_COLUMNS}
    task_probe = True  # runs on task models (train.py skips probes that read a corpus there)

    def __init__(self, *, run: str | bool = "auto", multipliers: list[int], instances: int = 100, batch: int = 50,
                 decode: str = "teacher", seed: int = 0) -> None:
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
        self.when, self.multipliers, self.instances, self.batch = run, list(multipliers), instances, batch
        self.decode, self.seed = decode, seed

    def run(self, model, run) -> Iterator[dict]:
        task = build_task(run.cfg)
        if task is None or self.when is False:
            return
        done = frozenset(r["multiplier"] for r in run.done(self.name) if r.get("decode") == self.decode)
        yield from task_accuracy(model, task, multipliers=self.multipliers, instances=self.instances,
                                 batch=self.batch, decode=self.decode, device=run.device, seed=self.seed, skip=done)

    def report(self, run, new: dict[str, list[dict]]) -> str:
        from lenx.results import read_rows

        on_disk = read_rows(run.run_dir, self.name)
        if on_disk:
            plot_tasks(on_disk, run.run_dir / f"{self.name}.png")
        rows = new.get(self.name, [])
        return "\n".join(["task accuracy (exact match of the whole answer; Wilson 95% interval), by size"] + [
            f"  {r['task']:<18} {r['pos']:<14} size={r['size']:<5} ({r['multiplier']}x, {r['mean_tokens']:.0f} tokens)"
            f"  {r['accuracy']:.3f} [{r['acc_ci_low']:.2f}, {r['acc_ci_high']:.2f}]  per token "
            f"{r['token_accuracy']:.3f}  {r['status']}" for r in rows]) if rows else ""


def plot_tasks(rows: list[dict], path):
    """Exact-match accuracy against the size multiplier (log2 x axis), one line per (task, pos, scaling, decode)."""
    from lenx.results import _figure, _save

    plt, fig, ax = _figure()
    keys = list(dict.fromkeys((r["task"], r["pos"], r["scaling"], r.get("decode", "teacher")) for r in rows))
    for key in keys:
        pts = sorted((r["multiplier"], r["accuracy"]) for r in rows
                     if (r["task"], r["pos"], r["scaling"], r.get("decode", "teacher")) == key)
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=" ".join(k for k in key if k != "none"))
    ax.set_xscale("log", base=2)
    ax.set(xlabel="size / training size", ylabel="exact-match accuracy", ylim=(-0.05, 1.05),
           title="length generalisation on tasks")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(plt, fig, path)
