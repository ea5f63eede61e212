"""The positional zoo: shift invariance, closed forms, chunked attention == unchunked, KERPLE's positivity, and
the attention fast path (parity of every scheme with its formula written out by hand: test_zoo_parity.py).

The contracts every scheme satisfies (shapes, causality, finite at 16x) are in test_model.py; they run over
every configs/pos/*.yaml automatically.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import SCHEMES, make_model

import lenx.attention
import lenx.pos.bias
import lenx.pos.fire
from lenx.model import Decoder
from lenx.pos.bias import t5_relative_bucket

# Schemes whose logits depend on i - j (and content) only, and the others; every scheme must be in one list.
RELATIVE = ["abacus", "alibi", "alibi_learned", "cope", "cpe", "deberta", "hope", "kerple_log", "kerple_power", "none",
            "p_rope", "rope", "rope_partial", "sandwich", "shaw", "shaw_kv", "t5", "transformer_xl", "xpos",
            "fox", "fox_pro", "rnope_swa", "rope_nope", "selective", "stickbreaking"]
NOT_RELATIVE = ["fire", "fope", "learned", "sinusoidal", "irope"]  # FIRE normalises by i; FoPE's cross terms;
# absolute; iRoPE's temperature on its NoPE layers reads the query's position
# Schemes that add logit terms (attention runs in query chunks), and those that keep SDPA's causal fast path.
CHUNKED = ["alibi", "alibi_learned", "cope", "deberta", "fire", "kerple_log", "kerple_power", "sandwich",
           "shaw", "shaw_kv", "t5", "transformer_xl", "fox", "fox_pro", "selective"]
FAST = ["abacus", "cpe", "fope", "hope", "learned", "none", "p_rope", "rope", "rope_partial", "sinusoidal", "xpos", "rope_nope"]
# A path of their own (tests/test_hybrids.py): rnope_swa's windowed (irope's chunked) RoPE layers beside
# fused NoPE layers, stick-breaking's explicit weights
OWN_PATHS = ["irope", "rnope_swa", "stickbreaking"]


def make(scheme: str, *, d_model: int = 16, **kw) -> Decoder:
    return make_model(scheme, d_model=d_model, **kw)


def test_every_scheme_is_classified():
    assert sorted(RELATIVE + NOT_RELATIVE) == SCHEMES
    assert sorted(CHUNKED + FAST + OWN_PATHS) == SCHEMES


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


def test_t5_buckets_training_cannot_reach_are_named_and_warned(tmp_path, caplog):
    """At L = 64 with T5's max_distance 128, mesh_tensorflow's buckets (the reference above) for distances 0..63
    leave buckets 27-31 untrained, and 23 / 55 / 87 % of causal pairs at 2x / 4x / 16x read them (issue 32);
    training says so, and says nothing with max_distance <= seq_len."""
    import logging

    from conftest import compose_train

    from lenx.checks import check_config
    from lenx.pos.bias import T5Bias

    ref = [reference_t5_bucket(-d, False, 32, 128) for d in range(2048)]
    untrained = sorted(set(range(32)) - set(ref[:64]))
    t5 = T5Bias(d_model=32, n_heads=2, head_dim=16, train_len=64)
    assert t5.untrained_buckets(64) == untrained == [27, 28, 29, 30, 31]
    first = ref.index(27)
    assert t5.first_distance_in(27) == first
    for T, share in ((128, 0.23), (256, 0.55), (1024, 0.87)):
        pairs = sum(T - d for d in range(T))
        assert sum(T - d for d in range(first, T)) / pairs == pytest.approx(share, abs=0.005)
    assert T5Bias(d_model=32, n_heads=2, head_dim=16, train_len=64, max_distance=64).untrained_buckets(64) == []
    from omegaconf import OmegaConf

    for extra, warned in ((), True), (("pos.max_distance=64",), False):
        cfg = OmegaConf.to_container(compose_train(["pos=t5", "seq_len=64", *extra], tmp_path), resolve=True)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lenx.checks"):
            check_config(cfg)
        said = [r.getMessage() for r in caplog.records if "never trained" in r.getMessage()]
        assert bool(said) == warned
        if warned:
            assert "buckets 27-31" in said[0] and f"from {first} on" in said[0] and "max_distance=64" in said[0]
    # a task's short L (13: fewer distances than T5's 16 exact buckets): the fix names a bucket count too, and
    # under it every bucket of the reference function is trained
    from lenx.checks import t5_fit

    assert t5_fit(T5Bias(d_model=32, n_heads=2, head_dim=16, train_len=13), 13) == "pos.num_buckets=12 pos.max_distance=13"
    assert set(range(12)) == {reference_t5_bucket(-d, False, 12, 13) for d in range(13)}


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


# --- chunked attention == unchunked ---

@pytest.fixture
def mask_paths(monkeypatch):
    """The float-mask paths these tests check (every plan made with attention=reference): the fast bias paths
    (ALiBi's channels, Toeplitz views) are checked against them in test_attention_paths.py."""
    real = lenx.attention.plan
    monkeypatch.setattr(lenx.attention, "plan", lambda *a, **kw: real(*a, **{**kw, "attention": "reference"}))


@pytest.mark.parametrize("scheme", CHUNKED)
def test_chunked_attention_equals_unchunked(scheme, monkeypatch, mask_paths):
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
    monkeypatch.setattr(lenx.attention, "CHUNK_LOGITS", 2 * 2 * 5 * 37)  # B x H x 5 rows x S: 8 chunks, last of 2
    monkeypatch.setattr(lenx.pos.fire, "MLP_VALUES", 3 * 37 * 32)  # FIRE's MLP: 3 query rows at a time
    chunked, chunked_grads = run()
    if scheme != "shaw_kv":  # (Shaw's values run unfused: no SDPA call to count)
        assert sorted({s[2] for s in calls}) == [2, 5]
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-6)
    assert chunked_grads.keys() == whole_grads.keys()
    for name, g in whole_grads.items():
        torch.testing.assert_close(chunked_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_fast_path_and_chunks(monkeypatch, mask_paths):
    """No bias or score: SDPA with is_causal and no mask. Otherwise calls of at most CHUNK_LOGITS logits, each
    over the keys its queries can see."""
    calls = []
    real_sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, is_causal=False, **kw):
        calls.append((q.shape[2], k.shape[2], attn_mask, is_causal))
        return real_sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(lenx.attention, "CHUNK_LOGITS", 2 * 8 * 64)  # H x 8 queries x S
    idx = torch.randint(0, 50, (1, 64))
    for scheme in FAST:
        calls.clear()
        make(scheme, train_len=64)(idx)
        assert calls and all(m is None and causal for _, _, m, causal in calls), scheme
    for scheme in set(CHUNKED) - {"shaw_kv"}:
        calls.clear()
        make(scheme, train_len=64)(idx)
        assert len(calls) == 2 * 8, scheme  # 2 layers x 8 chunks of 8 queries
        assert all(t == 8 and m is not None and not causal for t, s, m, causal in calls), scheme
        # each chunk attends to the keys up to its last query only: the later ones are future for all of it
        # (in whatever order attention takes the chunks: the largest first where no running sum needs query order)
        assert sorted(s for _, s, _, _ in calls) == sorted(list(range(8, 65, 8)) * 2), scheme


