"""The evaluator's protocol: every target scored once, the same targets at every length, per-token means."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_model

from lenx.errors import ConfigError
from lenx.extrapolation import (
    bootstrap_ppl,
    document_segments,
    evaluate_lengths,
    position_bins,
    resolve_stride,
    score_windows,
    scored_span,
    targets_hash,
    windows,
)


def tiny(scheme="alibi"):
    return make_model(scheme, train_len=8, d_model=16, vocab_size=40)


@pytest.mark.parametrize("n, L, S", [(64, 8, 8), (64, 8, 3), (64, 16, 1), (70, 16, 5), (32, 32, 7), (70, 16, 16),
                                     (5, 16, 16), (5, 16, 3)])
def test_windows_score_every_target_exactly_once(n, L, S):
    seen = np.zeros(n, dtype=int)
    wins = windows(n, L, S)
    for start, length, offset in wins:
        assert 0 <= start and start + length <= n and 0 <= offset < length <= L
        seen[start + offset:start + length] += 1
    assert (seen == 1).all()
    assert [length for _, length, _ in wins[:-1]] == [L] * (len(wins) - 1)  # only the last may be short
    for start, length, offset in wins[1:]:
        assert offset >= L - S or S == L  # each later sliding window's targets see >= L - S tokens of context
        assert (offset == 0) == (S == L)  # nonoverlapping windows score everything they read


def test_span_is_shared_and_a_multiple_of_the_longest_window():
    [(start, n)] = scored_span(10_000, 8, [1, 2, 4, 16], 1000)
    assert start == 0 and n == 896 and n % 128 == 0
    with pytest.raises(ConfigError, match="longer than the evaluation split"):
        scored_span(100, 8, [1, 16], 1000)
    with pytest.raises(ConfigError, match="positive integers"):
        scored_span(10_000, 8, [1, 0], 1000)


def test_stride_equal_to_window_is_nonoverlapping_and_matches_brute_force():
    model, tokens = tiny(), np.random.default_rng(0).integers(0, 40, 200)
    total, count, *_ = score_windows(model, tokens, 16, [(0, 96)], stride=16, batch_tokens=48, device=torch.device("cpu"))
    assert count == 96
    ref = 0.0
    for w in range(6):  # each window on its own
        x = torch.from_numpy(tokens[w * 16:w * 16 + 17].astype(np.int64))
        ref += F.cross_entropy(model(x[None, :-1])[0], x[1:], reduction="sum").item()
    assert total == pytest.approx(ref, rel=1e-6)


def test_sliding_matches_brute_force_per_target_context():
    model, tokens = tiny(), np.random.default_rng(1).integers(0, 40, 200)
    L, S, n = 16, 5, 48
    total, count, pos_sum, pos_cnt, win_sum, win_cnt = score_windows(model, tokens, L, [(0, n)], stride=S,
                                                                     batch_tokens=32, device=torch.device("cpu"))
    assert win_cnt.sum() == n and win_sum.sum() == pytest.approx(total)
    assert count == n and pos_cnt.sum() == n
    ref = 0.0
    for t in range(n):  # target t is scored in the one window whose scored range holds it, with its context
        (start,) = [s for s, _, o in windows(n, L, S) if s + o <= t < s + L]
        assert t - start >= min(t, L - S)  # context: all earlier tokens in the first window, else >= L - S
        x = torch.from_numpy(tokens[start:start + L + 1].astype(np.int64))
        ref += F.cross_entropy(model(x[None, :-1])[0], x[1:], reduction="none")[t - start].item()
    assert total == pytest.approx(ref, rel=1e-6)
    assert pos_cnt[: L - S].sum() == L - S  # only the first window scores its early positions


def test_rows_score_identical_targets_and_are_token_weighted():
    model, tokens = tiny(), np.random.default_rng(2).integers(0, 40, 600)
    rows, positions = evaluate_lengths(model, tokens, train_len=8, multipliers=[1, 2, 4], tokens_to_score=256,
                                       batch_tokens=64, device=torch.device("cpu"))
    assert {r["tokens"] for r in rows} == {256}
    for r in rows:
        pos = [p for p in positions if p["eval_len"] == r["eval_len"]]
        assert sum(p["tokens"] for p in pos) == 256
        weighted = sum(p["mean_nll"] * p["tokens"] for p in pos) / 256
        assert weighted == pytest.approx(r["loss"], rel=1e-9) and r["ppl"] == pytest.approx(math.exp(r["loss"]))
    sliding, _ = evaluate_lengths(model, tokens, train_len=8, multipliers=[1, 2, 4], tokens_to_score=256,
                                  batch_tokens=64, device=torch.device("cpu"), stride=1.0)
    assert [r["loss"] for r in sliding] == pytest.approx([r["loss"] for r in rows], rel=1e-9)


def test_position_bins_are_log_spaced_and_cover_the_window():
    assert position_bins(16) == [(0, 1), (1, 2), (2, 4), (4, 8), (8, 16)]
    assert position_bins(24)[-1] == (16, 24)


@pytest.mark.parametrize("stride, L, expect", [(None, 64, 64), (0.5, 64, 32), (16, 64, 16), (1, 64, 1)])
def test_resolve_stride(stride, L, expect):
    assert resolve_stride(stride, L) == expect


@pytest.mark.parametrize("stride", [0, 65, -0.5, "x"])
def test_bad_stride(stride):
    with pytest.raises(ConfigError, match="eval.stride"):
        resolve_stride(stride, 64)


def test_bootstrap_interval_brackets_the_estimate_and_shrinks_with_more_windows():
    rng = np.random.default_rng(0)
    few = rng.normal(4.0, 0.5, 8) * 100, np.full(8, 100)
    many = rng.normal(4.0, 0.5, 512) * 100, np.full(512, 100)
    for sums, cnts in (few, many):
        lo, hi = bootstrap_ppl(sums, cnts)
        assert lo < math.exp(sums.sum() / cnts.sum()) < hi
    assert np.ptp(np.log(bootstrap_ppl(*many))) < np.ptp(np.log(bootstrap_ppl(*few))) / 4  # ~ 1 / sqrt(n)
    assert bootstrap_ppl(np.full(5, 300.0), np.full(5, 100)) == pytest.approx((math.exp(3), math.exp(3)))


class Bigram(torch.nn.Module):
    """A hand-computable model behind the decoder's interface: logits at t depend only on token t."""

    def __init__(self, vocab: int, seed: int = 0) -> None:
        super().__init__()
        self.logp = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed)).log_softmax(-1)

    def forward(self, idx_BT):
        return self.logp[idx_BT]


