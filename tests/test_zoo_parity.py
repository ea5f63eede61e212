"""Parity: the first attention layer of every scheme against its formula written out by hand, in fp32.

softmax(QK^T / sqrt(D) + the scheme's terms, causal) V on small random inputs, to 1e-5, with attention chunked
two query rows at a time; T5 buckets and the shared helpers are in test_zoo.py.
"""

import math

from pathlib import Path

import pytest
import torch
from conftest import SCHEMES
from test_zoo import make, reference_t5_bucket

import lenx.attention

# --- parity: every scheme against its formula, written out by hand ---

T, H, D, C = 9, 2, 8, 16
POS = torch.arange(T) + 5  # not starting at 0: FIRE and absolute schemes read the absolute position


def pairs():
    return [(i, j) for i in range(T) for j in range(T) if j <= i]


def dist(i, j):
    return float(POS[i] - POS[j])


def content(q, k):
    return q @ k.transpose(-1, -2) / math.sqrt(D)


def with_bias(q, k, bias_fn):
    """Content logits plus bias_fn(h, i, j) on every causal pair."""
    logits = content(q, k)
    for h in range(H):
        for i, j in pairs():
            logits[:, h, i, j] += bias_fn(h, i, j)
    return logits


def ref_alibi(pos, q, k):
    slopes = [2 ** (-8 * (h + 1) / H) for h in range(H)]  # 2 heads: 1/16, 1/256
    return with_bias(q, k, lambda h, i, j: -slopes[h] * dist(i, j))


def ref_alibi_learned(pos, q, k):
    return with_bias(q, k, lambda h, i, j: -pos.log_slopes_H[h].exp() * dist(i, j))


def ref_t5(pos, q, k):
    return with_bias(q, k, lambda h, i, j: pos.table_NH[
        reference_t5_bucket(-int(dist(i, j)), False, pos.num_buckets, pos.max_distance), h])


def ref_kerple_log(pos, q, k):
    return with_bias(q, k, lambda h, i, j: -pos.scale_H[h] * torch.log(1 + pos.rate_H[h] * dist(i, j)))


def ref_kerple_power(pos, q, k):
    return with_bias(q, k, lambda h, i, j: -pos.scale_H[h] * (torch.tensor(dist(i, j)) ** pos.power_H[h]
                                                              if i != j else 0.0))


