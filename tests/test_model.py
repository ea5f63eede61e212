"""Contracts every positional scheme must satisfy, and closed-form parity for the ones with one."""

import math
from dataclasses import replace

import pytest
import torch
from conftest import SCHEMES, make_model

from lenx.errors import ConfigError, OutOfRangeError
from lenx.model import Decoder
from lenx.pos.base import PositionalScheme
from lenx.pos.bias import ALiBi, alibi_slopes

TRAIN_LEN = 16


def make(scheme: str, **kw) -> Decoder:
    return make_model(scheme, train_len=TRAIN_LEN, **kw)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_shapes_and_causality(scheme):
    model = make(scheme)
    idx = torch.randint(0, 50, (2, TRAIN_LEN))
    logits = model(idx)
    assert logits.shape == (2, TRAIN_LEN, 50)
    t = 9
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % 50
    after = model(changed)
    torch.testing.assert_close(after[:, :t], logits[:, :t], rtol=0, atol=1e-6)  # the past never sees the future
    assert not torch.allclose(after[:, t:], logits[:, t:])  # ... while the changed token itself matters


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s != "learned"])
def test_finite_at_16x(scheme):
    model = make(scheme)
    logits = model(torch.randint(0, 50, (1, 16 * TRAIN_LEN)))
    assert torch.isfinite(logits).all()


def test_learned_refuses_past_its_table_only():
    model = make("learned")
    assert torch.isfinite(model(torch.randint(0, 50, (1, TRAIN_LEN)))).all()
    with pytest.raises(OutOfRangeError, match="out of range"):
        model(torch.randint(0, 50, (1, TRAIN_LEN + 1)))


def test_nope_hooks_are_identity_and_order_blind():
    pos = PositionalScheme(d_model=8, n_heads=2, head_dim=4, train_len=4)
    x, q, k = torch.randn(1, 3, 8), torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    p = torch.arange(3)
    assert pos.embed(x, p) is x
    ctx = pos.context(p, p)
    assert ctx.cos_TD is None and pos.bias(ctx, 0, torch.float32) is None and not pos.adds_bias
    assert pos.rotate(q, k, ctx) == (q, k)
    # With no positions, one layer's last output depends on the SET of earlier tokens, not their order.
    model = make("none", n_layers=1)
    idx = torch.tensor([[5, 7, 11, 13, 3]])
    perm = torch.tensor([[13, 5, 11, 7, 3]])
    torch.testing.assert_close(model(idx)[:, -1], model(perm)[:, -1], rtol=1e-5, atol=1e-5)
    alibi = make("alibi", n_layers=1)  # ... whereas a positional scheme sees the order
    assert not torch.allclose(alibi(idx)[:, -1], alibi(perm)[:, -1], atol=1e-4)


def reference_alibi_slopes(n):
    """The closed form of arXiv:2108.12409, written independently: 2^(-8i/n) for powers of two."""
    def pow2(n):
        return [2 ** (-8 * (i + 1) / n) for i in range(n)]
    if math.log2(n) % 1 == 0:
        return pow2(n)
    c = 2 ** int(math.log2(n))
    return pow2(c) + [2 ** (-8 * (i + 1) / (2 * c)) for i in range(0, 2 * c, 2)][: n - c]


@pytest.mark.parametrize("n", [6, 8, 12])
def test_alibi_slopes_closed_form(n):
    torch.testing.assert_close(alibi_slopes(n), torch.tensor(reference_alibi_slopes(n)), rtol=1e-6, atol=0)


def test_alibi_slopes_known_values():
    # 8 heads: 1/2, 1/4, ..., 1/256 (the paper, sec. 3); 6 heads: 4 heads' slopes then 8 heads' 1st, 3rd.
    assert alibi_slopes(8).tolist() == [2.0 ** -i for i in range(1, 9)]
    assert alibi_slopes(6).tolist() == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]


def test_alibi_bias_matches_formula_and_is_shift_invariant():
    pos = ALiBi(d_model=16, n_heads=4, head_dim=4, train_len=8)
    p = torch.arange(5)
    bias = pos.context(p, p).bias_HTS
    i, j = 4, 1
    assert bias[2, i, j].item() == pytest.approx(-alibi_slopes(4)[2].item() * (i - j))
    torch.testing.assert_close(pos.context(p + 100, p + 100).bias_HTS, bias)


def test_alibi_attention_matches_explicit_softmax():
    """One layer's attention output against softmax(QK^T/sqrt(d) + bias + causal mask) V written out by hand."""
    model = make("alibi", n_layers=1, n_heads=4, d_model=16)
    attn = model.blocks[0].attn
    x = torch.randn(1, 6, 16)
    p = torch.arange(6)
    ctx = model.pos.context(p, p)
    from lenx.attention import plan
    from lenx.pos.base import causal

    mask = causal(ctx.bias_HTS, p, p)  # an explicit (H, T, S) mask, positions given: the gathered bias, no Toeplitz
    got = attn(x, model.pos, ctx, replace(plan(model.pos, ctx, batch=1, dtype=torch.float32, contiguous=False),
                                          mask_HTS=mask))
    q, k, v = attn.qkv(x).view(1, 6, 3, 4, 4).permute(2, 0, 3, 1, 4)
    scores = q @ k.transpose(-1, -2) / 2.0 - alibi_slopes(4)[:, None, None] * (p[:, None] - p[None, :])
    scores = scores.masked_fill(p[None, :] > p[:, None], float("-inf"))
    ref = attn.proj((scores.softmax(-1) @ v).transpose(1, 2).reshape(1, 6, 16))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad, match", [
    (dict(n_heads=3), "does not divide"),
    (dict(d_model=0), "positive integer"),
])
def test_bad_shapes_are_refused(bad, match):
    with pytest.raises(ConfigError, match=match):
        make("none", **{"n_heads": 2, "d_model": 32, **bad})


def test_learned_table_interpolation():
    plain = make("learned")
    interp = make("learned", interpolate=True)
    idx = torch.randint(0, 50, (1, TRAIN_LEN))
    torch.testing.assert_close(interp(idx), plain(idx), rtol=0, atol=0)  # within the table: unchanged
    x = torch.zeros(1, 2 * TRAIN_LEN, 32)
    pe = interp.pos.embed(x, torch.arange(2 * TRAIN_LEN))[0]
    table = interp.pos.table.weight.detach()
    torch.testing.assert_close(pe[0], table[0])
    torch.testing.assert_close(pe[-1], table[-1])
    frac = 5 * (TRAIN_LEN - 1) / (2 * TRAIN_LEN - 1)  # position 5 of 32 reads row 5 x 15 / 31
    lo = int(frac)
    torch.testing.assert_close(pe[5], (1 - (frac - lo)) * table[lo] + (frac - lo) * table[lo + 1])
    with pytest.raises(ConfigError, match="interpolate must be true or false"):
        make("learned", interpolate="yes")