def documents_stream(rng, eod: int, lengths: list[int], vocab: int) -> np.ndarray:
    return np.concatenate([np.r_[eod, rng.integers(1, vocab, n)] for n in lengths])


@pytest.mark.parametrize("context", ["stream", "document"])
@pytest.mark.parametrize("stride", [None, 0.5, 3, 1])
def test_bigram_model_gives_the_exact_ppl_in_every_mode_and_length(context, stride):
    """Every target is predicted from its true predecessor whatever the windows: the closed form is the mean of
    -log p(t_i | t_(i-1)) over the scored targets. An off-by-one, a dropped or double-scored target, or a
    per-window mean breaks it."""
    rng, vocab = np.random.default_rng(3), 30
    tokens = documents_stream(rng, 0, [5, 40, 17, 90, 3, 200, 60], vocab)
    model = Bigram(vocab)
    rows, positions = evaluate_lengths(model, tokens, train_len=8, multipliers=[1, 2, 4, 16], tokens_to_score=300,
                                       batch_tokens=40, device=torch.device("cpu"), stride=stride,
                                       context=context, eod_id=0)
    if context == "stream":
        targets = [(i, i + 1) for i in range(256)]  # 300 rounded down to a multiple of 16 x 8
    else:  # each document's own tokens, whole documents in order until 300 targets (the last cut short)
        starts = np.flatnonzero(tokens == 0)
        targets = [(i, i + 1) for a, b in zip(starts, np.r_[starts[1:], len(tokens)]) for i in range(a, b - 1)][:300]
    logp = model.logp.double().numpy()
    expect = -np.mean([logp[tokens[i], tokens[j]] for i, j in targets])
    for r in rows:
        assert r["tokens"] == len(targets) and r["context"] == context
        assert r["loss"] == pytest.approx(expect, rel=1e-6)
        pos = [p for p in positions if p["eval_len"] == r["eval_len"]]
        assert sum(p["tokens"] for p in pos) == len(targets)
    assert len({r["targets_hash"] for r in rows}) == 1


