"""Selective attention (Leviathan et al. 2025, arXiv:2410.02703) against x-transformers' selective_attn, and DAPE
(Zheng et al. 2024, arXiv:2405.14722) against the authors' AliBi_DAPE / _DAPE modules (chuanyang-Zheng/DAPE), in
logits and gradients at default and gapped positions (issue 35). The models and the reference forward are
tests/test_gated_attention.py's."""

import math

import pytest
import torch
import torch.nn.functional as F
from test_gated_attention import GAPPED, T, build, check_parity, loss_of, reference_forward

from lenx import attention, modifiers


def xt_selective_attn(sim):
    """x-transformers' selective_attn(sim) (sim_head_gate None: the first head; no_mask_sos True), verbatim in
    behaviour; sim (B, H, i, j) already causally masked."""
    i, j = sim.shape[-2:]
    gate = F.relu(sim[:, 0])
    gate = gate.clone()
    gate[..., -i] = 0.0
    eye = torch.eye(i)
    if j > i:
        eye = F.pad(eye, (j - i, 0), value=1.0)
    gate = (1.0 - eye) * gate
    gate = F.pad(gate, (0, 0, 1, -1), value=0.0)
    gate = gate.cumsum(dim=-2)
    return sim - gate[:, None]


def selective_layer(attn, h, layer, q, k, v):
    T_ = q.shape[2]
    sim = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    sim = sim.masked_fill(torch.ones(T_, T_, dtype=torch.bool).triu(1), -torch.finfo(sim.dtype).max)
    return xt_selective_attn(sim).softmax(-1) @ v


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("at", ["default", "gapped"])
def test_selective_attention_matches_x_transformers(at, chunked, monkeypatch):
    if chunked:  # 5 queries per chunk: F carried over the chunks before
        monkeypatch.setattr(attention, "CHUNK_LOGITS", 2 * 4 * T * 5)
    check_parity(build("selective"), selective_layer, None if at == "default" else GAPPED, {"mask"})


def test_selective_on_rope_and_with_the_weights_path():
    """attn.selective on RoPE: z^0 is the first head's rotated logits; stick-breaking's path hosts it too."""
    model = build("rope", {"selective": True})
    check_parity(model, selective_layer, None, {"mask"})
    model = build("shaw_kv", {"selective": True})
    with torch.no_grad(), attention.traced() as seen:
        out = model(torch.randint(0, 50, (1, T)))
    assert set(seen) == {"weights"} and torch.isfinite(out).all()


def authors_alibi_dape(x, slopes, mlp2):
    """AliBi_DAPE.forward(x) for x (B, H, T, T) = q.k / sqrt(D), as the authors' module computes it."""
    T_ = x.shape[-1]
    a = -torch.tril(torch.arange(T_).view(T_, 1).repeat(1, T_) + torch.arange(0, -T_, -1)).to(x.dtype)
    a = a * slopes.view(-1, 1, 1)
    x_a_bias = torch.cat((x, torch.tile(a, (x.shape[0], 1, 1, 1))), dim=1)
    x_a_bias = mlp2(torch.permute(x_a_bias, (0, 2, 3, 1))).permute(0, 3, 1, 2)
    return x + a + x_a_bias


def test_dape_matches_the_authors_alibi_dape():
    from lenx.pos.bias import alibi_slopes

    model = build("alibi", {"dape": True})
    mlps = []
    for block in model.blocks:  # the authors' nn.Sequential, holding this layer's weights
        mlp2 = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.LeakyReLU(), torch.nn.Linear(32, 4))
        a = block.attn
        mlp2[0].weight, mlp2[0].bias = torch.nn.Parameter(a.dape_w1.T), a.dape_b1
        mlp2[2].weight, mlp2[2].bias = torch.nn.Parameter(a.dape_w2.T), a.dape_b2
        mlps.append(mlp2)
    slopes = alibi_slopes(4)

    def layer(attn, h, n, q, k, v):
        x = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        z = authors_alibi_dape(x, slopes, mlps[n]).masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1),
                                                                float("-inf"))
        return z.softmax(-1) @ v
    x = torch.randint(0, 50, (2, T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), attention.traced() as seen:
        got = model(x)
        want = reference_forward(model, x, torch.arange(T), layer)
    assert set(seen) == {"mask"}
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
    # gradients reach the MLP (lenx's raw parameters; the reference's transposed copies are other tensors)
    model.train()
    loss_of(model(x)).backward()
    assert all(model.blocks[n].attn.dape_w1.grad.abs().sum() > 0 for n in range(2))


@pytest.mark.parametrize("scheme", ["kerple_log", "fire"])
@pytest.mark.parametrize("at", ["default", "gapped"])
def test_dape_on_kerple_and_fire_is_the_same_function_of_their_bias(scheme, at):
    """KERPLE and FIRE as the authors' _DAPE modules: x + a + mlp2(cat(x, a)), a the scheme's bias (0 ahead)."""
    model = build(scheme, {"dape": True})
    pos_T = None if at == "default" else GAPPED
    ref_pos = torch.arange(T) if pos_T is None else pos_T
    ctx = model.pos.context(ref_pos, ref_pos)

    def layer(attn, h, n, q, k, v):
        c = ctx.at_layer(n)
        future = ref_pos[None, :] > ref_pos[:, None]
        a = model.pos.bias(c, None, torch.float32).float().masked_fill(future, 0.0)
        x = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        feats = torch.cat((x, torch.tile(a, (x.shape[0], 1, 1, 1))), dim=1).permute(0, 2, 3, 1)
        mlp = F.leaky_relu(feats @ attn.dape_w1 + attn.dape_b1) @ attn.dape_w2 + attn.dape_b2
        z = (x + a + mlp.permute(0, 3, 1, 2)).masked_fill(future, float("-inf"))
        return z.softmax(-1) @ v
    check_parity(model, layer, pos_T, {"mask"})


def test_dape_init_is_pytorchs_linear_default():
    model = build("alibi", {"dape": True})
    w1 = model.blocks[0].attn.dape_w1
    bound = 8 ** -0.5  # U(+-1/sqrt(fan_in)), fan_in 2H = 8: the authors' nn.Linear
    assert w1.shape == (8, 32) and w1.abs().max() <= bound and w1.abs().max() > 0.8 * bound


def dape_inputs(H: int = 4, t: int = 24, s: int = 40):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, H, t, s, generator=g)
    mask = torch.randn(H, t, s, generator=g).masked_fill(torch.ones(t, s, dtype=torch.bool).triu(s - t + 1),
                                                          float("-inf"))  # causal: future keys hidden
    mlp = (torch.randn(2 * H, 32, generator=g) / 3, torch.randn(32, generator=g) / 3,
           torch.randn(32, H, generator=g) / 6, torch.randn(H, generator=g) / 6)
    return x, mask, mlp


