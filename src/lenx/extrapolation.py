"""Scoring a model at many lengths: token-weighted NLL over the same target tokens at every length.

A span of N targets of the evaluation stream is fixed for the whole run (N a multiple of the longest window), and
every length scores exactly those N targets, each once, so rows differ only in the context each target sees.
- nonoverlapping (stride = L; the ALiBi paper's protocol, arXiv:2108.12409 sec. 4): consecutive windows of L
  tokens tile the span; every target in a window is scored, with the window's earlier tokens as context.
- sliding (stride S < L): windows of L tokens advance by S; the first window scores all its targets, each later
  one only its last S, so every target after the first window sees at least L - S tokens of context.
Every position is scored (reduction="none") and the mean is per token, never a mean of window means.
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


def resolve_stride(stride: int | float | None, eval_len: int) -> int:
    """null -> eval_len (nonoverlapping); a float in (0, 1] -> that fraction of eval_len; an int -> tokens."""
    if stride is None:
        return eval_len
    s = max(1, int(round(stride * eval_len))) if isinstance(stride, float) and 0 < stride <= 1 else stride
    if not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= eval_len:
        raise ConfigError(f"eval.stride must be null, a fraction in (0, 1] or an integer in [1, eval_len], "
                          f"got {stride!r} for eval_len={eval_len}")
    return s


def windows(n: int, eval_len: int, stride: int) -> list[tuple[int, int]]:
    """(start, first scored offset) of each window of eval_len over n targets, scoring each target once.

    Window w reads inputs [start, start + eval_len) and scores targets start + offset .. start + eval_len - 1.
    """
    if n < eval_len:
        raise ConfigError(f"span of {n} targets is shorter than one window of {eval_len}")
    out, end = [(0, 0)], eval_len
    while end < n:
        new_end = min(end + stride, n)
        out.append((new_end - eval_len, end - (new_end - eval_len)))
        end = new_end
    return out


@torch.no_grad()
def score_windows(model: torch.nn.Module, tokens: np.ndarray, eval_len: int, span: Span, *, stride: int,
                  batch_tokens: int, device: torch.device
                  ) -> tuple[float, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(sum of target NLLs in fp64, targets scored, NLL sum and count per window position, NLL sum and count
    per window)."""
    wins = windows(span.n, eval_len, stride)
    stream = torch.from_numpy(np.asarray(tokens[span.start:span.start + span.n + 1], dtype=np.int64))
    per_batch = max(1, batch_tokens // eval_len)
    pos_sum = torch.zeros(eval_len, dtype=torch.float64)
    pos_cnt = torch.zeros(eval_len, dtype=torch.int64)
    offsets_L = torch.arange(eval_len)
    win_sum, win_cnt = [], []
    for i in range(0, len(wins), per_batch):
        batch = wins[i:i + per_batch]
        idx_BL = torch.stack([torch.arange(s, s + eval_len) for s, _ in batch])
        x_BL, y_BL = stream[idx_BL].to(device), stream[idx_BL + 1].to(device)
        logits_BLV = model(x_BL).float()
        nll_BL = F.cross_entropy(logits_BLV.flatten(0, 1), y_BL.flatten(), reduction="none").view_as(y_BL)
        scored_BL = offsets_L[None, :] >= torch.tensor([o for _, o in batch])[:, None]
        nll_BL = nll_BL.double().cpu() * scored_BL
        pos_sum += nll_BL.sum(0)
        pos_cnt += scored_BL.sum(0)
        win_sum.append(nll_BL.sum(1))
        win_cnt.append(scored_BL.sum(1))
    return (pos_sum.sum().item(), int(pos_cnt.sum()), pos_sum.numpy(), pos_cnt.numpy(),
            torch.cat(win_sum).numpy(), torch.cat(win_cnt).numpy())


def bootstrap_ppl(win_sum: np.ndarray, win_cnt: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the token-weighted ppl, resampling windows (the correlated unit).

    It measures the sampling noise of the scored text only (not seed-to-seed variation: see aggregate.py).
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(win_sum), size=(n_boot, len(win_sum)))
    losses = win_sum[idx].sum(1) / np.maximum(win_cnt[idx].sum(1), 1)
    lo, hi = np.percentile(losses, [2.5, 97.5])
    return math.exp(min(lo, 700.0)), math.exp(min(hi, 700.0))


def position_bins(eval_len: int) -> list[tuple[int, int]]:
    """Log-spaced bins of window positions: [0,1), [1,2), [2,4), [4,8), ... up to eval_len."""
    edges = [0] + [2 ** k for k in range(int(math.log2(eval_len)) + 1) if 2 ** k < eval_len] + [eval_len]
    return list(zip(edges[:-1], edges[1:]))


def evaluate_lengths(model: torch.nn.Module, tokens: np.ndarray, *, train_len: int, multipliers: list[int],
                     tokens_to_score: int, batch_tokens: int, device: torch.device,
                     stride: int | float | None = None) -> tuple[list[dict], list[dict]]:
    """(one row per multiplier, per-position rows). Rows: eval_len, multiplier, mode, stride, loss, ppl, tokens."""
    span = scored_span(len(tokens), train_len, multipliers, tokens_to_score)
    strides = {m: resolve_stride(stride, m * train_len) for m in multipliers}  # all validated before scoring
    model.eval()
    rows, positions = [], []
    for m in multipliers:
        eval_len, s = m * train_len, strides[m]
        row = {"eval_len": eval_len, "multiplier": m, "mode": "nonoverlapping" if s == eval_len else "sliding",
               "stride": s}
        try:
            total, count, pos_sum, pos_cnt, win_sum, win_cnt = score_windows(
                model, tokens, eval_len, span, stride=s, batch_tokens=batch_tokens, device=device)
        except OutOfRangeError as e:  # a learned table past its end: a recorded result, not a crash
            row.update(tokens=0, loss=math.nan, ppl=math.nan, ppl_ci_low=math.nan, ppl_ci_high=math.nan, windows=0,
                       status="out_of_range", error=str(e))
        else:
            if count != span.n:
                raise RuntimeError(f"scored {count} targets instead of {span.n} at eval_len={eval_len}")
            loss = total / count
            lo, hi = bootstrap_ppl(win_sum, win_cnt)
            row.update(tokens=count, loss=loss, ppl=math.exp(min(loss, 700.0)), ppl_ci_low=lo, ppl_ci_high=hi,
                       windows=len(win_sum), status="ok", error="")
            for a, b in position_bins(eval_len):
                n = int(pos_cnt[a:b].sum())
                if n:
                    positions.append({"eval_len": eval_len, "mode": row["mode"], "position_bin_start": a,
                                      "position_bin_end": b, "mean_nll": float(pos_sum[a:b].sum() / n),
                                      "tokens": n})
        rows.append(row)
    return rows, positions
