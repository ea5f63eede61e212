"""The task interface: a Task draws instances (token ids + answer mask, and the targets where answers are labels
only) of a size; build_task reads data.task; the training dataset, padding and the answer-only loss."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from lenx.errors import ConfigError, check_int

PAD, BOS, SEP = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<sep>")
SPLITS = {"train": 0, "validation": 1, "eval": 2}  # the seed stream of each split
HALF = {"train": 0, "validation": 1, "eval": 1}  # which half of the instance space a split draws from
EOS = "<eos>"  # data.task.eos: true appends it after the task's symbols (the other ids, and old runs, unchanged)




def half_of(ids: np.ndarray) -> int:
    """Which half of the instance space `ids` (an instance's tokens) lies in: one bit of its blake2b hash."""
    return hashlib.blake2b(np.ascontiguousarray(ids, dtype=np.int64).tobytes(), digest_size=8).digest()[0] & 1


MAX_INSTANCE_TOKENS = 1 << 20  # an instance's tokens: a bound far past what attention over it can hold


class Task:
    """Base class: a task draws instances of a given size; subclasses define `symbols` and `draw`. `eos` (set by
    build_task from data.task.eos, default false): every instance ends with an end token that the model is
    trained to emit and scored on, so a generated answer must stop where the true one ends (Kazemnejad et al.
    2023, arXiv:2305.19466: McGill-NLP/length-generalization appends the tokenizer's EOS to every target,
    src/data/s2s_dl_factory.py, and counts a prediction right only if the generation up to EOS equals it)."""

    name = ""
    sizes = "symbols"  # what the size counts (for messages)
    eos = False
    # A curriculum over sizes (set by build_task from data.task.curriculum, default 0: none): over the first
    # `curriculum` fraction of training the largest size drawn grows from min_size to train_size in equal stages,
    # sizes below it drawn as the task draws them (Zaremba & Sutskever 2014, arXiv:1410.4615, the "naive"
    # curriculum: each stage's instances are drawn from every size up to its level); after it, the full range.
    curriculum = 0.0
    # lenx's tasks by class name, the `_target_` lenx.tasks.<name> that build_task accepts: the subclasses defined
    # in lenx.tasks (all imported by the package's __init__, which runs before this module can be used)
    registry: ClassVar[dict[str, type[Task]]] = {}

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        if cls.__module__.startswith("lenx.tasks."):
            Task.registry[cls.__name__] = cls

    def __init__(self, *, train_size: int, min_size: int = 1) -> None:
        check_int(train_size, "data.task.train_size")
        check_int(min_size, "data.task.min_size")
        if min_size > train_size:
            raise ConfigError(f"data.task.min_size={min_size} is larger than data.task.train_size={train_size}")
        self.train_size, self.min_size = train_size, min_size

    # vocabulary
    def symbols(self) -> list[str]:
        raise NotImplementedError

    @functools.cached_property
    def vocab(self) -> list[str]:
        # cached: a task's settings are fixed at construction, and generators look symbols up per token (rebuilding
        # the list each time was half of a training batch's generation time)
        return [*SPECIALS, *self.symbols(), *([EOS] if self.eos else [])]

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def id(self, name: str) -> int:
        return self._index[name]

    @property
    def eos_id(self) -> int | None:
        return self.id(EOS) if self.eos else None

    # instances
    def draw(self, size: int, rng: np.random.Generator) -> (tuple[list[int], list[bool]]
                                                            | tuple[list[int], list[bool], list[int]]):
        """The tokens after BOS and their answer mask: an answer is the token that stands at its position. A task
        whose answers are labels only returns a third list, the labels (the target of each position: the tokens,
        but at the answers): there the input holds something else (MQAR: Zoology's noise, arXiv:2312.04927), the
        loss and the score take the label, and the input stream is given whole, whatever the model predicts (no
        answer is fed back, so greedy decoding is teacher decoding)."""
        raise NotImplementedError

    def max_len(self, size: int) -> int:
        """The longest instance of this size, in tokens (BOS included)."""
        raise NotImplementedError

    def too_large(self, size: int) -> str | None:
        """Why an instance of this size cannot be drawn (vocabulary exhausted), or None."""
        return None

    def problem(self, size: int) -> str | None:
        """Why instances of this size cannot be drawn or scored here (too_large, or longer than
        MAX_INSTANCE_TOKENS), or None."""
        if why := self.too_large(size):
            return why
        if (n := self.max_len(size)) > MAX_INSTANCE_TOKENS:
            return (f"an instance of size {size} has up to {n} tokens, more than the {MAX_INSTANCE_TOKENS} (2**20) "
                    "lenx draws and attends over")
        return None

    def qa(self, prompt: list[int], answer: list[int]) -> tuple[list[int], list[bool]]:
        return [*prompt, SEP, *answer], [False] * (len(prompt) + 1) + [True] * len(answer)

    def instance(self, seed: int, split: str, i: int, size: int | None = None,
                 progress: float | None = None) -> tuple[np.ndarray, ...]:
        """(token ids, answer mask) of instance i of `split` (a pure function of the arguments), and its labels
        (T,) where the task's answers are labels only (`draw`). Training draws its size uniformly in
        [min_size, train_size] (under a curriculum, up to `curriculum_cap(progress)`, progress the fraction of
        training done); evaluation passes the size. The held-out split hashes the ids alone: labels are
        answers read from the input (MQAR: a value of the pairs), so no scored input stream is ever trained on."""
        rng = np.random.default_rng((seed, SPLITS[split], i, size or 0))
        if size is None:
            size, cap = self.train_draw_size(rng), self.curriculum_cap(progress)
            for _ in range(64):  # the task's own size distribution, cut at the stage's level
                if size <= cap:
                    break
                size = self.train_draw_size(rng)
            size = min(size, cap)
        for _ in range(64):
            ids, mask, *labels = self.draw(size, rng)  # labels: [] for a task whose answers stand in the sequence
            if self.eos:  # the answer ends here: the end token is an answer token (trained on and scored)
                ids, mask, labels = [*ids, self.eos_id], [*mask, True], [[*y, self.eos_id] for y in labels]
            ids = np.asarray([BOS, *ids], dtype=np.int64)
            out = (ids, np.asarray([False, *mask]), *(np.asarray([BOS, *y], dtype=np.int64) for y in labels))
            if half_of(ids) == HALF[split]:
                return out
        if split != "eval":  # a size with too few instances to split (e.g. parity of 1 bit): training may see it,
            return out  # and so may validation (it draws training's sizes; a loss monitor)
        raise ConfigError(f"data.task: size {size} has too few distinct {self.name} instances to hold some out of "
                          "training; use a larger train_size")

    def curriculum_cap(self, progress: float | None) -> int:
        """The largest training size at `progress` (0..1) of training: train_size without a curriculum; with one,
        min_size + the stage, train_size - min_size + 1 equal stages over the first `curriculum` of training."""
        if not self.curriculum or progress is None:
            return self.train_size
        stages = self.train_size - self.min_size + 1
        return min(self.train_size, self.min_size + int(stages * min(1.0, progress / self.curriculum)))

    def train_draw_size(self, rng: np.random.Generator) -> int:
        """A training instance's size: uniform in [min_size, train_size] (a task may weight its sizes instead)."""
        return int(rng.integers(self.min_size, self.train_size + 1))

    def seq_len(self) -> int:
        """The training length: the longest training instance minus one (the model reads all tokens but the last);
        max_len counts no end token."""
        return self.max_len(self.train_size) + int(self.eos) - 1


def query(context: list[int], q: int, answer: list[int]) -> tuple[list[int], list[bool]]:
    """`context SEP q answer` and its mask: a retrieval question about the context."""
    prompt = [*context, SEP, q]
    return prompt + answer, [False] * len(prompt) + [True] * len(answer)



def build_task(cfg: Mapping) -> Task | None:
    """The task of a run config (data.task with a _target_), or None for a corpus (LM) or passkey run."""
    spec = cfg["data"].get("task")
    if not isinstance(spec, Mapping):
        return None
    # A checkpoint's config is data, never code (README, "What lenx trusts"): only a Task class of lenx.tasks
    # (Task.registry), with plain values, is ever built, so rebuilding a checkpoint's model cannot call anything else.
    target = str(spec.get("_target_", ""))
    cls = Task.registry.get(target.removeprefix("lenx.tasks.")) if target.startswith("lenx.tasks.") else None
    if cls is None:
        raise ConfigError(f"data.task: {target or 'a task without _target_'} is not a lenx.tasks.Task")
    params = {k: v for k, v in spec.items() if k != "_target_"}
    bad = [k for k, v in params.items() if str(k).startswith("_") or not isinstance(v, (int, float, str, bool))]
    if bad:
        raise ConfigError(f"data.task: {bad} must be plain values (no nested nodes, no hydra keys)")
    eos = params.pop("eos", False)  # every task takes it: set here rather than in each subclass's __init__
    if not isinstance(eos, bool):
        raise ConfigError(f"data.task.eos must be true or false, got {eos!r}")
    curriculum = params.pop("curriculum", 0.0)  # likewise every task's (Task.curriculum)
    if isinstance(curriculum, bool) or not isinstance(curriculum, (int, float)) or not 0 <= curriculum <= 1:
        raise ConfigError(f"data.task.curriculum must be a fraction of training in [0, 1] (0: no curriculum), "
                          f"got {curriculum!r}")
    try:
        task = cls(**params)
    except TypeError as e:  # an unknown or missing parameter
        raise ConfigError(f"data.task: {e}") from None
    task.eos = eos  # before anything reads the (cached) vocabulary
    task.curriculum = curriculum
    return task


def configure(cfg: dict) -> Task | None:
    """For a task run: set data.vocab_size from the task's vocabulary and seq_len to its longest training instance
    (so a learned table holds exactly the trained positions), and a provenance naming the generator; returns the
    task (None for corpus runs, left unchanged)."""
    task = build_task(cfg)
    if task is not None:
        check_trainable(task)
        cfg["data"]["vocab_size"], cfg["seq_len"] = task.vocab_size, task.seq_len()
        pos = cfg.get("pos")
        if isinstance(pos, Mapping) and "digit_ids" in pos and pos.get("digit_ids") is None:  # pos=abacus
            ids = [task.id(s) for s in str(pos.get("digits", "")) if s in task.vocab]
            if not ids:
                raise ConfigError(f"pos=abacus: the {task.name} task has none of the digit symbols "
                                  f"{pos.get('digits')!r} (pos.digits)")
            pos["digit_ids"] = ids
    return task


def check_trainable(task: Task) -> None:
    """Before training: instances of the training size can be drawn, and some are held out for scoring (the
    probe scores held-out instances at 1x train_size; parity of 1 bit has two instances, too few to split)."""
    if why := task.problem(task.train_size):
        raise ConfigError(f"data.task.train_size={task.train_size}: {why}")
    task.instance(0, "eval", 0, task.train_size)  # raises the held-out error now rather than after training


def provenance(cfg: dict) -> dict:
    """A task run's data provenance: the task and a hash of its generator settings (no corpus, no tokenizer)."""
    import json

    spec = json.dumps(cfg["data"]["task"], sort_keys=True)
    return {"corpus": f"task:{cfg['data'].get('name', '')}", "corpus_hash": hashlib.sha256(spec.encode()).hexdigest(),
            "tokenizer_hash": "", "n_tokens": 0}


def pad(items: list[tuple[np.ndarray, ...]]) -> tuple[torch.Tensor, ...]:
    """Right-pad instances to the longest: (ids (B, T), answer mask (B, T)), and labels (B, T) where the items
    carry labels (`Task.draw`). Padding is never attended to by earlier tokens (causal) and never a target."""
    n = {len(item) for item in items}
    if len(n) != 1:
        raise ValueError(f"pad: items of one batch must all carry labels or none (lengths {sorted(n)})")
    T = max(len(item[0]) for item in items)
    out = [torch.full((len(items), T), PAD, dtype=torch.long), torch.zeros((len(items), T), dtype=torch.bool)]
    if n == {3}:
        out.append(torch.full((len(items), T), PAD, dtype=torch.long))
    for b, item in enumerate(items):
        for x_BT, a in zip(out, item):
            x_BT[b, :len(a)] = torch.from_numpy(a)
    return tuple(out)


class TaskItems(torch.utils.data.Dataset):
    """Training (or validation) instances: item i is `task.instance(seed, split, start + i)`."""

    def __init__(self, task: Task, n_items: int, seed: int, start: int = 0, split: str = "train") -> None:
        self.task, self.n_items, self.seed, self.start, self.split = task, n_items, seed, start, split

    def __len__(self) -> int:
        return self.n_items  # as RandomWindows: a resumed epoch ends at max_steps, not at n_items - start

    def __getitem__(self, i: int):
        # training follows the curriculum (its progress); validation monitors the loss over every training size
        progress = (i + self.start) / self.n_items if self.split == "train" else None
        return self.task.instance(self.seed, self.split, i + self.start, progress=progress)


def masked_loss(logits_BTV: torch.Tensor, ids_BT: torch.Tensor, mask_BT: torch.Tensor,
                labels_BT: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over answer tokens only; logits_BTV (B, T-1, V) predicts ids_BT[:, 1:], or labels_BT[:, 1:]
    where the batch carries labels (answers that are labels only, `Task.draw`)."""
    target_BT = ids_BT if labels_BT is None else labels_BT
    nll_BT = F.cross_entropy(logits_BTV.float().transpose(1, 2), target_BT[:, 1:], reduction="none")
    m = mask_BT[:, 1:].float()
    return (nll_BT * m).sum() / m.sum().clamp(min=1)


