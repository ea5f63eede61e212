"""Scoring a model at many lengths: token-weighted NLL over the same target tokens at every length.

A span of N targets of the evaluation stream is fixed for the whole run (N a multiple of the longest window), and
every length scores exactly those N targets, each once, so rows differ only in the context each target sees.
- nonoverlapping (stride = L; the ALiBi paper's protocol, arXiv:2108.12409 sec. 4): consecutive windows of L
  tokens tile the span; every target in a window is scored, with the window's earlier tokens as context.
- sliding (stride S < L): windows of L tokens advance by S; the first window scores all its targets, each later
  one only its last S, so every target after the first window sees at least L - S tokens of context.
Every position is scored (reduction="none") and the mean is per token, never a mean of window means.

Context (eval.context): `stream` scores a span of the concatenated stream, so a window may start mid-document and
span a document boundary (the long-range setting of the ALiBi and T5 papers); `document` scores whole documents
(the first ones of the split, until eval.tokens targets), each on its own: every document's first window starts
with its end-of-document token, no window crosses into another document, and a document shorter than the
window is scored in one shorter window.

Intervals (`bootstrap_ppl`): a percentile bootstrap over resampling units that do not depend on the length scored,
so that a long window does not leave a handful of correlated units: contiguous blocks of `train_len` targets of the
stream, resampled in runs of ceil(n^(1/3)) neighbouring blocks (a circular moving-block bootstrap, Kuensch 1989;
neighbouring blocks share documents), or whole documents (document context). A row resampling fewer than
MIN_UNITS units says so in `ci_warning`: such an interval covers less than its nominal 95%. The per-position rows
carry the same interval for each bin's mean NLL.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from lenx import positions as positions_lib
from lenx.dist import all_reduce_sum, rank_world
from lenx.errors import ConfigError, OutOfRangeError
from lenx.hardware import eval_autocast
from lenx.positions import Positions
from lenx.results import COLUMNS, POSITION_COLUMNS, format_table, plot_positions, plot_rows, read_rows
from lenx.scoring import TABLE, Probe, check_multipliers, eval_strides

log = logging.getLogger(__name__)
Segment = tuple[int, int]  # (start, n): targets tokens[start + 1 : start + 1 + n], inputs tokens[start : start + n]


def scored_span(n_stream: int, train_len: int, multipliers: list[int], tokens: int,
                key: str = "eval.multipliers") -> list[Segment]:
    """Stream context: one segment, `tokens` rounded down to a multiple of the longest window (at least one).

    Raises ConfigError, before any scoring, when the stream is shorter than one longest window + 1 (naming `key`,
    the config key of the multipliers).
    """
    check_multipliers(multipliers, key)
    longest = max(multipliers) * train_len
    if n_stream < longest + 1:
        raise ConfigError(
            f"eval length {longest} (= {max(multipliers)} x {train_len}) is longer than the evaluation split "
            f"({n_stream} tokens, {n_stream - 1} targets); lower {key} or use a larger split")
    return [(0, max(1, min(tokens, n_stream - 1) // longest) * longest)]


def document_segments(tokens: np.ndarray, eod_id: int, n_targets: int) -> list[Segment]:
    """Document context: the first documents of the stream ([EOD, doc0..., EOD, doc1..., ...]), whole, until
    n_targets targets are reached (the last one cut short). Each segment's first input is its document's EOD, and
    its targets are that document's tokens, so no window ever crosses a document boundary."""
    starts = np.flatnonzero(np.asarray(tokens[:], dtype=np.int64) == eod_id)
    if len(starts) == 0 or starts[0] != 0:
        raise ConfigError(f"eval.context=document needs a stream of EOD-led documents (EOD id {eod_id}); "
                          "this split does not start with one")
    ends = np.append(starts[1:], len(tokens))
    segs, total = [], 0
    for a, b in zip(starts.tolist(), ends.tolist()):
        n = min(b - a - 1, n_targets - total)
        if n > 0:
            segs.append((a, n))
            total += n
        if total >= n_targets:
            break
    if not segs:
        raise ConfigError("eval.context=document found no document with at least one token to score")
    return segs


def resolve_stride(stride: int | float | None, eval_len: int) -> int:
    """null -> eval_len (nonoverlapping); a float in (0, 1] -> that fraction of eval_len; an int -> tokens."""
    if stride is None:
        return eval_len
    s = max(1, int(round(stride * eval_len))) if isinstance(stride, float) and 0 < stride <= 1 else stride
    if not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= eval_len:
        raise ConfigError(f"eval.stride must be null, a fraction in (0, 1] or an integer in [1, eval_len], "
                          f"got {stride!r} for eval_len={eval_len}")
    return s