def ref_sandwich(pos, q, k):
    def bias(h, i, j):
        dot = sum(math.cos(dist(i, j) / 10000 ** (2 * m / D)) for m in range(1, D // 2 + 1))  # d' = D
        return (dot - D / 2) / (8 * (h + 1) / H)
    return with_bias(q, k, bias)


def ref_fire(pos, q, k):
    c, L = pos.c_N[0], abs(pos.L_mult_N[0]) * pos.init_L  # tensors: the gradient test differentiates through them

    def bias(h, i, j):
        norm = torch.log(abs(c) * torch.clamp(L, min=float(POS[i])) + 1) + 1e-6
        x = torch.log(abs(c) * dist(i, j) + 1) / norm
        hidden = torch.relu(pos.w1_NW[0] * x + pos.b1_NW[0])
        return hidden @ pos.w2_NWH[0, :, h] + pos.b2_NH[0, h]
    return with_bias(q, k, bias)


def ref_shaw(pos, q, k):
    kk = pos.max_distance
    logits = content(q, k)
    for i, j in pairs():
        a = pos.key_NRD[0, max(-kk, min(kk, j - i)) + kk]
        logits[:, :, i, j] += q[:, :, i] @ a / math.sqrt(D)
    return logits


def value_shaw_kv(pos, attn):
    kk = pos.max_distance
    out = torch.zeros(*attn.shape[:3], D)
    for i, j in pairs():
        out[:, :, i] += attn[:, :, i, j, None] * pos.value_NRD[0, max(-kk, min(kk, j - i)) + kk]
    return out


def sinusoid(d, dim):
    return torch.tensor([math.sin(d / 10000 ** (2 * (c // 2) / dim)) if c % 2 == 0 else
                         math.cos(d / 10000 ** (2 * (c // 2) / dim)) for c in range(dim)])


def ref_transformer_xl(pos, q, k):
    logits = content(q, k)
    for h in range(H):
        u, v = pos.u_HD[h], pos.v_HD[h]
        for i, j in pairs():
            r = (pos.w_r_NEC[0] @ sinusoid(dist(i, j), C))[h * D:(h + 1) * D]  # W_R R_{i-j}, this head's slice
            logits[:, h, i, j] += (k[:, h, j] @ u + (q[:, h, i] + v) @ r) / math.sqrt(D)
    return logits


def ref_deberta(pos, q, k):
    # microsoft/DeBERTa's indexing: row clamp(i - j + k, 0, 2k - 1) of the 2k relative embeddings for both terms,
    # all three terms over sqrt(3D) (test_fidelity.py checks it against the code's gather formulation).
    kk = pos.max_distance

    def row(r, w, h, b=None):
        out = w @ pos.rel_RC[max(0, min(2 * kk - 1, r + kk))]
        return (out if b is None else out + b)[h * D:(h + 1) * D]
    logits = q @ k.transpose(-1, -2) / math.sqrt(3 * D)
    for h in range(H):
        for i, j in pairs():
            c2p = q[:, h, i] @ row(i - j, pos.w_kr_NEC[0], h)
            p2c = k[:, h, j] @ row(i - j, pos.w_qr_NEC[0], h, pos.b_qr_NE[0])
            logits[:, h, i, j] += (c2p + p2c) / math.sqrt(3 * D)
    return logits


def ref_cope(pos, q, k):
    logits = content(q, k)
    extra = torch.zeros_like(logits)
    for i, j in pairs():
        gates = torch.sigmoid(logits[:, :, i, j:i + 1])  # keys j..i
        p = gates.sum(-1).clamp(max=pos.npos_max - 1)  # (B, H)
        lo, hi = p.floor(), p.ceil()
        e_lo = pos.pos_emb_NDP[0].T[lo.long()]  # (B, H, D)
        e_hi = pos.pos_emb_NDP[0].T[hi.long()]
        e = e_lo + (p - lo)[..., None] * (e_hi - e_lo)
        extra[:, :, i, j] = (q[:, :, i] * e).sum(-1)
    return logits + extra


def rotate_pairs(x, cos, sin):
    """Channel f turns with channel f + r/2 (the half-split layout), for the first r = 2 len(cos) channels."""
    r = 2 * cos.shape[-1]
    a, b = x[..., : r // 2], x[..., r // 2: r]
    return torch.cat((a * cos - b * sin, b * cos + a * sin, x[..., r:]), -1)


def ref_rotary(q, k, rotary_dim):
    theta = torch.tensor([10000 ** (-2 * f / rotary_dim) for f in range(rotary_dim // 2)])
    angle = POS[:, None].float() * theta
    return content(rotate_pairs(q, angle.cos(), angle.sin()), rotate_pairs(k, angle.cos(), angle.sin()))


def ref_rope(pos, q, k):
    return ref_rotary(q, k, D)


def ref_rope_partial(pos, q, k):
    return ref_rotary(q, k, D // 4)  # rotary_fraction 0.25


def ref_truncated(q, k, kept):
    """RoPE over the whole head dim with pairs f >= kept not rotated (angle 0): p-RoPE, HoPE."""
    theta = torch.tensor([10000 ** (-2 * f / D) if f < kept else 0.0 for f in range(D // 2)])
    angle = POS[:, None].float() * theta
    return content(rotate_pairs(q, angle.cos(), angle.sin()), rotate_pairs(k, angle.cos(), angle.sin()))


def ref_p_rope(pos, q, k):
    return ref_truncated(q, k, int(0.75 * D // 2))  # p = 0.75: 3 of 4 pairs


def ref_hope(pos, q, k):
    return ref_truncated(q, k, 2)  # train_len 64: theta = 1, 0.1 > 2 pi / 64 = 0.098; 0.01, 0.001 are not


def ref_xpos(pos, q, k):
    theta = torch.tensor([10000 ** (-2 * f / D) for f in range(D // 2)])
    zeta = torch.tensor([(2 * f / D + 0.4) / 1.4 for f in range(D // 2)])
    angle = POS[:, None].float() * theta
    qr = rotate_pairs(q, angle.cos(), angle.sin())
    kr = rotate_pairs(k, angle.cos(), angle.sin())
    logits = torch.zeros(q.shape[0], H, T, T)
    for i, j in pairs():  # pair f's product decays as zeta_f^((i - j) / 512)
        decay = torch.cat([zeta, zeta]) ** (dist(i, j) / 512)
        logits[:, :, i, j] = (qr[:, :, i] * kr[:, :, j] * decay).sum(-1) / math.sqrt(D)
    return logits


def ref_fope(pos, q, k):
    w = [10000 ** (-2 * f / D) for f in range(D // 2)]
    kept = [x for x in w if x >= 2 * math.pi / pos.train_len]
    assert len(kept) == 2  # the test exercises two kept frequencies and two zeroed ones
    logits = torch.zeros(q.shape[0], H, T, T)
    for h in range(H):
        cos = torch.ones(T, D // 2)  # pairs past min(K, D/4) = 2: cos' = sin' = 1, as the authors' F.pad(value=1)
        sin = torch.ones(T, D // 2)
        for t in range(T):
            for m in range(len(kept)):
                n_t = float(POS[t])
                cos[t, m] = sum(pos.cos_coef_NHKM[0, h, n, m] * math.cos(w_n * n_t) for n, w_n in enumerate(kept))
                sin[t, m] = sum(pos.sin_coef_NHKM[0, h, n, m] * math.sin(w_n * n_t) for n, w_n in enumerate(kept))
        logits[:, h] = content(rotate_pairs(q[:, h], cos, sin), rotate_pairs(k[:, h], cos, sin))
    return logits


def ref_plain(pos, q, k):
    return content(q, k)


def embed_sinusoidal(pos, x, idx):
    return x + pos.scale * torch.stack([sinusoid(float(p), C) for p in POS])


def embed_learned(pos, x, idx):
    return x + pos.table.weight[POS]


def embed_cpe(pos, x, idx):
    w, b, n = pos.conv.weight[:, 0], pos.conv.bias, pos.kernel_size  # w: (C, n)
    out = x + b
    for t in range(T):
        for s in range(n):  # cross-correlation over x[t - n + 1 .. t], zeros before the start
            if t - n + 1 + s >= 0:
                out[:, t] = out[:, t] + w[:, s] * x[:, t - n + 1 + s]
    return out


def abacus_places_reference(mask):
    """mcleish7/arithmetic abacus.py, Abacus.helper, as released: each digit's place in its run of digits."""
    shifted = torch.cat([torch.zeros((mask.shape[0], 1), dtype=mask.dtype), mask[:, :-1]], dim=1)
    starts = (shifted != mask) & mask
    segment_ids = torch.cumsum(starts, dim=1)
    index = torch.arange(mask.size(1)).repeat(mask.size(0), 1)
    reset_index = torch.zeros_like(mask).long().scatter_add(1, segment_ids, index * starts.long())
    return (index - reset_index.gather(1, segment_ids) + 1) * mask


def embed_abacus(pos, x, idx):  # Abacus.forward in eval mode (k = 0): the table at each token's place
    return x + pos.table.weight[abacus_places_reference(torch.isin(idx, pos.digit_ids))]


REFERENCE = {  # scheme: (logits of the first layer, input embedding, extra config)
    "abacus": (ref_plain, embed_abacus, {}),
    "none": (ref_plain, None, {}),
    "sinusoidal": (ref_plain, embed_sinusoidal, {}),
    "learned": (ref_plain, embed_learned, {}),
    "cpe": (ref_plain, embed_cpe, {}),
    "alibi": (ref_alibi, None, {}),
    "alibi_learned": (ref_alibi_learned, None, {}),
    "t5": (ref_t5, None, dict(num_buckets=8, max_distance=6)),  # distances 0..8: exact, log, clamped buckets
    "kerple_log": (ref_kerple_log, None, {}),
    "kerple_power": (ref_kerple_power, None, {}),
    "sandwich": (ref_sandwich, None, {}),
    "fire": (ref_fire, None, {}),
    "shaw": (ref_shaw, None, dict(max_distance=3)),  # distances past 3 clip
    "shaw_kv": (ref_shaw, None, dict(max_distance=3)),
    "transformer_xl": (ref_transformer_xl, None, {}),
    "deberta": (ref_deberta, None, dict(max_distance=3)),
    "cope": (ref_cope, None, dict(npos_max=4)),  # counted positions reach the clamp
    "rope": (ref_rope, None, {}),
    "rope_partial": (ref_rope_partial, None, {}),
    "xpos": (ref_xpos, None, {}),
    "fope": (ref_fope, None, {}),
    "p_rope": (ref_p_rope, None, {}),
    "hope": (ref_hope, None, {}),
}


# Schemes whose mechanism is no softmax of positional logits, or differs per layer: their parity with the authors'
# code (outputs and gradients, default and gapped positions) is in tests/test_gated_attention.py, test_hybrids.py and test_selective_dape.py
ELSEWHERE = ["fox", "fox_pro", "irope", "rnope_swa", "rope_nope", "selective", "stickbreaking"]


def test_every_scheme_has_a_reference():
    assert sorted([*REFERENCE, *ELSEWHERE]) == SCHEMES
    gated = "".join((Path(__file__).parent / f).read_text()  # the mechanisms' parity tests, in three files
                    for f in ("test_gated_attention.py", "test_hybrids.py", "test_selective_dape.py"))
    for scheme in ELSEWHERE:  # each built, and so compared with its reference, there
        assert f'build("{scheme}"' in gated, scheme


@pytest.mark.parametrize("scheme", sorted(REFERENCE))
def test_parity_with_the_formula(scheme, monkeypatch):
    """The first layer's attention output == softmax(QK^T/sqrt(D) + positional terms, causal) V, by hand."""
    ref_logits, ref_embed, over = REFERENCE[scheme]
    model = make(scheme, train_len=64, n_layers=1, n_heads=H, d_model=C, **over)
    gen = torch.Generator().manual_seed(3)
    for p in model.pos.parameters():  # random values everywhere: zero-initialised tables must not hide a term
        p.data.normal_(0, 0.5, generator=gen)
    if scheme == "fire":
        model.pos.L_mult_N.data.fill_(0.0125)  # threshold 6.4: some queries normalise by L, later ones by i
    attn = model.blocks[0].attn
    attn.qkv.weight.data.normal_(0, 0.3, generator=gen)  # logits of order 1, so every term matters
    seen = {}
    attn.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], y=out))
    monkeypatch.setattr(lenx.attention, "CHUNK_LOGITS", 2 * H * 2 * T)  # B x H x 2 rows x S: parity, chunked
    idx = torch.randint(0, 50, (2, T), generator=gen)
    model(idx, POS)
    if ref_embed is not None:  # the input embedding, then the first LayerNorm, by hand
        x = ref_embed(model.pos, model.tok(idx), idx)
        torch.testing.assert_close(seen["x"], model.blocks[0].ln1(x), rtol=1e-5, atol=1e-5)
    q, k, v = attn.qkv(seen["x"]).view(2, T, 3, H, D).permute(2, 0, 3, 1, 4)
    logits = ref_logits(model.pos, q, k)
    future = POS[None, :] > POS[:, None]
    weights = logits.masked_fill(future, float("-inf")).softmax(-1)
    out = weights @ v
    if scheme == "shaw_kv":
        out = out + value_shaw_kv(model.pos, weights)
    want = attn.proj(out.transpose(1, 2).reshape(2, T, C))
    torch.testing.assert_close(seen["y"], want, rtol=1e-5, atol=1e-5)
    # The gradient of every learned positional parameter through the fused kernel (which also carries the
    # mask's gradient) equals the one through the formula.
    named = [(n, p) for n, p in model.pos.named_parameters() if p.requires_grad]  # FoPE's are frozen
    params = [p for _, p in named]
    if params:
        g = torch.randn(want.shape, generator=gen)
        got = torch.autograd.grad(seen["y"], params, g, retain_graph=True, allow_unused=True)
        ref = torch.autograd.grad(want, params, g, allow_unused=True)
        for (name, _), a, b in zip(named, got, ref):
            assert (a is None) == (b is None), name
            if a is not None:
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
