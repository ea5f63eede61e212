"""The evaluator's protocol: every target scored once, the same targets at every length, per-token means."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lenx.errors import ConfigError
from lenx.extrapolation import (Span, bootstrap_ppl, evaluate_lengths, position_bins, resolve_stride, score_windows,
                                scored_span, windows)

from conftest import make_model


def tiny(scheme="alibi"):
    return make_model(scheme, train_len=8, d_model=16, vocab_size=40)


@pytest.mark.parametrize("n, L, S", [(64, 8, 8), (64, 8, 3), (64, 16, 1), (70, 16, 5), (32, 32, 7)])
def test_windows_score_every_target_exactly_once(n, L, S):
    seen = np.zeros(n, dtype=int)
    for start, offset in windows(n, L, S):
        assert 0 <= start and start + L <= n and 0 <= offset < L
        seen[start + offset:start + L] += 1
    assert (seen == 1).all()
    for start, offset in windows(n, L, S)[1:]:
        assert offset >= L - S  # each later window's targets see at least L - S tokens of context


def test_span_is_shared_and_a_multiple_of_the_longest_window():
    span = scored_span(10_000, 8, [1, 2, 4, 16], 1000)
    assert span.n == 896 and span.n % 128 == 0
    with pytest.raises(ConfigError, match="longer than the evaluation split"):
        scored_span(100, 8, [1, 16], 1000)
    with pytest.raises(ConfigError, match="positive integers"):
        scored_span(10_000, 8, [1, 0], 1000)


def test_stride_equal_to_window_is_nonoverlapping_and_matches_brute_force():
    model, tokens = tiny(), np.random.default_rng(0).integers(0, 40, 200)
    span = Span(0, 96)
    total, count, *_ = score_windows(model, tokens, 16, span, stride=16, batch_tokens=48, device=torch.device("cpu"))
    assert count == 96
    ref = 0.0
    for w in range(6):  # each window on its own
        x = torch.from_numpy(tokens[w * 16:w * 16 + 17].astype(np.int64))
        ref += F.cross_entropy(model(x[None, :-1])[0], x[1:], reduction="sum").item()
    assert total == pytest.approx(ref, rel=1e-6)


def test_sliding_matches_brute_force_per_target_context():
    model, tokens = tiny(), np.random.default_rng(1).integers(0, 40, 200)
    L, S, n = 16, 5, 48
    total, count, pos_sum, pos_cnt, win_sum, win_cnt = score_windows(model, tokens, L, Span(0, n), stride=S,
                                                                     batch_tokens=32, device=torch.device("cpu"))
    assert win_cnt.sum() == n and win_sum.sum() == pytest.approx(total)
    assert count == n and pos_cnt.sum() == n
    ref = 0.0
    for t in range(n):  # target t is scored in the one window whose scored range holds it, with its context
        (start,) = [s for s, o in windows(n, L, S) if s + o <= t < s + L]
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
