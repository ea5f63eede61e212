"""Long-context probes beyond perplexity.

Repeated segment (induction) probe: a random segment of `seg_len` tokens is placed at distance d before its
repetition (d from 0.5x to 16x the training length, random tokens in between). A model that can reach back d
tokens copies the repetition (low NLL); one that cannot predicts it no better than the control, where the
first occurrence is replaced by other random tokens. Cf. induction heads (Olsson et al. 2022, arXiv:2209.11895)
and passkey-style retrieval probes (Mohtashami & Jaggi 2023, arXiv:2305.16300).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from lenx import data
from lenx.errors import ConfigError, OutOfRangeError, check_int
from lenx.results import PASSKEY_COLUMNS, PROBE_COLUMNS, plot_passkey
from lenx.scoring import Probe


@torch.no_grad()
def repeat_segment(model: torch.nn.Module, *, vocab_size: int, train_len: int, multipliers: list[float],
                   seg_len: int, trials: int, device: torch.device, seed: int = 0, skip: frozenset = frozenset()
                   ) -> Iterator[dict]:
    """One row per distance: mean NLL on the repeated segment (its tokens after the first) and on the control.
    Multipliers in `skip` are drawn (so the others see the same random tokens) but not scored."""
    g = torch.Generator().manual_seed(seed)
    model.eval()
    for m in multipliers:
        d = max(seg_len, int(m * train_len))
        seq_BT = torch.randint(1, vocab_size, (trials, d + seg_len), generator=g)  # id 0 is end-of-document
        seq_BT[:, d:] = seq_BT[:, :seg_len]  # the repetition, d tokens after the original
        control_BT = seq_BT.clone()
        control_BT[:, :seg_len] = torch.randint(1, vocab_size, (trials, seg_len), generator=g)
        if m in skip:
            continue
        nll, status = {}, "ok"
        try:
            for name, x_BT in (("repeat", seq_BT), ("control", control_BT)):
                x_BT = x_BT.to(device)
                logits_BTV = model(x_BT[:, :-1]).float()
                targets = slice(d, d + seg_len - 1)  # repetition tokens 1..seg_len-1 predicted from their prefix
                nll[name] = F.cross_entropy(logits_BTV[:, targets].flatten(0, 1), x_BT[:, d + 1:].flatten()).item()
        except OutOfRangeError:  # a learned table shorter than d + seg_len
            nll, status = {"repeat": math.nan, "control": math.nan}, "out_of_range"
        yield {"multiplier": m, "distance": d, "seg_len": seg_len, "trials": trials, "nll_repeat": nll["repeat"],
               "nll_control": nll["control"], "copy_gain": nll["control"] - nll["repeat"], "status": status}


class RepeatedSegment(Probe):
    """The repeated-segment probe (see the module docstring), one row per distance multiplier x train_len."""

    columns = {"probe": PROBE_COLUMNS}

    def __init__(self, *, multipliers: list[float], seg_len: int = 16, trials: int = 8) -> None:
        check_int(seg_len, "seg_len")
        check_int(trials, "trials")
        if not multipliers or any(not isinstance(m, (int, float)) or isinstance(m, bool) or m <= 0
                                  for m in multipliers):
            raise ConfigError(f"multipliers must be positive numbers, got {multipliers}")
        self.multipliers, self.seg_len, self.trials = list(multipliers), seg_len, trials

    def run(self, model, run) -> Iterator[dict]:
        yield from repeat_segment(model, vocab_size=run.cfg["data"]["vocab_size"], train_len=run.train_len,
                                  multipliers=self.multipliers, seg_len=self.seg_len, trials=self.trials,
                                  device=run.device, skip=frozenset(r["multiplier"] for r in run.done(self.name)))

    def report(self, run, new: dict[str, list[dict]]) -> str:
        return self.lines_report(
            run, new, f"repeated-segment probe ({run.run_dir / self.name}.csv): copy gain (nats) = NLL(control) - "
            "NLL(repeat), by distance", lambda r: (f"  {r['pos']:<14} {r['scaling']:<12} d={r['distance']:<6} "
                                                   f"({r['multiplier']}x)  {r['copy_gain']:+.3f}"))


class Passkey:
    """Passkey retrieval (Mohtashami & Jaggi 2023, arXiv:2305.16300; as evaluated in YaRN, arXiv:2309.00071).

    A sequence of exactly `length` tokens: EOD, filler sentences, the needle "The pass key is K. Remember it. K is
    the pass key." at a relative depth in [0, 1] of the filler, more filler, then "What is the pass key? The pass
    key is K". K is a random `digits`-digit number; the answer is K's tokens at the end. The parts are encoded
    separately, so K has the same tokens in the needle and in the answer whatever the tokenizer merges.
    """

    FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."

    def __init__(self, tokenizer, eod_id: int, digits: int = 5) -> None:
        if not isinstance(digits, int) or not 1 <= digits <= 18:
            raise ConfigError(f"data.passkey.digits must be an integer in [1, 18], got {digits!r}")
        self.enc = lambda s: tokenizer.encode(s).ids
        self.eod_id, self.digits = eod_id, digits
        self.filler = self.enc(self.FILLER)
        self.intro, self.question = self.enc(" The pass key is"), self.enc(" What is the pass key? The pass key is")

    def min_length(self) -> int:
        """The shortest sequence that holds the needle and the question with a key of the longest encoding."""
        key = self.enc(" " + "9" * self.digits)
        return 1 + len(self.intro) + 2 * len(key) + len(self.enc(". Remember it. ")) + len(
            self.enc(" is the pass key.")) + len(self.question) + len(key) + 4

    def sequence(self, length: int, depth: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """(token ids of exactly `length`, index of the answer's first token)."""
        key = int(rng.integers(10 ** (self.digits - 1), 10 ** self.digits))
        answer = self.enc(f" {key}")
        needle = self.intro + answer + self.enc(". Remember it.") + self.enc(f" {key}") + self.enc(" is the pass key.")
        n_fill = length - 1 - len(needle) - len(self.question) - len(answer)
        if n_fill < 0:
            raise ConfigError(f"a passkey sequence needs at least {self.min_length()} tokens, got length={length}")
        fill = (self.filler * (n_fill // len(self.filler) + 1))[:n_fill]
        at = int(round(depth * n_fill))
        ids = [self.eod_id] + fill[:at] + needle + fill[at:] + self.question + answer
        return np.asarray(ids, dtype=np.int64), len(ids) - len(answer)


@torch.no_grad()
def passkey_accuracy(model: torch.nn.Module, task: Passkey, *, train_len: int, multipliers: list[int],
                     depths: list[float], trials: int, device: torch.device, seed: int = 0,
                     skip: frozenset = frozenset()) -> Iterator[dict]:
    """One row per (length, depth): the fraction of trials whose every answer token is the model's argmax given
    the true prefix (teacher forcing: with all tokens right, the same as greedy decoding). Each (multiplier,
    depth) has its own seeded draws; those in `skip` are not scored."""
    model.eval()
    for m in multipliers:
        length = m * train_len
        for depth in depths:
            if (m, depth) in skip:
                continue
            rng = np.random.default_rng((seed, m, int(round(depth * 1000))))
            seqs = [task.sequence(length, depth, rng) for _ in range(trials)]
            row = {"multiplier": m, "eval_len": length, "depth": depth, "trials": trials}
            try:
                x_BT = torch.from_numpy(np.stack([s for s, _ in seqs])).to(device)
                pred_BT = model(x_BT[:, :-1]).argmax(-1).cpu()
            except OutOfRangeError:
                yield {**row, "accuracy": math.nan, "status": "out_of_range"}
                continue
            hits = [bool((pred_BT[b, a - 1:] == x_BT[b, a:].cpu()).all()) for b, (_, a) in enumerate(seqs)]
            yield {**row, "accuracy": sum(hits) / trials, "status": "ok"}


def passkey_task(cfg: dict, force: bool = False) -> Passkey | None:
    """The passkey task of a run trained on data=passkey (data.task; any run with `force`), else None; checks
    that seq_len holds it when the run trains on it."""
    d = cfg["data"]
    if isinstance(d.get("task"), dict):  # a lenx.tasks task (data.task._target_): not passkey
        return None
    if d.get("task") not in (None, "lm", "passkey"):
        raise ConfigError(f"unknown data.task {d['task']!r}; expected lm or passkey")
    if d.get("task") != "passkey" and not force:
        return None
    task = Passkey(data.load_tokenizer(cfg), data.entry(cfg)["eod_id"], (d.get("passkey") or {}).get("digits", 5))
    if d.get("task") == "passkey" and cfg["seq_len"] + 1 < task.min_length():
        raise ConfigError(f"data=passkey needs seq_len >= {task.min_length() - 1} to hold the needle and the "
                          f"question, got seq_len={cfg['seq_len']}")
    return task


class PasskeyRetrieval(Probe):
    """Passkey retrieval accuracy by length and depth (arXiv:2305.16300). run: auto scores models trained on
    data=passkey only; true scores any model."""

    columns = {"passkey": PASSKEY_COLUMNS}

    def __init__(self, *, run: str | bool = "auto", multipliers: list[int], depths: list[float],
                 trials: int = 20) -> None:
        if run not in ("auto", True, False):
            raise ConfigError(f"run must be auto, true or false, got {run!r}")
        check_int(trials, "trials")
        for m in multipliers or [0]:
            check_int(m, "multipliers")
        if not depths or any(not isinstance(x, (int, float)) or not 0 <= x <= 1 for x in depths):
            raise ConfigError(f"depths must be numbers in [0, 1], got {depths}")
        self.when, self.multipliers, self.depths, self.trials = run, list(multipliers), list(depths), trials

    def run(self, model, run) -> Iterator[dict]:
        if not (self.when is True or (self.when == "auto" and run.cfg["data"].get("task") == "passkey")):
            return
        yield from passkey_accuracy(model, passkey_task(run.cfg, force=True), train_len=run.train_len,
                                    multipliers=self.multipliers, depths=self.depths, trials=self.trials,
                                    device=run.device,
                                    skip=frozenset((r["multiplier"], r["depth"]) for r in run.done(self.name)))

    def report(self, run, new: dict[str, list[dict]]) -> str:
        return self.lines_report(run, new, "passkey retrieval accuracy, by length (rows: depth of the key)", lambda r: (
            f"  {r['pos']:<14} {r['scaling']:<12} len={r['eval_len']:<6} depth={r['depth']:<5} {r['accuracy']:.2f}"),
            plot_passkey)


class PasskeyWindows(torch.utils.data.Dataset):
    """Training items for data=passkey: passkey sequences of seq_len + 1 tokens, depth and key drawn from an RNG
    seeded by (seed, i), so a resumed run sees the same items."""

    def __init__(self, task: Passkey, seq_len: int, n_items: int, seed: int, start: int = 0) -> None:
        task.sequence(seq_len + 1, 0.5, np.random.default_rng(0))  # refuses a too-short seq_len up front
        self.task, self.seq_len, self.n_items, self.seed, self.start = task, seq_len, n_items, seed, start

    def __len__(self) -> int:
        # Not n_items - start: a resumed Lightning epoch continues its batch count from the restored step, and
        # ends at len(dataloader); the items past n_items - start are never reached (max_steps stops first).
        return self.n_items

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng((self.seed, i + self.start))
        return torch.from_numpy(self.task.sequence(self.seq_len + 1, float(rng.random()), rng)[0])