@pytest.mark.parametrize("scheme", CHUNKED)
def test_default_positions_toeplitz_mask_equals_gathered(scheme, monkeypatch):
    """Default positions build a distance bias as a Toeplitz matrix; explicit positions gather it per pair.
    Same logits and gradients, whole and in chunks of queries (query offsets > 0)."""
    torch.manual_seed(0)
    model = make(scheme, train_len=16)
    idx = torch.randint(0, 50, (2, 37))

    def run(**kw):
        model.zero_grad()
        logits = model(idx, **kw)
        logits.square().mean().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    for chunk in (None, 2 * 2 * 5 * 37):
        if chunk:
            monkeypatch.setattr(lenx.attention, "CHUNK_LOGITS", chunk)
        toeplitz, toeplitz_grads = run()
        gathered, gathered_grads = run(pos_T=torch.arange(37))
        torch.testing.assert_close(toeplitz, gathered, rtol=1e-5, atol=1e-6)
        for name, g in gathered_grads.items():
            torch.testing.assert_close(toeplitz_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_mask_built_once_per_forward(monkeypatch, mask_paths):
    """A mask that fits one chunk is built once per forward for all layers (in the compute dtype for a pure
    bias); a longer input builds it per chunk in every layer instead, with the same logits."""
    built = []
    real = lenx.attention.positional_mask
    monkeypatch.setattr(lenx.attention, "positional_mask", lambda *a: built.append(a[0]) or real(*a))
    idx = torch.randint(0, 50, (1, 64))
    for scheme, over, once in [("alibi", {}, 1), ("t5", {}, 1), ("fire", {"shared": True}, 1), ("fire", {}, 2),
                               ("shaw", {}, 1)]:
        model = make(scheme, train_len=64, **over)  # 2 layers, 2 heads
        built.clear()
        cached = model(idx)
        assert len(built) == once, scheme  # per-layer FIRE: one mask per layer (each has its own MLP)
        monkeypatch.setattr(lenx.attention, "CHUNK_LOGITS", 2 * 8 * 64)  # 8 chunks of 8 queries per layer
        built.clear()
        chunked = model(idx)
        monkeypatch.undo()
        monkeypatch.setattr(lenx.attention, "positional_mask", lambda *a: built.append(a[0]) or real(*a))
        assert len(built) == 2 * 8, scheme
        torch.testing.assert_close(chunked, cached, rtol=1e-5, atol=1e-6)
    fire, scored = make("fire", train_len=64, shared=True), []
    real_bias = fire.pos.bias
    monkeypatch.setattr(fire.pos, "bias", lambda *a: scored.append(1) or real_bias(*a))
    fire(idx)
    assert len(scored) == 1  # shared FIRE's MLP bias reads positions only: evaluated once, not once per layer
    seen = []
    real_sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention",
                        lambda q, k, v, attn_mask=None, **kw: seen.append(attn_mask.dtype)
                        or real_sdpa(q, k, v, attn_mask=attn_mask, **kw))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        make("alibi", train_len=64)(idx)
    assert seen == [torch.bfloat16] * 2