def test_document_windows_never_cross_a_boundary():
    """A model that reads token 0 of its window: in document context every window's first input is a document's
    EOD or a token of the same document, and the first window of each document starts at its EOD."""
    rng = np.random.default_rng(4)
    tokens = documents_stream(rng, 0, [5, 40, 17, 90], 30)
    segs = document_segments(tokens, 0, 10_000)
    starts = np.flatnonzero(tokens == 0)
    assert [a for a, _ in segs] == starts.tolist() and sum(n for _, n in segs) == 5 + 40 + 17 + 90
    assert document_segments(tokens, 0, 50) == [(0, 5), (6, 40), (47, 5)]  # cut short at 50 targets
    for a, n in segs:
        for s, length, _ in windows(n, 16, 16):
            window = tokens[a + s:a + s + length + 1]  # inputs and targets
            assert (window[1:] != 0).all()  # never reads into the next document's EOD
    with pytest.raises(ConfigError, match="EOD-led documents"):
        document_segments(tokens[1:], 0, 100)


def test_document_context_changes_the_result_only_through_context():
    """A real decoder: document context equals stream context scored document by document by hand."""
    model = tiny("rope")
    tokens = documents_stream(np.random.default_rng(5), 0, [20, 9, 30], 40)
    rows, _ = evaluate_lengths(model, tokens, train_len=8, multipliers=[2], tokens_to_score=1000, batch_tokens=64,
                               device=torch.device("cpu"), context="document", eod_id=0)
    ref, n = 0.0, 0
    for a, m in document_segments(tokens, 0, 1000):
        for s, length, _ in windows(m, 16, 16):
            x = torch.from_numpy(tokens[a + s:a + s + length + 1].astype(np.int64))
            ref += F.cross_entropy(model(x[None, :-1])[0], x[1:], reduction="sum").item()
            n += length
    assert rows[0]["tokens"] == n == 59 and rows[0]["loss"] == pytest.approx(ref / n, rel=1e-6)
    assert rows[0]["windows"] == 3  # the bootstrap resamples the 3 documents


def test_targets_hash_tells_apart_different_scored_tokens():
    tokens = np.arange(100) % 7
    assert targets_hash(tokens, [(0, 50)]) == targets_hash(tokens.copy(), [(0, 50)])
    assert targets_hash(tokens, [(0, 50)]) != targets_hash(tokens, [(0, 49)])
    assert targets_hash(tokens, [(0, 50)]) != targets_hash(tokens, [(7, 50)])  # the same ids at another offset
    assert targets_hash(tokens, [(0, 20), (20, 30)]) != targets_hash(tokens, [(0, 50)])


def test_bf16_autocast_scoring_is_close_to_fp32_and_fp32_is_the_default():
    model, tokens = tiny("alibi"), np.random.default_rng(6).integers(0, 40, 600)
    kw = dict(train_len=8, multipliers=[1, 4], tokens_to_score=256, batch_tokens=64, device=torch.device("cpu"))
    fp32, _ = evaluate_lengths(model, tokens, **kw)
    again, _ = evaluate_lengths(model, tokens, **kw, precision="32")
    bf16, _ = evaluate_lengths(model, tokens, **kw, precision="bf16")
    assert [r["loss"] for r in again] == [r["loss"] for r in fp32]
    assert [r["loss"] for r in bf16] == pytest.approx([r["loss"] for r in fp32], rel=2e-2)
    assert [r["loss"] for r in bf16] != [r["loss"] for r in fp32]  # autocast did run in bf16
    with pytest.raises(ConfigError, match="eval.precision"):
        evaluate_lengths(model, tokens, **kw, precision="fp8")


# --- intervals: blocks of train_len targets, moving-block bootstrap, warnings, per-position bands ---

