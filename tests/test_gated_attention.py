"""FoX's forget gate, stick-breaking attention, training-time windows and the RoPE/NoPE hybrids (issue 35; selective
attention and DAPE: tests/test_selective_dape.py; windows and hybrids: tests/test_hybrids.py, with this file's models
and reference forward).

Each reference below is written out from the authors' released code, not from lenx's formulas:
- FoX (zhixuan-lin/forgetting-transformer, ForgettingAttentionLayer.forward with fgate_type "full", no RoPE, no
  QK-norm, no shift, no output gate): log_fgate = logsigmoid(fgate_proj(hidden_states).float()), log_lambda =
  cumsum(log_fgate), decay_bias = log_lambda[..., :, None] - log_lambda[..., None, :] added to q.k * sm_scale
  (as its output_attentions branch and the fla `naive` reference write it), causal mask, softmax;
- stick-breaking (shawntan/stickbreaking-attention, sb_ref.py `stickbreaking(q, k, v, mask, cum_weight)` with its
  tests' ref_fwd: mask = triu(0) (attend_current=False), cum_weight = tril(-1), o + rem[..., None] * v);
- selective attention (no authors' code; lucidrains/x-transformers attend.py `selective_attn`, applied to the logits
  after the causal mask, no_mask_sos=True);
- DAPE (chuanyang-Zheng/DAPE, DAPE.py `AliBi_DAPE.forward`: x + a + mlp2(cat((x, tile(a)), dim=1)) over heads, a the
  tril'd ALiBi matrix, then the causal mask and softmax), with its nn.Sequential holding lenx's weights;
- a sliding window as transformers' sliding-window causal mask: key j visible to query i iff i - window < j <= i;
- SmolLM3's no_rope_layers: layer i rotates iff (i + 1) % interval != 0.
Parity in outputs and gradients, at default and gapped positions (none of these reads positions but the window
and RoPE; gapped positions keep their order), on every path the plan takes.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import CONFIGS
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lenx import attention, blockwise
from lenx.errors import ConfigError
from lenx.model import Decoder
from lenx.results import attn_label

T = 24
GAPPED = torch.tensor([0, 1, 3, 4, 8, 9, 10, 15, 16, 20, 21, 22, 30, 31, 33, 40, 41, 42, 50, 52, 53, 60, 61, 70])


def build(scheme: str, attn: dict | None = None, n_layers: int = 2, **over):
    torch.manual_seed(0)
    cfg = OmegaConf.load(CONFIGS / "pos" / f"{scheme}.yaml")
    cfg.pop("defaults", None)
    cfg.update(over)
    model = Decoder(vocab_size=50, d_model=32, n_layers=n_layers, n_heads=4, train_len=16, pos=instantiate(cfg),
                    attn=attn).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # gates far from their init, so that every term moves the logits
        for name, p in model.named_parameters():
            if "fgate" in name:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if name.endswith("bias") else 0.5) + 1.0)
            elif name.startswith("pos."):
                p.normal_(generator=g)
    return model


def fox_reference(q, k, v, log_fgate):
    """The authors' forgetting attention, q/k/v (B, H, T, D), log_fgate (B, H, T) (head_first)."""
    scores = q @ k.transpose(-1, -2) * (1 / math.sqrt(q.shape[-1]))
    log_lambda = torch.cumsum(log_fgate, dim=-1)
    decay_bias = log_lambda[:, :, :, None] - log_lambda[:, :, None, :]
    scores = scores + decay_bias
    Tq = q.shape[2]
    causal_mask = torch.triu(torch.ones((Tq, Tq), dtype=torch.bool), diagonal=1)
    scores = scores.masked_fill(causal_mask[None, None], float("-inf"))
    return F.softmax(scores, dim=-1) @ v


def sb_reference(q, k, v):
    """sb_ref.stickbreaking with its tests' ref_fwd (attend_current=False), fp32."""
    length = q.shape[2]
    cm = torch.ones(length, length).tril(-1)
    mask = torch.ones(length, length).triu(0).bool()
    logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    log_z = F.logsigmoid(logits).masked_fill(mask, -1e5)
    log_beta = F.logsigmoid(-logits).masked_fill(mask, 0)
    re_cum_log_beta = torch.einsum("bhij,jk->bhik", log_beta, cm)
    att = (log_z + re_cum_log_beta).exp()
    o, rem = att @ v, 1 - att.sum(dim=-1)
    return o + rem[..., None] * v