def windows(n: int, eval_len: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, length, first scored offset) of each window over a segment of n targets, scoring each once.

    Window w reads inputs [start, start + length) and scores targets start + offset .. start + length - 1; length
    is eval_len except for a segment shorter than one window (one window of n), and, nonoverlapping, for the
    last window of a segment whose length is not a multiple of eval_len (a shorter window, as the ALiBi paper's
    protocol). Sliding, the last window is a full one ending at the segment's end.
    """
    first = min(eval_len, n)
    out, end = [(0, first, 0)], first
    while end < n:
        new_end = min(end + stride, n)
        start = end if stride == eval_len else new_end - eval_len
        out.append((start, new_end - start, end - start))
        end = new_end
    return out


def targets_hash(tokens: np.ndarray, segments: list[Segment]) -> str:
    """A fingerprint of the scored targets (ids and segment boundaries): equal hashes = the same tokens scored."""
    h = hashlib.sha256()
    for start, n in segments:
        h.update(np.int64([start, n]).tobytes())
        h.update(np.asarray(tokens[start + 1:start + 1 + n], dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


MIN_UNITS = 20  # fewer resampled units than this: the row carries a ci_warning


@torch.no_grad()
def score_windows(model: torch.nn.Module, tokens: np.ndarray, eval_len: int, segments: list[Segment], *,
                  stride: int, batch_tokens: int, device: torch.device, progress: bool = False,
                  precision: str = "32", block: int | None = None, bins: list[tuple[int, int]] | None = None,
                  positions: Positions | None = None
                  ) -> tuple[float, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(sum of target NLLs in fp64, targets scored, NLL sum and count per window position, NLL sum and count
    per resampling unit: with one segment (stream context) per window, or per block of `block` consecutive
    targets when given; per segment (document) with several). With `bins` (window-position bins), the unit sums
    and counts are (units, bins) instead of (units,).

    A batch holds windows of one length only, so a window shorter than eval_len (a document's last one, or a short
    document) runs at its own length, unpadded: a scheme that reads the input length (RoPE scalings with factor
    null, dynamic NTK, LongRoPE's short/long switch) then sees the document's real length, not the padded one.
    `positions`: a train-time position mode (lenx.positions) whose draws the windows read instead of 0..L-1, one
    draw per batch, a function of (eval_len, the batch's index) alone, so every model and rank reads the same."""
    wins = [(a + s, n, o, g) for g, (a, m) in enumerate(segments) for s, n, o in windows(m, eval_len, stride)]
    by_len: dict[int, list[int]] = {}
    for w, (_, n, _, _) in enumerate(wins):
        by_len.setdefault(n, []).append(w)
    hi = max(a + m for a, m in segments) + 1
    stream = torch.from_numpy(np.asarray(tokens[:hi], dtype=np.int64))
    per_batch = max(1, batch_tokens // eval_len)
    pos_sum = torch.zeros(eval_len, dtype=torch.float64)
    pos_cnt = torch.zeros(eval_len, dtype=torch.int64)
    by_block = len(segments) == 1 and block is not None
    n_units = len(segments) if len(segments) > 1 else (-(-segments[0][1] // block) if by_block else len(wins))
    edges = [0] if bins is None else [a for a, _ in bins]
    bin_L = torch.bucketize(torch.arange(eval_len), torch.tensor(edges[1:]), right=True)  # bin of each position
    unit_sum = torch.zeros(n_units, len(edges), dtype=torch.float64)
    unit_cnt = torch.zeros_like(unit_sum, dtype=torch.int64)
    offsets_L = torch.arange(eval_len)
    rank, world = rank_world()  # under DDP each rank scores every world-th batch; the sums are all-reduced
    all_batches = [ids[i:i + per_batch] for n in sorted(by_len, reverse=True) for ids in [by_len[n]]
                   for i in range(0, len(ids), per_batch)]
    batches = list(enumerate(all_batches))[rank::world]  # (global batch index: the position draw's seed, ids)
    if progress and rank == 0:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"eval_len {eval_len} stride {stride}", leave=False, unit="batch")
    error: OutOfRangeError | None = None
    try:
        for batch_no, ids in batches:
            start_B, len_B, off_B, grp_B = (torch.tensor(c) for c in zip(*(wins[w] for w in ids)))
            L = int(len_B[0])  # every window of the batch has this length
            pos_L = None if positions is None else positions.for_eval(L, 0, eval_len, batch_no).to(device)
            offs_L = offsets_L[:L]
            valid_BL = offs_L[None, :] < len_B[:, None]
            idx_BL = start_B[:, None] + offs_L[None, :]
            x_BL, y_BL = stream[idx_BL].to(device), stream[torch.where(valid_BL, idx_BL + 1, 0)].to(device)
            with eval_autocast(precision, device):
                logits_BLV = model(x_BL) if pos_L is None else model(x_BL, pos_L)
            nll_BL = F.cross_entropy(logits_BLV.float().flatten(0, 1), y_BL.flatten(),  # fp32 loss
                                     reduction="none").view_as(y_BL)
            scored_BL = valid_BL & (offs_L[None, :] >= off_B[:, None])
            nll_BL = nll_BL.double().cpu() * scored_BL
            pos_sum[:L] += nll_BL.sum(0)
            pos_cnt[:L] += scored_BL.sum(0)
            if by_block:  # the target of input idx is target number idx - segment start
                unit_BL = ((idx_BL - segments[0][0]) // block).clamp(0, n_units - 1)
            else:
                unit_B = grp_B if len(segments) > 1 else torch.tensor(ids)
                unit_BL = unit_B[:, None].expand_as(idx_BL)
            cell_BL = unit_BL * len(edges) + bin_L[None, :L]
            unit_sum.view(-1).index_add_(0, cell_BL.flatten(), nll_BL.flatten())
            unit_cnt.view(-1).index_add_(0, cell_BL.flatten(), scored_BL.flatten().long())
    except OutOfRangeError as e:
        error = e
    out_of_range = torch.tensor([int(error is not None)])
    all_reduce_sum([pos_sum, pos_cnt, unit_sum, unit_cnt, out_of_range], device)  # token-weighted sums
    if out_of_range.item():  # on every rank, also one that had no window at this length
        raise error or OutOfRangeError(f"eval_len {eval_len} is past a learned position table (another rank)")
    if bins is None:
        unit_sum, unit_cnt = unit_sum[:, 0], unit_cnt[:, 0]
    return (pos_sum.sum().item(), int(pos_cnt.sum()), pos_sum.numpy(), pos_cnt.numpy(), unit_sum.numpy(),
            unit_cnt.numpy())


def block_run(n_units: int) -> int:
    """Consecutive units per draw of the moving-block bootstrap: ceil(n^(1/3)), the usual order (Hall et al. 1995)."""
    return max(1, math.ceil(n_units ** (1 / 3)))


def bootstrap_indices(n_units: int, run: int = 1, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_boot, n_units) unit indices: ceil(n / run) runs of `run` consecutive units (circular), cut to n_units.
    run = 1 is the ordinary bootstrap."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n_units, size=(n_boot, -(-n_units // run)))
    idx = (starts[:, :, None] + np.arange(run)[None, None, :]) % n_units
    return idx.reshape(n_boot, -1)[:, :n_units]


def bootstrap_ppl(unit_sum: np.ndarray, unit_cnt: np.ndarray, n_boot: int = 1000, seed: int = 0, run: int = 1
                  ) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the token-weighted ppl, resampling units (blocks of the stream, or
    whole documents), each carrying its NLL sum and token count, in runs of `run` neighbouring units.

    It measures the sampling noise of the scored text only (not seed-to-seed variation: see aggregate.py).
    """
    lo, hi = bootstrap_loss(unit_sum, unit_cnt, n_boot, seed, run)
    return math.exp(min(lo, 700.0)), math.exp(min(hi, 700.0))


def bootstrap_loss(unit_sum: np.ndarray, unit_cnt: np.ndarray, n_boot: int = 1000, seed: int = 0, run: int = 1
                   ) -> tuple[float, float]:
    """95% percentile interval of the token-weighted mean NLL (see bootstrap_ppl)."""
    idx = bootstrap_indices(len(unit_sum), run, n_boot, seed)
    losses = unit_sum[idx].sum(1) / np.maximum(unit_cnt[idx].sum(1), 1)
    lo, hi = np.percentile(losses, [2.5, 97.5])
    return float(lo), float(hi)


def ci_warning(n_units: int) -> str:
    return (f"only {n_units} resampling units (< {MIN_UNITS}): the 95% interval covers less than 95%"
            if n_units < MIN_UNITS else "")


def position_bins(eval_len: int) -> list[tuple[int, int]]:
    """Log-spaced bins of window positions: [0,1), [1,2), [2,4), [4,8), ... up to eval_len."""
    edges = [0] + [2 ** k for k in range(int(math.log2(eval_len)) + 1) if 2 ** k < eval_len] + [eval_len]
    return list(zip(edges[:-1], edges[1:]))


def eval_segments(tokens: np.ndarray, *, context: str, train_len: int, multipliers: list[int], tokens_to_score: int,
                  eod_id: int | None = None) -> list[Segment]:
    """The scored segments, shared by every length: one stream span, or whole documents (eval.context)."""
    if context == "stream":
        return scored_span(len(tokens), train_len, multipliers, tokens_to_score)
    if context == "document":
        check_multipliers(multipliers)
        if eod_id is None:
            raise ConfigError("eval.context=document needs the corpus's end-of-document token id")
        return document_segments(tokens, eod_id, tokens_to_score)
    raise ConfigError(f"eval.context must be 'stream' or 'document', got {context!r}")


def evaluate_lengths(model: torch.nn.Module, tokens: np.ndarray, *, on_result=None, **kw
                     ) -> tuple[list[dict], list[dict]]:
    """(one row per multiplier, per-position rows) of length_results; on_result(row, positions) after each."""
    rows, positions = [], []
    for row, pos in length_results(model, tokens, **kw):
        rows.append(row)
        positions += pos
        if on_result is not None:
            on_result(row, pos)
    return rows, positions


def length_results(model: torch.nn.Module, tokens: np.ndarray, *, train_len: int, multipliers: list[int],
                   tokens_to_score: int, batch_tokens: int, device: torch.device,
                   stride: int | float | None = None, context: str = "stream", eod_id: int | None = None,
                   progress: bool = False, done: set | None = None, precision: str = "32",
                   positions: Positions | None = None) -> Iterator[tuple[dict, list[dict]]]:
    """Yields (row, its per-position rows) for each multiplier, as each length is scored. Rows: eval_len,
    multiplier, mode, stride, context, loss, ppl, tokens, windows (resampling units: windows, or documents with
    context=document), targets_hash.

    done: (stride, context, eval_len, targets_hash, eval_positions) keys already scored, skipped (a rerun
    completes the rest). positions: score under this train-time position mode (score_windows) instead of 0..L-1."""
    mode = positions if positions is not None and positions.name != "contiguous" else None
    at = mode.name if mode is not None else "contiguous"
    segments = eval_segments(tokens, context=context, train_len=train_len, multipliers=multipliers,
                             tokens_to_score=tokens_to_score, eod_id=eod_id)
    n_targets = sum(n for _, n in segments)
    fingerprint = targets_hash(tokens, segments)
    strides = {m: resolve_stride(stride, m * train_len) for m in multipliers}  # all validated before scoring
    model.eval()
    positions: list[dict] = []
    for m in multipliers:
        eval_len, s = m * train_len, strides[m]
        if done and (s, context, eval_len, fingerprint, at) in done:
            continue
        row = {"eval_len": eval_len, "multiplier": m, "mode": "nonoverlapping" if s == eval_len else "sliding",
               "stride": s, "context": context, "targets_hash": fingerprint, "eval_positions": at}
        n_pos = len(positions)
        bins = position_bins(eval_len)
        try:
            total, count, pos_sum, pos_cnt, unit_sum, unit_cnt = score_windows(
                model, tokens, eval_len, segments, stride=s, batch_tokens=batch_tokens, device=device,
                progress=progress, precision=precision, block=train_len, bins=bins, positions=mode)
        except OutOfRangeError as e:  # a learned table past its end: a recorded result, not a crash
            row.update(tokens=0, loss=math.nan, ppl=math.nan, ppl_ci_low=math.nan, ppl_ci_high=math.nan, windows=0,
                       status="out_of_range", error=str(e), ci_warning="")
        else:
            if count != n_targets:
                raise RuntimeError(f"scored {count} targets instead of {n_targets} at eval_len={eval_len}")
            loss = total / count
            run = block_run(len(unit_sum)) if len(segments) == 1 else 1  # documents: independent units
            lo, hi = bootstrap_ppl(unit_sum.sum(1), unit_cnt.sum(1), run=run)
            row.update(tokens=count, loss=loss, ppl=math.exp(min(loss, 700.0)), ppl_ci_low=lo, ppl_ci_high=hi,
                       windows=len(unit_sum), status="ok", error="", ci_warning=ci_warning(len(unit_sum)),
                       # per-unit NLL sums and target counts: scripts/compare.py's paired bootstrap of a difference
                       units_nll=[float(f"{x:.9g}") for x in unit_sum.sum(1)],
                       units_tokens=[int(x) for x in unit_cnt.sum(1)], units_run=run)
            for k, (a, b) in enumerate(bins):
                n = int(pos_cnt[a:b].sum())
                if n:
                    has = unit_cnt[:, k] > 0  # units with targets in this bin
                    nll_lo, nll_hi = bootstrap_loss(unit_sum[has, k], unit_cnt[has, k], run=run)
                    positions.append({"eval_len": eval_len, "mode": row["mode"], "context": context,
                                      "eval_positions": at,
                                      "position_bin_start": a,
                                      "position_bin_end": b, "mean_nll": float(pos_sum[a:b].sum() / n),
                                      "tokens": n, "nll_ci_low": nll_lo, "nll_ci_high": nll_hi,
                                      "units": int(has.sum())})
        yield row, positions[n_pos:]


class Perplexity(Probe):
    """Perplexity at eval.multipliers x the training length, in each eval.mode, under eval.context (the protocol's
    settings are the eval.* keys above): one row per length in `<name>.csv` (default name: extrapolation) and its
    loss by position in `position_loss.csv`."""

    columns = {"extrapolation": COLUMNS, "position_loss": POSITION_COLUMNS}

    def check(self, eval_cfg, n_tokens, train_len) -> None:
        """eval.context, the stride of each eval.mode at every length, and (given the split's n_tokens, stream
        context) that the split holds the longest window; says when eval.tokens is more than the split holds."""
        context = eval_cfg.get("context", "stream")
        if context not in ("stream", "document"):
            raise ConfigError(f"eval.context must be 'stream' or 'document', got {context!r}")
        for stride in eval_strides(eval_cfg):
            for m in eval_cfg["multipliers"]:
                resolve_stride(stride, m * train_len)
        if n_tokens is not None and context == "stream":
            (_, scored), = scored_span(n_tokens, train_len, list(eval_cfg["multipliers"]), eval_cfg["tokens"])
            if eval_cfg["tokens"] > n_tokens - 1:
                log.warning(
                    "lenx: eval.tokens=%d is more than the %s split holds (%d targets): %d targets are scored at "
                    "each length (a multiple of the longest window)", eval_cfg["tokens"], eval_cfg["split"],
                    n_tokens - 1, scored)

    def run(self, model, run) -> Iterator[dict]:
        e = run.eval
        done = {(r["stride"], r.get("context", "stream"), r["eval_len"], r.get("targets_hash"),
                 r.get("eval_positions") or "contiguous") for r in run.done(self.name)}
        mode = positions_lib.build(run.cfg) if e.get("positions", "contiguous") == "train" else None
        context = e.get("context", "stream")
        tokens = run.tokens()
        for stride in eval_strides(e):
            for row, positions in length_results(
                    model, tokens, train_len=run.train_len, multipliers=run.multipliers, tokens_to_score=e["tokens"],
                    batch_tokens=e["batch_tokens"], device=run.device, stride=stride, context=context,
                    eod_id=run.eod_id if context == "document" else None, progress=bool(e.get("progress", False)),
                    done=done, precision=str(e.get("precision", "32")), positions=mode):
                for p in positions:
                    yield {**p, "targets_hash": row["targets_hash"], TABLE: "position_loss"}
                yield row

    def report(self, run, new: dict[str, list[dict]]) -> str:
        rows = read_rows(run.run_dir, self.name)
        if not rows:
            return ""
        png = plot_rows(rows, run.run_dir / f"{self.name}.png")
        plot_positions(read_rows(run.run_dir, "position_loss"), run.run_dir / "position_loss.png")
        text = format_table(rows)
        skipped = len(rows) - len(new.get(self.name, []))
        if skipped:
            text += (f"\n({skipped} rows were already in {run.run_dir / self.name}.jsonl; they were not scored "
                     "again)")
        return (text + f"\nresults: {run.run_dir / self.name}.csv (+ .jsonl), figure: {png}, loss per position: "
                f"{run.run_dir / 'position_loss.csv'} (+ .png)")