def test_dape_falls_back_to_the_authors_matmuls_where_its_kernel_cannot_compile(monkeypatch):
    """A failed compile (no C++ compiler, an Inductor error): one warning, the eager form's value, and no retry."""
    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("no compiler")

    monkeypatch.setattr(modifiers, "DAPE_FUSED", {"on": True, "fn": broken})
    monkeypatch.setattr(modifiers, "DAPE_FUSED_KEYS", 8)
    x, mask, mlp = dape_inputs()
    want = x + mask + modifiers.dape_term(x, mask.masked_fill(mask == float("-inf"), 0.0), mlp)
    with torch.no_grad(), pytest.warns(UserWarning, match="could not be compiled"):
        got = modifiers.dape_logits(x, mask, mlp)
    torch.testing.assert_close(got, want)
    with torch.no_grad():
        modifiers.dape_logits(x, mask, mlp)
    assert len(calls) == 1 and not modifiers.DAPE_FUSED["on"]


def test_dape_unrolled_is_the_authors_mlp():
    """The form the kernel is compiled from, run eagerly: x + a + the authors' concatenation and matmuls' value,
    hidden keys kept hidden."""
    x, mask, mlp = dape_inputs()
    want = x + mask + modifiers.dape_term(x, mask.masked_fill(mask == float("-inf"), 0.0), mlp)
    got = modifiers.dape_unrolled(x, mask, *mlp)
    assert torch.equal(torch.isinf(got), torch.isinf(want))
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


@pytest.mark.slow
def test_dape_scores_long_chunks_through_its_compiled_kernel(monkeypatch):
    """Scoring over DAPE_FUSED_KEYS keys or more (lowered here) runs the compiled kernel on the weights path, with
    the eager model's logits (the authors' matmuls on the mask path); one compile, ~1-2 min on 2 cores, then
    cached on disk by Inductor."""
    monkeypatch.setattr(modifiers, "DAPE_FUSED", {"on": True, "fn": None})
    monkeypatch.setattr(modifiers, "DAPE_FUSED_KEYS", 16)
    model = build("alibi", {"dape": True})
    x = torch.randint(0, 50, (1, 96), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        with attention.traced() as seen:
            got = model(x)
        assert set(seen) == {"weights"}  # the MLP's logits softmaxed, no recompute
        assert modifiers.DAPE_FUSED["fn"] is not None and modifiers.DAPE_FUSED["on"]  # compiled and ran
        monkeypatch.setitem(modifiers.DAPE_FUSED, "on", False)
        want = model(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mods", [{"dape": True}, {"selective": True}, {"forget": True}, {"stickbreaking": True}])
def test_fire_with_a_modifier_scores_in_chunks_from_its_own_chunk_mask(mods, monkeypatch):
    """FIRE with a modifier that the general path runs, scoring in chunks: each chunk's bias comes from FIRE's
    chunk_mask (never its per-pair `bias`: one pass per head instead of a log, bucketize and gather per pair),
    with the logits of attention=reference (FIRE's MLP per pair). init_L 8: most queries past FIRE's threshold."""
    model = build("fire", mods, init_L=8.0)
    x = torch.randint(0, 50, (2, 160), generator=torch.Generator().manual_seed(4))
    monkeypatch.setattr(attention, "CHUNK_LOGITS", 2 * 4 * 160 * 24)  # chunks of a few queries, each its own keys
    with torch.no_grad():
        model.attention = "reference"
        want = model(x)
        model.attention = "sdpa"

        def per_pair(*args, **kwargs):
            raise AssertionError("FIRE.bias called: the chunk's bias was not FIRE's chunk_mask")

        monkeypatch.setattr(type(model.pos), "bias", per_pair)
        with attention.traced() as seen:
            got = model(x)
    assert set(seen) <= {"mask", "weights"} and seen, seen
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