def reference_forward(model, idx_BT, pos_T, layer_attention):
    """The model's forward with each layer's attention replaced by `layer_attention(block.attn, x, layer, ...)`."""
    x = model.pos.embed(model.tok(idx_BT), pos_T)
    ctx = model.pos.context(pos_T, pos_T)
    for layer, block in enumerate(model.blocks):
        attn, h = block.attn, block.ln1(x)
        B, T_, C = h.shape
        q, k, v = attn.qkv(h).view(B, T_, 3, attn.n_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = model.pos.rotate(q, k, ctx.at_layer(layer))
        y = layer_attention(attn, h, layer, q.float(), k.float(), v.float())
        x = x + attn.proj(y.transpose(1, 2).reshape(B, T_, C))
        x = x + block.mlp(block.ln2(x))
    return model.head(model.ln_f(x))


def fox_layer(attn, h, layer, q, k, v):
    log_fgate = F.logsigmoid(attn.fgate(h).float()).transpose(1, 2)  # "b t h -> b h t"
    return fox_reference(q, k, v, log_fgate)


def sb_layer(attn, h, layer, q, k, v):
    return sb_reference(q, k, v)


def loss_of(out):
    w = torch.linspace(-1, 1, out.numel()).view(out.shape)
    return (out * w).sum() + out.logsumexp(-1).mean()


def check_parity(model, layer_attention, pos_T, paths):
    x = torch.randint(0, 50, (2, T), generator=torch.Generator().manual_seed(2))
    ref_pos = torch.arange(T) if pos_T is None else pos_T
    with torch.no_grad(), attention.traced() as seen:
        got = model(x, pos_T)
        want = reference_forward(model, x, ref_pos, layer_attention)
    assert set(seen) == paths, seen
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
    model.train()
    model.zero_grad()
    loss_of(model(x, pos_T)).backward()
    got_g = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    loss_of(reference_forward(model, x, ref_pos, layer_attention)).backward()
    want_g = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert got_g.keys() == want_g.keys()
    for name, grad in got_g.items():
        torch.testing.assert_close(grad, want_g[name], atol=5e-5, rtol=1e-4, msg=name)
    return got_g


@pytest.mark.parametrize("setting", ["sdpa", "reference"])
@pytest.mark.parametrize("at", ["default", "gapped"])
def test_fox_matches_the_authors_forgetting_attention(at, setting):
    model = build("fox")
    model.attention = setting
    # sdpa: the gate as exact channels of q and k beside the fused causal kernel; reference: the float mask
    grads = check_parity(model, fox_layer, None if at == "default" else GAPPED,
                         {"features" if setting == "sdpa" else "mask"})
    assert grads["blocks.0.attn.fgate.weight"].abs().sum() > 0 and grads["blocks.1.attn.fgate.bias"].abs().sum() > 0


@pytest.mark.parametrize("scheme, attn", [("fox", None), ("alibi", {"forget": True}), ("fox_pro", None)])
def test_the_gate_as_channels_equals_the_float_mask_where_c_is_large(scheme, attn):
    """FoX's c_i - c_j as channels (c_i, 1).(1, -c_j) of q and k beside the fused causal kernel (path "features",
    after ALiBi's channels where there are some) equals the float-mask path's logits far along a sequence, where
    |c| has grown past 10^3 (gates of log sigmoid(-2) ~ -2.1 per token), scoring and training."""
    model = build(scheme, attn)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.fgate.bias.fill_(-2.0)
    x = torch.randint(0, 50, (2, 600), generator=torch.Generator().manual_seed(8))
    outs = {}
    for setting, path in (("sdpa", "features"), ("reference", "mask")):
        model.attention = setting
        with torch.no_grad(), attention.traced() as seen:
            outs[setting] = model(x)
        assert set(seen) == {path}
        assert model.blocks[0].attn.modifier_params(torch.zeros(1, 600, 32)).log_forget_BHT.min() < -1000
    torch.testing.assert_close(outs["sdpa"], outs["reference"], atol=2e-5, rtol=1e-5)
    # gradients (the gate's are sums of large terms that cancel): each path's error against the same model in
    # fp64 (the float-mask path there), the channels' no larger than the float mask's own
    grads = {}
    for setting, dtype in (("sdpa", torch.float32), ("reference", torch.float32), ("reference", torch.float64)):
        model.attention = setting
        model.to(dtype).zero_grad()
        loss_of(model(x[:, :200])).backward()
        grads[setting, dtype] = {n: p.grad.double() for n, p in model.named_parameters() if p.grad is not None}
    truth = grads["reference", torch.float64]
    for name, want in truth.items():
        err = {s: float((grads[s, torch.float32][name] - want).abs().max()) for s in ("sdpa", "reference")}
        assert err["sdpa"] <= 2 * err["reference"] + 1e-6 * float(want.abs().max()), (name, err)


@pytest.mark.parametrize("at", ["default", "gapped"])
def test_stick_breaking_matches_the_authors_reference(at):
    # scoring at default positions: the reversed-keys path; gapped, and every gradient: the weights path
    check_parity(build("stickbreaking"), sb_layer, None if at == "default" else GAPPED,
                 {"stickbreaking"} if at == "default" else {"weights"})


@pytest.mark.parametrize("scheme, attn", [("stickbreaking", None), ("rope", {"stickbreaking": True})])
def test_stick_breaking_scoring_path_equals_the_weights_path(scheme, attn, monkeypatch):
    """Scoring at default positions runs keys in reverse order, in place (path "stickbreaking"); the weights path
    (training, `attention=reference`) gives the same logits, chunked or not."""
    model = build(scheme, attn)
    monkeypatch.setattr(blockwise, "SB_BLOCK", 16)  # several blocks of keys per query, the stick carried over
    x = torch.randint(0, 50, (2, 70), generator=torch.Generator().manual_seed(3))
    for rows in (None, 9):
        if rows:
            monkeypatch.setattr(attention, "CHUNK_LOGITS", 2 * 2 * 4 * 70 * rows)
        with torch.no_grad(), attention.traced() as seen:
            fast = model(x)
        assert set(seen) == {"stickbreaking"}
        model.attention = "reference"
        with torch.no_grad(), attention.traced() as seen:
            ref = model(x)
        model.attention = "sdpa"
        assert set(seen) == {"weights"}
        torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-5)
        with torch.no_grad(), attention.traced() as seen:  # gapped positions: the general path
            model(x, torch.arange(70) * 2)
        assert set(seen) == {"weights"}


