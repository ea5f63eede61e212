"""Scoring a model at many lengths: token-weighted NLL over the same target tokens at every length.

Nonoverlapping protocol (Press et al. 2022, arXiv:2108.12409, sec. 4): the scored span of the stream is cut into
consecutive windows of length L; every target in a window is scored, with the window's earlier tokens as context.
The span is a multiple of the longest window, so every L partitions the *same* targets; only the context each
target sees changes. Every position is scored (reduction="none"); no last-logit shortcut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lenx.errors import ConfigError, OutOfRangeError


@dataclass(frozen=True)
class Span:
    """Targets tokens[start + 1 : start + 1 + n] are scored; inputs come from tokens[start : start + n]."""

    start: int
    n: int


def scored_span(n_stream: int, train_len: int, multipliers: list[int], tokens: int) -> Span:
    """The span every length scores: `tokens` rounded down to a multiple of the longest window (at least one).

    Raises ConfigError, before any scoring, when the stream is shorter than one longest window + 1.
    """
    bad = [m for m in multipliers if not isinstance(m, int) or isinstance(m, bool) or m <= 0]
    if bad or not multipliers:
        raise ConfigError(f"eval.multipliers must be positive integers, got {list(multipliers)}")
    longest = max(multipliers) * train_len
    if n_stream < longest + 1:
        raise ConfigError(
            f"eval length {longest} (= {max(multipliers)} x {train_len}) is longer than the evaluation split "
            f"({n_stream} tokens, {n_stream - 1} targets); lower eval.multipliers or use a larger split")
    n = max(1, min(tokens, n_stream - 1) // longest) * longest
    return Span(start=0, n=n)


@torch.no_grad()
def score_nonoverlapping(model: torch.nn.Module, tokens: np.ndarray, eval_len: int, span: Span, *,
                         batch_tokens: int, device: torch.device) -> tuple[float, int]:
    """Sum of target NLLs (fp64) and the number of targets, over windows of eval_len tiling `span`."""
    if span.n % eval_len:
        raise ConfigError(f"span of {span.n} tokens is not a multiple of eval_len={eval_len}")
    n_windows = span.n // eval_len
    per_batch = max(1, batch_tokens // eval_len)
    stream = torch.from_numpy(np.asarray(tokens[span.start:span.start + span.n + 1], dtype=np.int64))
    inputs_NL = stream[:-1].view(n_windows, eval_len)
    targets_NL = stream[1:].view(n_windows, eval_len)
    total, count = 0.0, 0
    for i in range(0, n_windows, per_batch):
        x_BL = inputs_NL[i:i + per_batch].to(device)
        y_BL = targets_NL[i:i + per_batch].to(device)
        logits_BLV = model(x_BL).float()
        nll_BL = F.cross_entropy(logits_BLV.flatten(0, 1), y_BL.flatten(), reduction="none")
        total += nll_BL.double().sum().item()
        count += nll_BL.numel()
    return total, count


def evaluate_lengths(model: torch.nn.Module, tokens: np.ndarray, *, train_len: int, multipliers: list[int],
                     tokens_to_score: int, batch_tokens: int, device: torch.device) -> list[dict]:
    """One dict per multiplier: eval_len, multiplier, loss (mean NLL, nats), ppl, tokens, status."""
    span = scored_span(len(tokens), train_len, multipliers, tokens_to_score)
    model.eval()
    rows = []
    for m in multipliers:
        eval_len = m * train_len
        row = {"eval_len": eval_len, "multiplier": m, "mode": "nonoverlapping", "tokens": span.n}
        try:
            total, count = score_nonoverlapping(model, tokens, eval_len, span, batch_tokens=batch_tokens,
                                                device=device)
        except OutOfRangeError as e:  # a learned table past its end: a recorded result, not a crash
            row.update(tokens=0, loss=math.nan, ppl=math.nan, status="out_of_range", error=str(e))
        else:
            assert count == span.n
            loss = total / count
            row.update(loss=loss, ppl=math.exp(min(loss, 700.0)), status="ok", error="")
        rows.append(row)
    return rows
