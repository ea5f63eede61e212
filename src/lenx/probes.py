"""Long-context probes beyond perplexity.

Repeated segment (induction) probe: a random segment of `seg_len` tokens is placed at distance d before its
repetition (d from 0.5x to 16x the training length, random tokens in between). A model that can reach back d
tokens copies the repetition (low NLL); one that cannot predicts it no better than the control, where the
first occurrence is replaced by other random tokens. Cf. induction heads (Olsson et al. 2022, arXiv:2209.11895)
and passkey-style retrieval probes (Mohtashami & Jaggi 2023, arXiv:2305.16300).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from lenx.errors import ConfigError, OutOfRangeError


@torch.no_grad()
def repeat_segment(model: torch.nn.Module, *, vocab_size: int, train_len: int, multipliers: list[float],
                   seg_len: int, trials: int, device: torch.device, seed: int = 0) -> list[dict]:
    """One row per distance: mean NLL on the repeated segment (its tokens after the first) and on the control."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    model.eval()
    for m in multipliers:
        d = max(seg_len, int(m * train_len))
        seq_BT = torch.randint(1, vocab_size, (trials, d + seg_len), generator=g)  # id 0 is end-of-document
        seq_BT[:, d:] = seq_BT[:, :seg_len]  # the repetition, d tokens after the original
        control_BT = seq_BT.clone()
        control_BT[:, :seg_len] = torch.randint(1, vocab_size, (trials, seg_len), generator=g)
        nll, status = {}, "ok"
        try:
            for name, x_BT in (("repeat", seq_BT), ("control", control_BT)):
                x_BT = x_BT.to(device)
                logits_BTV = model(x_BT[:, :-1]).float()
                targets = slice(d, d + seg_len - 1)  # repetition tokens 1..seg_len-1 predicted from their prefix
                nll[name] = F.cross_entropy(logits_BTV[:, targets].flatten(0, 1), x_BT[:, d + 1:].flatten()).item()
        except OutOfRangeError:  # a learned table shorter than d + seg_len
            nll, status = {"repeat": math.nan, "control": math.nan}, "out_of_range"
        rows.append({"multiplier": m, "distance": d, "seg_len": seg_len, "trials": trials,
                     "nll_repeat": nll["repeat"], "nll_control": nll["control"],
                     "copy_gain": nll["control"] - nll["repeat"], "status": status})
    return rows


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
                     depths: list[float], trials: int, device: torch.device, seed: int = 0) -> list[dict]:
    """One row per (length, depth): the fraction of trials whose every answer token is the model's argmax given
    the true prefix (teacher forcing: with all tokens right, the same as greedy decoding)."""
    model.eval()
    rows = []
    for m in multipliers:
        length = m * train_len
        for depth in depths:
            rng = np.random.default_rng((seed, m, int(round(depth * 1000))))
            seqs = [task.sequence(length, depth, rng) for _ in range(trials)]
            row = {"multiplier": m, "eval_len": length, "depth": depth, "trials": trials}
            try:
                x_BT = torch.from_numpy(np.stack([s for s, _ in seqs])).to(device)
                pred_BT = model(x_BT[:, :-1]).argmax(-1).cpu()
            except OutOfRangeError:
                rows.append({**row, "accuracy": math.nan, "status": "out_of_range"})
                continue
            hits = [bool((pred_BT[b, a - 1:] == x_BT[b, a:].cpu()).all()) for b, (_, a) in enumerate(seqs)]
            rows.append({**row, "accuracy": sum(hits) / trials, "status": "ok"})
    return rows


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