def test_stick_breaking_blocks_are_exact(monkeypatch):
    """Blocks of 8 queries x 8 keys over 70 tokens: the weights path's logits."""
    model = build("stickbreaking")
    monkeypatch.setattr(blockwise, "SB_BLOCK", 8)
    x = torch.randint(0, 50, (2, 70), generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), attention.traced() as seen:
        fast = model(x)
    assert seen.count("stickbreaking") == 2 * 9  # 2 layers x 9 blocks of queries
    model.attention = "reference"
    with torch.no_grad():
        ref = model(x)
    torch.testing.assert_close(fast, ref, atol=2e-5, rtol=1e-5)


def test_stick_breaking_stops_where_the_stick_is_spent(monkeypatch):
    """Every logit 8 (q = k = 2 * ones, D = 4: 16 / sqrt(4)): each key spends log(1 - sigmoid(8)) = -8.0003 of
    the stick, so past ~15 keys every weight is exp(< -110) = 0 in fp32: the blocks stop there, and the output is
    the exact one."""
    monkeypatch.setattr(blockwise, "SB_BLOCK", 8)
    T_, D = 120, 4
    q = torch.full((1, 1, T_, D), 2.0)
    v = torch.randn(1, 1, T_, D, generator=torch.Generator().manual_seed(5))
    plan = attention.Plan(path="stickbreaking", rows=T_, contiguous=True, dtype=torch.float32, whole=False,
                          per_layer=False, modifiers=attention.STICK_BREAKING)
    calls, real = [], F.softplus  # one softplus per block of keys scored
    monkeypatch.setattr(F, "softplus", lambda z: calls.append(1) or real(z))
    got = attention.attend_stick_breaking(q, q, v, plan)
    hidden = torch.ones(T_, T_, dtype=torch.bool).triu(0)
    w, rem = attention.stick_breaking(torch.full((1, 1, T_, T_), 8.0), hidden)
    torch.testing.assert_close(got, w @ v + rem[..., None] * v, atol=1e-6, rtol=1e-6)
    every = sum(min(T_, a + 8) // 8 + (min(T_, a + 8) % 8 > 0) for a in range(0, T_, 8))
    assert 0 < len(calls) < every / 2, (len(calls), every)


def test_stick_breaking_in_chunks_equals_one_chunk(monkeypatch):
    """The suffix sums per chunk of queries: the same weights when the queries are split (CHUNK_LOGITS small)."""
    model = build("stickbreaking")
    x = torch.randint(0, 50, (2, 40))
    with torch.no_grad():
        whole = model(x)
        monkeypatch.setattr(attention, "CHUNK_LOGITS", 2 * 4 * 40 * 3)  # 3 queries per chunk
        torch.testing.assert_close(model(x), whole, atol=1e-6, rtol=1e-6)


def test_fox_with_rope_adds_the_gate_to_the_rotated_logits():
    """attn.forget on another scheme: RoPE's rotation, then the authors' decay bias (FoX with use_rope=True)."""
    model = build("rope", {"forget": True})
    check_parity(model, fox_layer, None, {"features"})


@pytest.mark.parametrize("attn, msg", [
    ({"stickbreaking": True, "sinks": True}, "stick-breaking attention has no softmax"),
    ({"window": 0}, "attn.window must be a positive number of tokens or null"),
    ({"window": True}, "attn.window must be a positive number"),
    ({"forget": "yes"}, "attn.forget must be true or false"),
])
def test_bad_modifiers_are_one_config_error(attn, msg):
    with pytest.raises(ConfigError, match=msg):
        build("rope", attn)


def test_stick_breaking_refuses_a_remapping_extension():
    from lenx.extensions import SelfExtend

    model = build("rope", {"stickbreaking": True})
    model.extension = SelfExtend(group=2, window=4).resolve(16)
    with torch.no_grad(), pytest.raises(ConfigError, match="does not apply to a model trained with stickbreaking"):
        model(torch.randint(0, 50, (1, 20)))


def test_rows_name_the_mechanisms():
    assert attn_label({"attn": {"forget": True, "window": 32, "ssmax": False}}) == "+forget+window32"
    assert attn_label({"attn": {"forget": False, "window": None}}) == ""
    assert attention.Modifiers(forget=True, window=32).label == "+forget+window32"


def group_rms(x, weight, H, eps):
    """fla's group_norm_fn(is_rms_norm=True, num_groups=H) on (B, T, C)."""
    B, T_, C = x.shape
    g = x.view(B, T_, H, C // H)
    return (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)).view(B, T_, C) * weight


def shift_ref(out, alpha):
    """The authors' token_shift test reference: x_prev = roll(x, 1) with x_prev[:, 0] = 0, per head."""
    B, T_, C = out.shape
    H = alpha.shape[-1]
    x = out.view(B, T_, H, C // H)
    x_prev = torch.roll(x, shifts=1, dims=1).clone()
    x_prev[:, 0] = 0.0
    return (x_prev * alpha[..., None] + x * (1.0 - alpha[..., None])).view(B, T_, C)


def fox_pro_layer(attn, h):
    """ForgettingAttentionLayer.forward with use_k_shift, use_v_shift, qk_norm, use_output_norm, use_output_gate
    (ogate_act sigmoid), no RoPE; returns the layer's output (after o_proj)."""
    B, T_, C = h.shape
    H = attn.n_heads
    W = attn.qkv.weight
    q, k, v = h @ W[:C].T, h @ W[C:2 * C].T, h @ W[2 * C:].T
    k = shift_ref(k, torch.sigmoid(attn.k_shift(h).float()))
    v = shift_ref(v, torch.sigmoid(attn.v_shift(h).float()))
    q, k = group_rms(q, attn.q_norm_C, H, 1e-5), group_rms(k, attn.k_norm_C, H, 1e-5)
    q, k, v = (t.view(B, T_, H, C // H).transpose(1, 2) for t in (q, k, v))
    o = fox_reference(q, k, v, F.logsigmoid(attn.fgate(h).float()).transpose(1, 2))
    o = group_rms(o.transpose(1, 2).reshape(B, T_, C), attn.out_norm_C, H, 1e-6)
    return attn.proj(torch.sigmoid(attn.out_gate(h)) * o)


def test_fox_pro_matches_the_authors_pro_layer():
    model = build("fox_pro")
    with torch.no_grad():  # norms away from their ones
        for name, p in model.named_parameters():
            if name.endswith("_C"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    x = torch.randint(0, 50, (2, T), generator=torch.Generator().manual_seed(2))

    def forward_ref(idx):
        h = model.tok(idx)
        for block in model.blocks:
            h = h + fox_pro_layer(block.attn, block.ln1(h))
            h = h + block.mlp(block.ln2(h))
        return model.head(model.ln_f(h))
    with torch.no_grad():
        torch.testing.assert_close(model(x), forward_ref(x), atol=2e-5, rtol=1e-5)
    model.train()
    loss_of(model(x)).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    loss_of(forward_ref(x)).backward()
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[n], p.grad, atol=5e-5, rtol=1e-4, msg=n)
    assert {"blocks.0.attn.k_shift.weight", "blocks.1.attn.out_gate.weight", "blocks.0.attn.q_norm_C"} <= got.keys()
    assert attention.Modifiers(forget=True, qk_norm=True).label == "+forget+qk_norm"


@pytest.mark.slow
@pytest.mark.parametrize("scheme, attn", [("fox", None), ("alibi", {"forget": True}), ("rope", {"window": 7}),
                                          ("rnope_swa", None), ("irope", None)])
def test_flexattention_runs_the_forget_gate_and_the_window(scheme, attn):
    """attention=flex: FoX's c_i - c_j as FlexAttention's score_mod (beside ALiBi's bias), the window in its block
    mask; scoring on CPU (no FlexAttention backward there), the float-mask path's logits (~30 s of compilation per
    shape)."""
    model = build(scheme, attn, n_layers=4 if scheme in ("rnope_swa", "irope") else 2)
    x = torch.randint(0, 50, (2, 48), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = model(x)
        model.attention = "flex"
        with attention.traced() as seen:
            got = model(x)
    assert "flex" in seen and set(seen) <= {"flex", "causal"}, seen
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
