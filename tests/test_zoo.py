"""The positional zoo: shift invariance, closed forms, parity of every scheme with its formula written out by
hand, chunked attention == unchunked, KERPLE's positivity, and the attention fast path.

The contracts every scheme satisfies (shapes, causality, finite at 16x) are in test_model.py; they run over
every configs/pos/*.yaml automatically.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import lenx.model
import lenx.pos.bias
from lenx.model import Decoder
from lenx.pos.bias import t5_relative_bucket

from conftest import SCHEMES, make_model

# Schemes whose logits depend on i - j (and content) only, and the others; every scheme must be in one list.
RELATIVE = ["alibi", "alibi_learned", "cope", "cpe", "deberta", "kerple_log", "kerple_power", "none", "rope",
            "rope_partial", "sandwich", "shaw", "shaw_kv", "t5", "transformer_xl", "xpos"]
NOT_RELATIVE = ["fire", "fope", "learned", "sinusoidal"]  # FIRE normalises by i; FoPE's cross terms; absolute
# Schemes that add logit terms (attention runs in query chunks), and those that keep SDPA's causal fast path.
CHUNKED = ["alibi", "alibi_learned", "cope", "deberta", "fire", "kerple_log", "kerple_power", "sandwich",
           "shaw", "shaw_kv", "t5", "transformer_xl"]
FAST = ["cpe", "fope", "learned", "none", "rope", "rope_partial", "sinusoidal", "xpos"]


def make(scheme: str, *, d_model: int = 16, **kw) -> Decoder:
    return make_model(scheme, d_model=d_model, **kw)


def test_every_scheme_is_classified():
    assert sorted(RELATIVE + NOT_RELATIVE) == SCHEMES
    assert sorted(CHUNKED + FAST) == SCHEMES


# --- shift invariance ---

def shifted_logits(scheme, shift):
    model = make(scheme, train_len=16)
    gen = torch.Generator().manual_seed(1)
    for p in model.pos.parameters():  # nothing positional left at its (possibly zero) initial value
        p.data.normal_(0, 0.5, generator=gen)
    for block in model.blocks:  # attention logits of order 1, so positions visibly move the output
        block.attn.qkv.weight.data.normal_(0, 0.3, generator=gen)
    idx = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(2))
    base_T = torch.arange(12)
    return model(idx, base_T), model(idx, base_T + shift)


@pytest.mark.parametrize("scheme", RELATIVE)
def test_relative_schemes_are_shift_invariant(scheme):
    at_0, at_100 = shifted_logits(scheme, 100)
    torch.testing.assert_close(at_100, at_0, rtol=0, atol=1e-5)  # rotary angles at 100+ rad: fp32 rounding


@pytest.mark.parametrize("scheme", ["fire", "fope", "sinusoidal"])
def test_shift_test_detects_absolute_positions(scheme):
    at_0, at_100 = shifted_logits(scheme, 100)  # the check above can fail: these see absolute positions
    assert (at_100 - at_0).abs().max() > 1e-3


# --- T5 buckets ---

def reference_t5_bucket(relative_position, bidirectional, num_buckets, max_distance):
    """mesh_tensorflow's transformer_layers._relative_position_bucket, one int at a time (float32 log)."""
    ret = 0
    n = -relative_position
    if bidirectional:
        num_buckets //= 2
        ret += int(n < 0) * num_buckets
        n = abs(n)
    else:
        n = max(n, 0)
    max_exact = num_buckets // 2
    if n < max_exact:
        return ret + n
    # tf.log(tf.to_float(n) / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact), in
    # float32 as TensorFlow computes it, then tf.to_int32 (truncation).
    scaled = torch.log(torch.tensor(n, dtype=torch.float32) / max_exact) / math.log(max_distance / max_exact)
    val_if_large = max_exact + int((scaled * (num_buckets - max_exact)).item())
    return ret + min(val_if_large, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("num_buckets, max_distance", [(32, 128), (8, 20), (64, 1000)])
def test_t5_buckets_match_the_original_function(bidirectional, num_buckets, max_distance):
    rel = torch.arange(-3000, 3001)
    got = t5_relative_bucket(rel, bidirectional=bidirectional, num_buckets=num_buckets,
                             max_distance=max_distance)
    want = [reference_t5_bucket(r, bidirectional, num_buckets, max_distance) for r in rel.tolist()]
    assert got.dtype == torch.long and got.tolist() == want


@pytest.mark.parametrize("rel, bidirectional, want", [
    # causal, 32 buckets, max_distance 128: distances 0..15 exact, then 16 + floor(16 log(n/16) / log 8)
    (0, False, 0), (-5, False, 5), (-15, False, 15), (-16, False, 16),
    (-32, False, 21),  # 16 log 2 / log 8 = 5.33
    (-64, False, 26),  # 16 log 4 / log 8 = 10.67
    (-127, False, 31), (-128, False, 31), (-5000, False, 31),  # 128 and beyond: the last bucket
    (7, False, 0),  # a key after the query: bucket 0 when one-sided
    # bidirectional: 16 buckets a side, 8 exact; keys after the query take buckets 16..31
    (-3, True, 3), (3, True, 19), (-8, True, 8),
    (-20, True, 10),  # 8 + floor(8 log 2.5 / log 16) = 8 + floor(2.64)
    (200, True, 31),
])
def test_t5_buckets_hand_derived(rel, bidirectional, want):
    got = t5_relative_bucket(torch.tensor([rel]), bidirectional=bidirectional, num_buckets=32,
                             max_distance=128)
    assert got.item() == want


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
    return with_bias(q, k, lambda h, i, j: -pos.scale_H[h] * math.log(1 + pos.rate_H[h].item() * dist(i, j)))


def ref_kerple_power(pos, q, k):
    return with_bias(q, k, lambda h, i, j: -pos.scale_H[h] * dist(i, j) ** pos.power_H[h].item())


def ref_sandwich(pos, q, k):
    def bias(h, i, j):
        dot = sum(math.cos(dist(i, j) / 10000 ** (2 * m / 128)) for m in range(1, 65))  # d' = 128
        return (dot - 64) / (8 * (h + 1) / H)
    return with_bias(q, k, bias)


def ref_fire(pos, q, k):
    c, L = pos.c.item(), abs(pos.L_mult.item()) * pos.init_L

    def bias(h, i, j):
        x = math.log(abs(c) * dist(i, j) + 1) / (math.log(abs(c) * max(float(POS[i]), L) + 1) + 1e-6)
        hidden = torch.relu(pos.w1_W * x + pos.b1_W)
        return hidden @ pos.w2_WH[:, h] + pos.b2_H[h]
    return with_bias(q, k, bias)


def ref_shaw(pos, q, k):
    kk = pos.max_distance
    logits = content(q, k)
    for i, j in pairs():
        a = pos.key_RD[max(-kk, min(kk, j - i)) + kk]
        logits[:, :, i, j] += q[:, :, i] @ a / math.sqrt(D)
    return logits


def value_shaw_kv(pos, attn):
    kk = pos.max_distance
    out = torch.zeros(*attn.shape[:3], D)
    for i, j in pairs():
        out[:, :, i] += attn[:, :, i, j, None] * pos.value_RD[max(-kk, min(kk, j - i)) + kk]
    return out


def sinusoid(d, dim):
    return torch.tensor([math.sin(d / 10000 ** (2 * (c // 2) / dim)) if c % 2 == 0 else
                         math.cos(d / 10000 ** (2 * (c // 2) / dim)) for c in range(dim)])


def ref_transformer_xl(pos, q, k):
    logits = content(q, k)
    for h in range(H):
        u, v = pos.u_HD[h], pos.v_HD[h]
        for i, j in pairs():
            r = (pos.w_r_EC @ sinusoid(dist(i, j), C))[h * D:(h + 1) * D]  # W_R R_{i-j}, this head's slice
            logits[:, h, i, j] += (k[:, h, j] @ u + (q[:, h, i] + v) @ r) / math.sqrt(D)
    return logits


def ref_deberta(pos, q, k):
    kk = pos.max_distance

    def row(r, w, h):
        return (w @ pos.rel_RC[max(-kk, min(kk, r)) + kk])[h * D:(h + 1) * D]
    logits = content(q, k)
    for h in range(H):
        for i, j in pairs():
            c2p = q[:, h, i] @ row(i - j, pos.w_kr_EC, h)
            p2c = k[:, h, j] @ row(j - i, pos.w_qr_EC, h)
            logits[:, h, i, j] += (c2p + p2c) / math.sqrt(D)
    return logits


def ref_cope(pos, q, k):
    logits = content(q, k)
    extra = torch.zeros_like(logits)
    for i, j in pairs():
        gates = torch.sigmoid(logits[:, :, i, j:i + 1])  # keys j..i
        p = gates.sum(-1).clamp(max=pos.npos_max - 1)  # (B, H)
        lo, hi = p.floor(), p.ceil()
        e_lo = pos.pos_emb_DP.T[lo.long()]  # (B, H, D)
        e_hi = pos.pos_emb_DP.T[hi.long()]
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
        cos = torch.ones(T, D // 2)
        sin = torch.zeros(T, D // 2)
        for t in range(T):
            for m in range(len(kept)):
                n_t = float(POS[t])
                cos[t, m] = sum(pos.cos_coef_HKK[h, n, m] * math.cos(w_n * n_t) for n, w_n in enumerate(kept))
                sin[t, m] = sum(pos.sin_coef_HKK[h, n, m] * math.sin(w_n * n_t) for n, w_n in enumerate(kept))
        logits[:, h] = content(rotate_pairs(q[:, h], cos, sin), rotate_pairs(k[:, h], cos, sin))
    return logits


def ref_plain(pos, q, k):
    return content(q, k)


def embed_sinusoidal(pos, x):
    return x + pos.scale * torch.stack([sinusoid(float(p), C) for p in POS])


def embed_learned(pos, x):
    return x + pos.table.weight[POS]


def embed_cpe(pos, x):
    w, b, n = pos.conv.weight[:, 0], pos.conv.bias, pos.kernel_size  # w: (C, n)
    out = x + b
    for t in range(T):
        for s in range(n):  # cross-correlation over x[t - n + 1 .. t], zeros before the start
            if t - n + 1 + s >= 0:
                out[:, t] = out[:, t] + w[:, s] * x[:, t - n + 1 + s]
    return out


REFERENCE = {  # scheme: (logits of the first layer, input embedding, extra config)
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
}


def test_every_scheme_has_a_reference():
    assert sorted(REFERENCE) == SCHEMES


@pytest.mark.parametrize("scheme", SCHEMES)
def test_parity_with_the_formula(scheme, monkeypatch):
    """The first layer's attention output == softmax(QK^T/sqrt(D) + positional terms, causal) V, by hand."""
    ref_logits, ref_embed, over = REFERENCE[scheme]
    model = make(scheme, train_len=64, n_layers=1, n_heads=H, d_model=C, **over)
    gen = torch.Generator().manual_seed(3)
    for p in model.pos.parameters():  # random values everywhere: zero-initialised tables must not hide a term
        p.data.normal_(0, 0.5, generator=gen)
    if scheme == "fire":
        model.pos.L_mult.data.fill_(0.1)  # threshold 6.4: some queries normalise by L, later ones by i
    attn = model.blocks[0].attn
    attn.qkv.weight.data.normal_(0, 0.3, generator=gen)  # logits of order 1, so every term matters
    seen = {}
    attn.register_forward_hook(lambda mod, args, out: seen.update(x=args[0], y=out))
    monkeypatch.setattr(lenx.model, "CHUNK_LOGITS", 2 * H * 2 * T)  # B x H x 2 rows x S: parity, chunked
    idx = torch.randint(0, 50, (2, T), generator=gen)
    with torch.no_grad():
        model(idx, POS)
        if ref_embed is not None:  # the input embedding, then the first LayerNorm, by hand
            x = ref_embed(model.pos, model.tok(idx))
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


# --- chunked attention == unchunked ---

@pytest.mark.parametrize("scheme", CHUNKED)
def test_chunked_attention_equals_unchunked(scheme, monkeypatch):
    model = make(scheme, train_len=16, n_layers=2).train()
    gen = torch.Generator().manual_seed(4)
    for p in model.pos.parameters():
        p.data.normal_(0, 0.5, generator=gen)
    idx = torch.randint(0, 50, (2, 37), generator=torch.Generator().manual_seed(5))

    def run():
        model.zero_grad()
        logits = model(idx)
        logits.square().mean().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    whole, whole_grads = run()
    calls = []
    real_sdpa = F.scaled_dot_product_attention
    def spy(*args, **kw):
        calls.append(args[0].shape)
        return real_sdpa(*args, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(lenx.model, "CHUNK_LOGITS", 2 * 2 * 5 * 37)  # B x H x 5 rows x S: 8 chunks, last of 2
    monkeypatch.setattr(lenx.pos.bias, "MLP_VALUES", 3 * 37 * 32)  # FIRE's MLP: 3 query rows at a time
    chunked, chunked_grads = run()
    if scheme != "shaw_kv":  # (Shaw's values run unfused: no SDPA call to count)
        assert sorted({s[2] for s in calls}) == [2, 5]
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    assert chunked_grads.keys() == whole_grads.keys()
    for name, g in whole_grads.items():
        torch.testing.assert_close(chunked_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_fast_path_and_chunks(monkeypatch):
    """No bias or score: SDPA with is_causal and no mask. Otherwise calls of at most CHUNK_LOGITS logits."""
    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kw):
        calls.append((q.shape[2], k.shape[2], attn_mask, is_causal))
        return real_sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(lenx.model, "CHUNK_LOGITS", 2 * 8 * 64)  # H x 8 queries x S
    idx = torch.randint(0, 50, (1, 64))
    for scheme in FAST:
        calls.clear()
        make(scheme, train_len=64)(idx)
        assert calls and all(m is None and causal for _, _, m, causal in calls), scheme
    for scheme in set(CHUNKED) - {"shaw_kv"}:
        calls.clear()
        make(scheme, train_len=64)(idx)
        assert len(calls) == 2 * 8, scheme  # 2 layers x 8 chunks of 8 queries
        assert all(t == 8 and s == 64 and m is not None and not causal for t, s, m, causal in calls), scheme


# --- learned parameters: positivity, state_dict ---

@pytest.mark.parametrize("scheme", ["kerple_log", "kerple_power"])
def test_kerple_parameters_stay_positive(scheme):
    pos = make(scheme).pos
    second = pos.rate_H if scheme == "kerple_log" else pos.power_H
    assert (pos.scale_H > 0).all() and (second > 0).all()
    # Paper's initial ranges: r1 ~ U(0, 2) (log) or U(0, 1) (power), r2 ~ U(0, 1) (log) or U(0, 2) (power).
    assert pos.scale_H.max() <= (2 if scheme == "kerple_log" else 1) + pos.eps + 1e-6
    opt = torch.optim.SGD(pos.parameters(), lr=1e3)
    d_R = torch.arange(100.0)
    for _ in range(20):  # push every parameter hard towards (and past) zero
        opt.zero_grad()
        loss = pos.scale_H.sum() + (pos.rate_H if scheme == "kerple_log" else pos.power_H).sum()
        loss.backward()
        opt.step()
        assert all(torch.isfinite(p).all() for p in pos.parameters())
    second = pos.rate_H if scheme == "kerple_log" else pos.power_H
    assert (pos.scale_H >= pos.eps).all() and (second >= pos.eps).all()
    bias = pos.bias(d_R)
    assert torch.isfinite(bias).all() and (bias <= 0).all() and (bias[:, 0] == 0).all()
    if scheme == "kerple_power":
        for raw in (-1e4, 1e4):
            pos.raw_power_H.data.fill_(raw)
            assert ((pos.power_H > 0) & (pos.power_H <= 2)).all()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_state_dict_holds_learned_parameters_only(scheme):
    model = make(scheme)
    assert set(model.pos.state_dict()) == {n for n, _ in model.pos.named_parameters()}


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s != "learned"])
def test_finite_loss_and_gradients_at_16x(scheme):
    model = make(scheme).train()
    idx = torch.randint(0, 50, (1, 16 * 16 + 1))
    loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[0, 1:])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# --- rotary details ---

def test_xpos_centres_positions_so_scales_stay_finite():
    pos = make("xpos").pos
    p = torch.arange(16)
    near, far = pos.context(p, p), pos.context(p + 10**6, p + 10**6)
    # Uncentred, zeta^(10^6 / 512) underflows to 0 and the keys' inverse overflows; centred, the two agree.
    torch.testing.assert_close(far.scale_TD, near.scale_TD, rtol=0, atol=0)
    assert torch.isfinite(near.scale_TD).all() and (near.scale_TD > 0).all()


def test_fope_keeps_the_frequencies_with_a_full_period_in_the_training_length():
    # head_dim 64, train_len 512: 10000^(-2f/64) >= 2 pi / 512 <=> f <= 32 ln(512 / 2 pi) / ln(10000) = 15.3
    pos = make("fope", train_len=512, d_model=256, n_heads=4).pos
    assert pos.inv_freq_K.numel() == 16 and pos.cos_coef_HKK.shape == (4, 16, 16)
