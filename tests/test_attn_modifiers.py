"""Attention modifiers (config `attn`, lenx.attention.Modifiers), composable with every scheme:

- scalable softmax (Nakanishi 2025, arXiv:2501.19399): softmax(s_h log(n) z), z the query's whole logit vector
  (content and positional terms), n the keys it sees, s_h learned per head, initialised to 1 (OLMo-core PR #808);
- learned sinks (gpt-oss, transformers' modeling_gpt_oss.eager_attention_forward): one learned logit per head
  appended to each row, softmax over both, the sink's column dropped; init N(0, 0.02).

Parity of the model (the plan's paths) with a reference attention written out here from those formulas, in logits
and gradients, scoring and training, at default and gapped positions; the plan never sends a modifier to a path
that cannot host it; config, run id, checkpoint and row naming.
"""

import math

import pytest
import torch
from conftest import CONFIGS, compose_train
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lenx import attention
from lenx.errors import CheckpointError, ConfigError
from lenx.model import Decoder

SCHEMES = ["rope", "alibi", "t5", "shaw", "none", "shaw_kv", "fire", "transformer_xl"]
MODS = [{"ssmax": True}, {"sinks": True}, {"ssmax": True, "sinks": True}]
T = 24


def build(scheme: str, attn: dict | None, n_heads: int = 4):
    torch.manual_seed(0)
    cfg = OmegaConf.load(CONFIGS / "pos" / f"{scheme}.yaml")
    cfg.pop("defaults", None)
    if scheme in ("shaw", "shaw_kv"):
        cfg["max_distance"] = 6  # clipped pairs occur
    model = Decoder(vocab_size=50, d_model=32, n_layers=2, n_heads=n_heads, train_len=16, pos=instantiate(cfg),
                    attn=attn).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every modifier and positional term moves the logits
        for name, p in model.named_parameters():
            if name.endswith("ssmax_H"):
                p.copy_(1 + 0.5 * torch.randn(p.shape, generator=g))
            elif name.endswith("sink_H"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif name.startswith("pos."):
                p.normal_(generator=g)
    return model


def reference_attention(attn, x_BTC, pos, ctx):
    """One layer's attention from the formulas: z = q.k / sqrt(D) + the scheme's terms (its reference hooks
    `bias`, `score`), SSMax z -> s_h log(n_i) z over the n_i keys query i sees, gpt-oss's eager sinks, + `value`."""
    B, T_, C = x_BTC.shape
    H, D = attn.n_heads, attn.head_dim
    q, k, v = attn.qkv(x_BTC).view(B, T_, 3, H, D).permute(2, 0, 3, 1, 4)
    q, k = pos.rotate(q, k, ctx)
    q, k, v = q.float(), k.float(), v.float()
    z = q @ k.transpose(-1, -2) / math.sqrt(D)
    bias = pos.bias(ctx, None, torch.float32)
    future = ctx.k_pos_S[None, :] > ctx.q_pos_T[:, None]
    if bias is not None:
        z = z + bias.float().masked_fill(future, 0.0)
    extra = pos.score(q, k, ctx)
    if extra is not None:
        z = z + extra
    if hasattr(attn, "ssmax_H"):  # Nakanishi 2025, Eq. (SSMax): s log(n) z, n = the visible keys
        n_T = (~future).sum(-1).float()
        z = attn.ssmax_H[None, :, None, None] * torch.log(n_T)[None, None, :, None] * z
    z = z.masked_fill(future, float("-inf"))
    if hasattr(attn, "sink_H"):  # gpt-oss eager_attention_forward, as transformers writes it
        sinks = attn.sink_H.reshape(1, -1, 1, 1).expand(B, -1, T_, -1)
        combined = torch.cat([z, sinks], dim=-1)
        combined = combined - combined.max(dim=-1, keepdim=True).values
        probs = torch.softmax(combined, dim=-1)
        w = probs[..., :-1]
    else:
        w = z.softmax(-1)
    y = w @ v
    value = pos.value(w, ctx)
    if value is not None:
        y = y + value
    return attn.proj(y.transpose(1, 2).reshape(B, T_, C))


def reference_forward(model, idx_BT, pos_T):
    x = model.pos.embed(model.tok(idx_BT), pos_T)
    ctx = model.pos.context(pos_T, pos_T)
    for layer, block in enumerate(model.blocks):
        x = x + reference_attention(block.attn, block.ln1(x), model.pos, ctx.at_layer(layer))
        x = x + block.mlp(block.ln2(x))
    return model.head(model.ln_f(x))


def loss_of(out):
    w = torch.linspace(-1, 1, out.numel(), dtype=torch.float32).view(out.shape)
    return (out.float() * w).sum() + out.float().logsumexp(-1).mean()


def grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


POSITIONS = {"default": None, "gapped": torch.tensor([0, 1, 3, 4, 8, 9, 10, 15, 16, 20, 21, 22, 30, 31, 33, 40, 41,
                                                      42, 50, 52, 53, 60, 61, 70])}


@pytest.mark.parametrize("mods", MODS, ids=lambda m: "+".join(m))
@pytest.mark.parametrize("at", list(POSITIONS))
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("setting", ["sdpa", "reference"])
def test_modifiers_match_their_formulas_in_logits_and_gradients(scheme, mods, at, setting):
    model = build(scheme, mods)
    model.attention = setting
    x = torch.randint(0, 50, (2, T), generator=torch.Generator().manual_seed(2))
    pos_T = POSITIONS[at]
    ref_pos = torch.arange(T) if pos_T is None else pos_T
    # scoring: no gradient (the chunk paths' plan), then a training step's logits and gradients
    with torch.no_grad(), attention.traced() as seen:
        scored = model(x, pos_T)
        want = reference_forward(model, x, ref_pos)
    # (scoring: the sinks may rescale a fused path's output by its row logsumexp, modifiers.LSE_HOSTS)
    assert seen and all(attention.hosts(p, attention.Modifiers(**mods), lse=True) for p in seen), seen
    torch.testing.assert_close(scored, want, atol=2e-5, rtol=1e-5)

    model.train()
    model.zero_grad()
    with attention.traced() as seen:
        loss_of(model(x, pos_T)).backward()
    got = grads(model)
    assert seen and all(attention.hosts(p, attention.Modifiers(**mods)) for p in seen), seen
    model.zero_grad()
    loss_of(reference_forward(model, x, ref_pos)).backward()
    want_g = grads(model)
    assert got.keys() == want_g.keys()
    for name in got:
        torch.testing.assert_close(got[name], want_g[name], atol=5e-5, rtol=1e-4, msg=name)
    for name in [n for n in got if n.endswith(("ssmax_H", "sink_H"))]:
        assert got[name].abs().sum() > 0, f"{name} learns nothing"


@pytest.mark.parametrize("scheme, mods, without, with_", [
    ("rope", {"ssmax": True}, "causal", "causal"),  # exact as a q scale: the logits are q.k alone
    # scoring on CPU: the sinks rescale a fused path's output by its row logsumexp (LSE_HOSTS)
    ("rope", {"sinks": True}, "causal", "causal"),
    ("none", {"ssmax": True, "sinks": True}, "causal", "causal"),
    ("alibi", {"sinks": True}, "features", "features"),
    ("t5", {"sinks": True}, "toeplitz", "toeplitz"),
    ("fire", {"sinks": True}, "chunk_mask", "chunk_mask"),
    # SSMax scoring on CPU: ALiBi's line as one channel pair per block of keys, merged by logsumexp; T5's table
    # (not constant over the last half of the keys at its default 128 / these 64 tokens: the Toeplitz rows scaled)
    ("alibi", {"ssmax": True}, "features", "banded"),
    ("t5", {"ssmax": True}, "toeplitz", "toeplitz"),
    ("shaw", {"ssmax": True}, "chunk_mask", "chunk_mask"),  # the chunk's mask rows scaled with its queries
    ("fire", {"ssmax": True, "sinks": True}, "chunk_mask", "chunk_mask"),
    ("shaw_kv", {"sinks": True}, "chunk_values", "weights"),  # its value term reads the normalisers
])
def test_the_plan_sends_modifiers_only_where_they_are_exact(scheme, mods, without, with_):
    x = torch.randint(0, 50, (1, 64))
    for attn, path in ((None, without), (mods, with_)):
        model = build(scheme, attn)
        with torch.no_grad(), attention.traced() as seen:
            model(x)
        assert set(seen) == {path}


@pytest.mark.parametrize("scheme", ["alibi", "t5"])
@pytest.mark.parametrize("mods", [{"ssmax": True}, {"ssmax": True, "sinks": True}], ids=lambda m: "+".join(m))
@pytest.mark.parametrize("T, rows", [(240, 40), (1024, 1024)], ids=["six_chunks", "one_chunk"])
def test_ssmax_on_a_distance_table_scores_banded_as_its_formula(scheme, mods, T, rows, monkeypatch):
    """Scoring ALiBi or T5 with SSMax on CPU (path "banded"): the keys before a chunk through the fused kernel
    without a mask (ALiBi's line as one channel pair, T5's constant last bucket as nothing), merged with the near
    block by their logsumexps; equal to the formula over six chunks of 40 queries, with s_h of either sign and 0, at
    240 tokens where T5's last bucket starts at distance 16 and ALiBi's slope 1/256 leaves far keys much of the
    weight; and over one chunk of 1024, where ALiBi's line as a channel inside the chunk's own block would round at
    ulp(c m t) ~ 2e-4 on its heaviest keys (an error of ~5e-5 in the output, which the tolerance catches)."""
    monkeypatch.setattr(attention, "CHUNK_LOGITS", 2 * 4 * T * rows)  # `rows` queries a chunk
    torch.manual_seed(0)
    cfg = OmegaConf.load(CONFIGS / "pos" / f"{scheme}.yaml")
    cfg.pop("defaults", None)
    if scheme == "t5":
        cfg.update(num_buckets=8, max_distance=16)
    model = Decoder(vocab_size=50, d_model=32, n_layers=2, n_heads=4, train_len=16, pos=instantiate(cfg),
                    attn=mods).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("ssmax_H"):
                p.copy_(torch.tensor([1.3, 0.0, -0.4, 0.7]))
            elif name.endswith("sink_H") or name.startswith("pos."):
                p.normal_(generator=g)
    x = torch.randint(0, 50, (2, T), generator=torch.Generator().manual_seed(2))
    with torch.no_grad(), attention.traced() as seen:
        got = model(x)
        want = reference_forward(model, x, torch.arange(T))
    assert set(seen) == {"banded"}, seen
    torch.testing.assert_close(got, want, atol=3e-6, rtol=1e-5)


@pytest.mark.parametrize("scheme, mods, path, small", [
    ("kerple_log", {"ssmax": True}, "toeplitz", True),  # the view's rows scaled: written per chunk
    ("kerple_log", None, "toeplitz", False),  # the unscaled view: nothing written
    ("rope", {"selective": True}, "mask", True),
    ("alibi", {"dape": True}, "weights", True),  # its compiled MLP's logits softmaxed (the mask path with a gradient)
    ("fire", None, "chunk_mask", True),  # FIRE's own size (cpu_chunk_logits): fewer of its per-chunk searches
    ("fire", {"dape": True}, "weights", True),
])
def test_cpu_scoring_chunks_what_it_writes_by_the_smaller_budget(scheme, mods, path, small):
    """CPU scoring on a path that writes each chunk's logits or mask: chunks of CPU_WRITTEN_LOGITS (near the
    caches), or the scheme's own size (FIRE); the unscaled Toeplitz view, a gradient, or another device: CHUNK_LOGITS."""
    model = build(scheme, mods)
    S = 4096
    dape = bool(mods and mods.get("dape"))
    for grad in (False, True):
        # DAPE: its MLP's 32 values per pair of heads, or, scoring through the compiled kernel, its 2H inputs
        per_pair = (4 * 16 if grad else 2 * 4) if dape else 4
        with torch.set_grad_enabled(grad):  # (a learned bias's table carries a gradient: the mask path)
            ctx = model.pos.context(torch.arange(S), torch.arange(S))
        plan = attention.plan(model.pos, ctx, batch=1, dtype=torch.float32, contiguous=True, grad=grad,
                              modifiers=model.modifiers)
        written = attention.CPU_WRITTEN_LOGITS if scheme != "fire" else 1 << 23
        budget = written if small and not grad else attention.CHUNK_LOGITS
        assert (plan.path, plan.rows) == (path if not grad else plan.path, budget // (per_pair * S))
        # FIRE on the general path while scoring: each chunk's bias from its own chunk mask (the plan says so)
        assert plan.chunk_bias == (scheme == "fire" and dape and not grad)
        if scheme == "fire" and not grad:  # attention=reference: FIRE's MLP per pair, the default size
            ref = attention.plan(model.pos, ctx, batch=1, dtype=torch.float32, contiguous=True, grad=grad,
                                 modifiers=model.modifiers, attention="reference")
            assert ref.rows == attention.CPU_WRITTEN_LOGITS // ((4 * 16 if dape else 4) * S)
    assert attention.CPU_WRITTEN_LOGITS < attention.CHUNK_LOGITS


@pytest.mark.parametrize("scheme", ["rope", "t5"])
def test_sinks_leave_the_fused_paths_where_no_logsumexp_is_at_hand(scheme):
    """Training (a gradient) and dropout: the fused kernel's logsumexp has no gradient here, so the sinks take the
    float-mask path as before."""
    model = build(scheme, {"sinks": True}).train()
    with attention.traced() as seen:
        model(torch.randint(0, 50, (1, 32)))
    assert set(seen) == {"mask"}
    ctx = model.pos.context(torch.arange(T), torch.arange(T))
    for kw in ({"grad": True}, {"grad": False, "dropout": 0.1}):
        plan = attention.plan(model.pos, ctx, batch=1, dtype=torch.float32, contiguous=True,
                              modifiers=model.modifiers, **kw)
        assert plan.path == "mask" and not plan.lse


def test_flex_is_not_planned_for_modifiers():
    model = build("alibi", {"sinks": True})
    ctx = model.pos.context(torch.arange(T), torch.arange(T))
    plan = attention.plan(model.pos, ctx, batch=1, dtype=torch.float32, contiguous=True, attention="flex",
                          grad=False, modifiers=model.modifiers)
    assert plan.path == "mask"


def test_a_path_that_cannot_host_a_modifier_is_a_plan_error():
    model = build("rope", {"sinks": True})
    ctx = model.pos.context(torch.arange(T), torch.arange(T))
    plan = attention.plan(model.pos, ctx, batch=1, dtype=torch.float32, contiguous=True,
                          modifiers=model.modifiers)
    bad = attention.dataclasses.replace(plan, path="causal")
    q = torch.randn(1, 4, T, 8)
    with pytest.raises(attention.PlanError):
        attention.attend(q, q, q, model.pos, ctx, bad, 0.0, None, model.blocks[0].attn.modifier_params(torch.zeros(1, T, 32)))


def test_ssmax_n_counts_the_visible_keys():
    ctx = attention.AttnContext(q_pos_T=torch.tensor([0, 2, 5, 9]), k_pos_S=torch.tensor([0, 2, 5, 9]))
    torch.testing.assert_close(attention.visible_log_n(ctx), torch.log(torch.tensor([1.0, 2, 3, 4])))


def test_inits_follow_the_references_and_live_in_the_state_dict():
    torch.manual_seed(0)
    cfg = OmegaConf.load(CONFIGS / "pos" / "rope.yaml")
    cfg.pop("defaults", None)
    model = Decoder(vocab_size=50, d_model=64, n_layers=2, n_heads=4, train_len=16, pos=instantiate(cfg),
                    attn={"ssmax": True, "sinks": True})
    state = model.state_dict()
    assert torch.equal(state["blocks.0.attn.ssmax_H"], torch.ones(4))  # OLMo-core PR #808: ones
    assert state["blocks.1.attn.sink_H"].shape == (4,) and 0 < state["blocks.1.attn.sink_H"].std() < 0.1
    plain = Decoder(vocab_size=50, d_model=64, n_layers=2, n_heads=4, train_len=16, pos=instantiate(cfg))
    assert not any(k.endswith(("ssmax_H", "sink_H")) for k in plain.state_dict())


@pytest.mark.parametrize("attn, msg", [({"ssmax": "yes"}, "attn.ssmax must be true or false"),
                                       ({"sink": True}, "attn.sink is not an attention modifier"),
                                       ({"ssmax": 1}, "attn.ssmax must be true or false"),
                                       ("ssmax", "attn must be a mapping")])
def test_a_bad_value_is_one_config_error(attn, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        Decoder(vocab_size=50, d_model=32, n_layers=1, n_heads=4, train_len=16,
                pos=instantiate(OmegaConf.load(CONFIGS / "pos" / "none.yaml")), attn=attn)
    assert "\n" not in str(e.value)


def test_run_ids_are_unchanged_without_modifiers_and_change_with_them(tmp_path):
    from lenx.runid import run_id

    for pos in ("rope", "alibi", "t5"):
        cfg = OmegaConf.to_container(compose_train([f"pos={pos}"], tmp_path), resolve=False)
        older = {k: v for k, v in cfg.items() if k != "attn"}  # a config from before `attn` existed
        assert run_id(cfg) == run_id(older)
        ids = {run_id({**cfg, "attn": {"ssmax": s, "sinks": k}}) for s in (False, True) for k in (False, True)}
        assert len(ids) == 4
    cfg = OmegaConf.to_container(compose_train(["pos=rope"], tmp_path), resolve=False)
    cfg.pop("run_dir")
    assert run_id(cfg) == run_id({k: v for k, v in cfg.items() if k != "attn"})


def test_checkpoint_config_takes_modifiers_as_plain_booleans_only():
    from lenx.checkpoint import safe_attn_config

    assert safe_attn_config({"ssmax": True}) == {**{n: False for n in attention.FIELDS}, "ssmax": True, "chunk": None,
                                                 "window": None}
    for bad in ({"ssmax": "true"}, {"_target_": "os.system"}, {"sinks": {"_target_": "x"}}, ["ssmax"],
                {"window": "${oc.env:HOME}"}, {"window": 2.5}):
        with pytest.raises(CheckpointError, match="refusing to load"):
            safe_attn_config(bad)


def test_rows_name_the_modifiers():
    from lenx.results import attn_label, scheme_label

    assert attn_label({"attn": {"ssmax": True, "sinks": False}}) == "+ssmax"
    assert attn_label({"attn": {"ssmax": False, "sinks": False}}) == attn_label({}) == ""
    assert scheme_label({"pos": "rope" + attn_label({"attn": {"ssmax": True, "sinks": True}}),
                         "positions": "randomized"}) == "rope+ssmax+sinks+randomized"


def test_a_checkpoint_with_modifiers_rebuilds_strictly(tmp_path):
    from lenx.checkpoint import build_model, rebuild

    cfg = OmegaConf.to_container(compose_train(["experiment=smoke", "attn.ssmax=true", "attn.sinks=true"],
                                               tmp_path), resolve=True)
    cfg["choices"] = {"pos": "rope"}
    model = build_model(cfg)
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"cfg": cfg}}
    again, out = rebuild(ckpt)
    assert out["attn"] == {**{n: False for n in attention.FIELDS}, "ssmax": True, "sinks": True, "window": None,
                           "chunk": None} \
        and again.modifiers == model.modifiers
    cfg["attn"] = {"ssmax": True, "sinks": False}  # the checkpoint's config decides the parameters
    with pytest.raises(CheckpointError, match="does not match"):
        rebuild({**ckpt, "hyper_parameters": {"cfg": cfg}})


def test_scaling_a_chunk_mask_in_place_equals_scale_logits():
    """SSMax on the chunk paths scales the chunk's own mask in place (`scale_rows`): the same as `scale_logits`,
    hidden keys kept hidden where c is 0 (n = 1) or negative (a learned s_h below 0), on a contiguous mask and on
    an overlapping strided view (scaled out of place: its rows share memory), which stays untouched."""
    from lenx.modifiers import scale_logits, scale_rows

    g = torch.Generator().manual_seed(0)
    mask = torch.randn(2, 3, 5, 7, generator=g)
    mask[..., 5:] = float("-inf")
    c_Ht = torch.randn(3, 5, generator=g).abs() + 0.1
    c_Ht[0, 0], c_Ht[1, 2] = 0.0, -1.5
    want = scale_logits(mask, c_Ht)
    assert torch.equal(scale_rows(mask.clone(), c_Ht), want)
    assert not want[..., 5:].isfinite().any() and want[..., :5].isfinite().all()
    flat = torch.randn(2 * 3 * 5 + 7, generator=g)
    view = flat.as_strided((2, 3, 5, 7), (15, 5, 1, 1))  # rows overlap
    before = flat.clone()
    assert torch.equal(scale_rows(view, c_Ht), scale_logits(view, c_Ht)) and torch.equal(flat, before)