def test_fire_bias_is_computed_in_fp32_under_autocast(monkeypatch):
    """Positional terms are fp32 whether the mask is built once per forward or per chunk (the whole-mask path once
    ran FIRE's MLP in bf16 under autocast while the chunked path ran it in fp32)."""
    idx = torch.randint(0, 50, (1, 64))
    fire, dtypes = make("fire", train_len=64), []
    real = fire.pos.fire_bias
    monkeypatch.setattr(fire.pos, "fire_bias", lambda *a: (lambda b: dtypes.append(b.dtype) or b)(real(*a)))
    for chunk in (None, 2 * 8 * 64):
        if chunk:
            monkeypatch.setattr(lenx.attention, "CHUNK_LOGITS", chunk)
        dtypes.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fire(idx)
        assert dtypes and set(dtypes) == {torch.float32}, chunk


# --- learned parameters: positivity, state_dict ---

@pytest.mark.parametrize("scheme", ["kerple_log", "kerple_power"])
def test_kerple_parameters_are_clamped_before_use(scheme):
    pos = make(scheme).pos
    second = "rate_H" if scheme == "kerple_log" else "power_H"
    # The authors' initial ranges: r1 ~ U(0, 2) (log) or U(0, 1) (power), r2 ~ U(0, 1) (log) or U(0, 2) (power).
    assert pos.scale_H.max() <= (2 if scheme == "kerple_log" else 1)
    opt = torch.optim.SGD(pos.parameters(), lr=1e3)
    d_R = torch.arange(100.0)
    for _ in range(5):  # push every parameter hard past zero: the next use clamps it back, as the authors' code
        opt.zero_grad()
        (-pos.distance_bias(d_R).sum()).backward()
        opt.step()
    assert (pos.scale_H < 0).any() or (getattr(pos, second) < 0).any()  # the step went below eps...
    bias = pos.distance_bias(d_R)  # ...and using the parameters clamps them in place
    assert (pos.scale_H >= pos.eps).all() and (getattr(pos, second) >= pos.eps).all()
    assert torch.isfinite(bias).all() and (bias <= 0).all() and (bias[:, 0] == 0).all()
    if scheme == "kerple_power":
        pos.power_H.data.fill_(7.0)
        pos.distance_bias(d_R)
        assert (pos.power_H == 2).all()


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
    assert pos.inv_freq_K.numel() == 16 and pos.cos_coef_NHKM.shape == (2, 4, 16, 16)  # 2 layers, min(K, D/4) = 16