def test_stream_units_are_blocks_of_train_len_at_every_length():
    """The resampling units are the same train_len-target blocks at every length (not 4-16 long windows), each
    carrying the exact NLL of its targets (the bigram model's closed form); a row with < 20 units warns."""
    rng, vocab = np.random.default_rng(5), 30
    tokens = rng.integers(1, vocab, 600)
    model = Bigram(vocab)
    logp = model.logp.double().numpy()
    nll = np.array([-logp[tokens[i], tokens[i + 1]] for i in range(256)])
    rows, positions = evaluate_lengths(model, tokens, train_len=8, multipliers=[1, 4, 16], tokens_to_score=256,
                                       batch_tokens=64, device=torch.device("cpu"))
    for r in rows:
        assert r["windows"] == 32 and r["ci_warning"] == ""
        np.testing.assert_allclose(r["units_nll"], nll.reshape(32, 8).sum(1), rtol=1e-6)
        assert r["units_tokens"] == [8] * 32 and r["units_run"] == 4  # ceil(32^(1/3))
        assert r["ppl_ci_low"] < r["ppl"] < r["ppl_ci_high"]
    for p in positions:
        assert p["nll_ci_low"] <= p["mean_nll"] <= p["nll_ci_high"] and p["units"] >= 1
    few, _ = evaluate_lengths(model, tokens, train_len=8, multipliers=[1, 4], tokens_to_score=128, batch_tokens=64,
                              device=torch.device("cpu"))
    assert all(r["windows"] == 16 and "only 16 resampling units" in r["ci_warning"] for r in few)


def test_moving_block_bootstrap_covers_correlated_units_better():
    """Neighbouring blocks of a stream are correlated (they share documents): resampling them one by one
    undercovers; runs of ceil(n^(1/3)) neighbours recover much of the coverage (AR(1) units, phi = 0.5)."""
    from lenx.extrapolation import block_run, bootstrap_indices, bootstrap_loss

    idx = bootstrap_indices(10, run=3, n_boot=5, seed=0)
    assert idx.shape == (5, 10) and all(((row[1:3] - row[0:2]) % 10 == 1).all() for row in idx)  # runs of 3
    rng, n, reps = np.random.default_rng(0), 64, 200
    covered = {1: 0, block_run(n): 0}
    for rep in range(reps):
        x = np.zeros(n + 100)
        for t in range(1, n + 100):
            x[t] = 0.5 * x[t - 1] + rng.normal()
        sums, cnt = (4 + 0.3 * x[100:]) * 100, np.full(n, 100)
        for run in covered:
            lo, hi = bootstrap_loss(sums, cnt, n_boot=300, seed=rep, run=run)
            covered[run] += lo <= 4 <= hi
    iid, block = covered[1] / reps, covered[block_run(n)] / reps
    assert block > iid + 0.05 and block > 0.8


def test_document_context_runs_each_window_at_its_real_length():
    """A length-reading scaling (dynamic NTK, factor null) must see a short document's own length, not the padded
    eval_len: the row equals each document scored on its own, window by window, unpadded."""
    from conftest import make_model

    rng, vocab = np.random.default_rng(4), 50
    lengths = [5, 40, 17, 90, 3, 200, 60]
    tokens = documents_stream(rng, 0, lengths, vocab)
    model = make_model("rope", train_len=8, vocab_size=vocab, scaling={"_target_": "lenx.pos.rope_scaling.DynamicNTK", "factor": None})
    for block in model.blocks:  # attention logits of order 1, so the rotation's base visibly moves the output
        block.attn.qkv.weight.data.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    rows, _ = evaluate_lengths(model, tokens, train_len=8, multipliers=[16], tokens_to_score=10_000, batch_tokens=256,
                               device=torch.device("cpu"), context="document", eod_id=0)
    starts = np.flatnonzero(tokens == 0)
    total, count = 0.0, 0
    with torch.no_grad():
        for a, n in zip(starts, lengths):
            for s in range(0, n, 128):  # nonoverlapping windows of 128 inside the document, the last one shorter
                m = min(128, n - s)
                x = torch.from_numpy(tokens[a + s:a + s + m + 1].astype(np.int64))
                total += F.cross_entropy(model(x[None, :-1])[0], x[1:], reduction="sum").item()
                count += m
    assert rows[0]["tokens"] == count == sum(lengths)
    assert rows[0]["loss"] == pytest.approx(total / count, rel=1e-6)
