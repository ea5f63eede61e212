"""p-RoPE (Barbero et al. 2025, arXiv:2410.06205) and HoPE (Chen et al. 2025, arXiv:2410.21216) against their
references written out here independently of lenx: the authors' `apply_rope(..., rope_proportion=p)` of
google-deepmind/gemma (gemma/gm/math/_positional_embeddings.py) for p-RoPE, and the closest public HoPE code
(0-5788719150923125/praxis, praxis/encoding/hope.py: frequencies above 2 pi / L rotate, the rest pass through) for
HoPE, in fp64. Logits and their gradients with respect to q and k, at default and gapped positions; p = 1 is RoPE
exactly; the removed channels carry no position."""

import math

import numpy as np
import pytest
import torch
from conftest import make_model

from lenx import positions
from lenx.errors import ConfigError

B, H, D = 2, 2, 16  # make_model(d_model=32, n_heads=2): head dim 16, 8 frequency pairs


def gemma_apply_rope(x_BLND, pos_BL, base=10000.0, rope_proportion=1.0, scale_factor=1.0):
    """google-deepmind/gemma `apply_rope`, line for line in torch fp64 (jnp -> torch): the timescales of the pairs
    past int(rope_proportion * D // 2) are padded with inf, so their angle is 0."""
    head_dim = x_BLND.shape[-1]
    rope_angles = int(rope_proportion * head_dim // 2)
    nope_angles = head_dim // 2 - rope_angles
    freq_exponents = (2.0 / head_dim) * torch.arange(0, rope_angles, dtype=torch.float64)
    timescale = torch.cat([base ** freq_exponents, torch.full((nope_angles,), math.inf, dtype=torch.float64)])
    sinusoid_inp = pos_BL.double()[..., None] / timescale[None, None, :]
    sinusoid_inp = sinusoid_inp[..., None, :] / scale_factor
    sin, cos = torch.sin(sinusoid_inp), torch.cos(sinusoid_inp)
    first_half, second_half = torch.chunk(x_BLND, 2, dim=-1)
    return torch.cat([first_half * cos - second_half * sin, second_half * cos + first_half * sin], dim=-1)


def praxis_hope_rotate(x_BHTD, pos_T, train_len, base=10000.0):
    """praxis `HoPE`: inv_freq = 1 / base^(2f/D), kept where > 2 pi / L (the highest one if none), rotating the first
    2 * kept channels in adjacent pairs (2f, 2f + 1) and passing the rest through; fp64."""
    head_dim = x_BHTD.shape[-1]
    full = 1.0 / (base ** (2 * torch.arange(0, head_dim // 2, dtype=torch.float64) / head_dim))
    kept = full[full > 2.0 * math.pi / train_len]
    if kept.numel() == 0:
        kept = full[:1]
    pos_dim = 2 * kept.numel()
    angle = pos_T.double()[:, None] * kept[None, :]  # (T, kept)
    x_rot, x_pass = x_BHTD[..., :pos_dim], x_BHTD[..., pos_dim:]
    a, b = x_rot[..., 0::2], x_rot[..., 1::2]
    turned = torch.stack([a * angle.cos() - b * angle.sin(), b * angle.cos() + a * angle.sin()], -1).flatten(-2)
    return torch.cat([turned, x_pass], -1)


def half_split_to_adjacent(x_BHTD):
    """The channel permutation taking lenx's half-split pairs (f, f + D/2) to adjacent pairs (2f, 2f + 1): q . k is
    unchanged by it, so logits compare directly."""
    first, second = torch.chunk(x_BHTD, 2, -1)
    return torch.stack([first, second], -1).flatten(-2)


def lenx_rotate(pos, q, k, pos_T):
    ctx = pos.context(pos_T, pos_T)
    return pos.rotate(q, k, ctx)


def qk(seed=0, T=9):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, D, generator=g, dtype=torch.float64).float().requires_grad_(),
            torch.randn(B, H, T, D, generator=g, dtype=torch.float64).float().requires_grad_())


def logits_and_grads(q, k, q_rot, k_rot):
    """q_rot k_rot^T / sqrt(D), and the gradients of a fixed random weighting of it with respect to q and k."""
    logits = q_rot @ k_rot.transpose(-1, -2) / math.sqrt(D)
    w = torch.randn(logits.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(logits.dtype)
    gq, gk = torch.autograd.grad((logits * w).sum(), (q, k))
    return logits.detach(), gq, gk


DEFAULT = torch.arange(9)
GAPPED = torch.tensor([0, 3, 4, 17, 40, 41, 90, 150, 233])  # positions with gaps (positions=randomized-like)


@pytest.mark.parametrize("pos_T", [DEFAULT, GAPPED], ids=["default", "gapped"])
@pytest.mark.parametrize("p", [0.75, 0.25, 0.5, 1.0, 0.0])
def test_p_rope_equals_gemmas_apply_rope(pos_T, p):
    pos = make_model("p_rope", d_model=32, n_heads=2, p=p).pos
    q, k = qk()
    got = logits_and_grads(q, k, *lenx_rotate(pos, q, k, pos_T))
    qd, kd = (x.detach().double().requires_grad_() for x in (q, k))
    ref_rot = (gemma_apply_rope(x.transpose(1, 2), pos_T[None].expand(B, -1), rope_proportion=p).transpose(1, 2)
               for x in (qd, kd))
    want = logits_and_grads(qd, kd, *ref_rot)
    for a, b in zip(got, want):  # fp32 angles against fp64 (positions up to 233)
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("pos_T", [DEFAULT, GAPPED], ids=["default", "gapped"])
@pytest.mark.parametrize("train_len", [16, 64, 512, 4])
def test_hope_logits_equal_the_reference(pos_T, train_len):
    pos = make_model("hope", d_model=32, n_heads=2, train_len=train_len).pos
    q, k = qk(1)
    got = logits_and_grads(q, k, *lenx_rotate(pos, q, k, pos_T))
    qd, kd = (x.detach().double().requires_grad_() for x in (q, k))
    # the same model with its channels permuted to praxis's adjacent pairs: same logits, gradients permuted back
    ref_rot = (praxis_hope_rotate(half_split_to_adjacent(x), pos_T, train_len) for x in (qd, kd))
    want = logits_and_grads(qd, kd, *ref_rot)
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("train_len, head_dim, kept", [(64, 16, 3), (16, 16, 1), (512, 16, 4), (4, 16, 1),
                                                       (64, 32, 5), (2048, 64, 21)])
def test_hope_keeps_the_frequencies_with_a_period_shorter_than_the_training_length(train_len, head_dim, kept):
    """theta_f = 10000^(-2f/D) > 2 pi / L, counted by hand (D = 16, L = 64: 1, 0.32, 0.1 > 0.098; 0.032 is not);
    L = 4 keeps none, and the reference then keeps theta_0."""
    pos = make_model("hope", d_model=2 * head_dim, n_heads=2, train_len=train_len).pos
    assert pos.kept_pairs() == kept
    inv_freq, _ = pos.frequencies(train_len)
    assert (inv_freq[:kept] > 0).all() and (inv_freq[kept:] == 0).all()
    assert torch.equal(pos.frequencies(16 * train_len)[0], inv_freq)  # the kept set does not move with the length


@pytest.mark.parametrize("p, kept", [(0.75, 6), (0.25, 2), (0.5, 4), (1.0, 8), (0.0, 0), (0.3, 2)])
def test_p_rope_keeps_int_p_d_over_2_pairs_at_ropes_frequencies(p, kept):
    pos = make_model("p_rope", d_model=32, n_heads=2, p=p).pos
    rope = make_model("rope", d_model=32, n_heads=2).pos
    inv_freq, rope_freq = pos.frequencies(16)[0], rope.frequencies(16)[0]
    assert pos.kept_pairs() == kept == int(p * D // 2)
    assert torch.equal(inv_freq[:kept], rope_freq[:kept])  # the kept frequencies keep their values
    assert (inv_freq[kept:] == 0).all()  # the lowest ones (the last indices) are removed


def gapped_positions(T):
    return torch.from_numpy(positions.Randomized(max_len=300).draw(T, np.random.default_rng(0)))


@pytest.mark.parametrize("gapped", [False, True], ids=["default", "gapped"])
def test_p_rope_with_p_1_is_rope_exactly(gapped):
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(3))
    p_rope, rope = make_model("p_rope", p=1.0), make_model("rope")  # same seed: same weights (no scheme parameters)
    args = (idx, gapped_positions(16)) if gapped else (idx,)
    with torch.no_grad():
        assert torch.equal(p_rope(*args), rope(*args))
    # gradients too, through a training-mode step
    p_rope.train(), rope.train()
    grads = []
    for model in (p_rope, rope):
        model.zero_grad()
        model(*args).logsumexp(-1).sum().backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


@pytest.mark.parametrize("scheme, over", [("p_rope", {}), ("p_rope", {"p": 0.25}), ("hope", {})])
def test_removed_channels_carry_no_position(scheme, over):
    """q and k living in the removed pairs only: rotated q, k equal q, k, and their logits are the same at any
    positions (a shift, gaps, 16x the training length); in the kept pairs, positions change them."""
    pos = make_model(scheme, d_model=32, n_heads=2, **over).pos
    kept = pos.kept_pairs()
    removed = torch.zeros(D, dtype=torch.bool)
    removed[kept:D // 2] = removed[D // 2 + kept:] = True
    q, k = (x.detach() for x in qk(2, T=8))
    qr, kr = q * removed, k * removed
    far = torch.tensor([0, 5, 9, 60, 61, 100, 200, 255])
    for pos_T in (torch.arange(8), torch.arange(8) + 1000, far):
        q_rot, k_rot = lenx_rotate(pos, qr, kr, pos_T)
        assert torch.equal(q_rot, qr) and torch.equal(k_rot, kr)
    q_kept, k_kept = q * ~removed, k * ~removed
    a = lenx_rotate(pos, q_kept, k_kept, torch.arange(8))
    b = lenx_rotate(pos, q_kept, k_kept, far)
    assert not torch.allclose(a[0] @ a[1].transpose(-1, -2), b[0] @ b[1].transpose(-1, -2), atol=1e-3)


@pytest.mark.parametrize("scheme", ["p_rope", "hope"])
def test_a_rope_scaling_rescales_the_kept_frequencies_as_in_rope(scheme):
    """pos/scaling=pi at factor 4: each kept frequency is RoPE's / 4; the removed stay 0."""
    pi = {"_target_": "lenx.pos.rope_scaling.PI", "factor": 4.0}
    pos = make_model(scheme, d_model=32, n_heads=2, scaling=pi).pos
    rope = make_model("rope", d_model=32, n_heads=2, scaling=pi).pos
    kept = pos.kept_pairs()
    got, want = pos.frequencies(64)[0], rope.frequencies(64)[0]
    assert torch.equal(got[:kept], want[:kept]) and (got[kept:] == 0).all()


def test_bad_settings_are_one_line_refusals():
    with pytest.raises(ConfigError, match=r"p_rope p .* must be in \[0, 1\]"):
        make_model("p_rope", p=1.5)
    with pytest.raises(ConfigError, match="rotary_fraction"):
        make_model("hope", rotary_fraction=0.5)
