"""Training-free extensions (lenx.extensions): exact where they change nothing, Self-Extend against a hand-written
two-mask reference, ReRoPE on a distance bias against its closed form, windows checked on the attention weights,
finite at 16x wherever they apply, and refused where they do not."""

import math

import pytest
import torch
from conftest import CONFIGS, SCHEMES, make_model

import lenx.attention
from lenx import extensions
from lenx.errors import ConfigError
from lenx.extensions import LMInfinite, LogN, ReRoPE, SelfExtend, Streaming
from lenx.pos.base import PositionalScheme

L = 16
APPLIES = ["rope", "rope_partial", "xpos", "p_rope", "hope", "rope_nope", "rnope_swa", "irope", "alibi", "alibi_learned", "t5", "kerple_log", "kerple_power", "sandwich"]  # (the hybrids: rotary on their RoPE layers)


def ids(n, seed=0):
    return torch.randint(0, 50, (2, n), generator=torch.Generator().manual_seed(seed))


def under(model, ext, idx):
    model.extension = ext.resolve(L)
    try:
        with torch.no_grad():
            return model(idx)
    finally:
        model.extension = None


@pytest.mark.parametrize("scheme", ["rope", "alibi", "t5", "none"])
def test_every_method_is_exact_where_it_changes_nothing(scheme):
    model = make_model(scheme, train_len=L)
    with torch.no_grad():
        base1, base4 = model(ids(L)), model(ids(4 * L))
    inside = [LogN(), LMInfinite(), Streaming(), SelfExtend()]  # within the training length
    covering = [ReRoPE(window=4 * L, logn=False), SelfExtend(window=L - 1, group=1)]  # windows cover 4L
    for ext in inside + ([ReRoPE(window=L)] if scheme != "none" else []):
        if scheme == "none" and ext.remaps and not ext.windows:
            continue
        assert torch.equal(under(model, ext, ids(L)), base1), ext.name
    for ext in covering if scheme != "none" else []:
        assert torch.equal(under(model, ext, ids(4 * L)), base4), ext.name
    for ext in [LogN(), LMInfinite(), Streaming()] + ([ReRoPE(), SelfExtend()] if scheme != "none" else []):
        assert not torch.allclose(under(model, ext, ids(4 * L)), base4, atol=1e-5), ext.name  # ... and past it


def rope_rotate(x, p, base=10000.0):
    """RoPE written out (half-split layout): x (B, H, T, D) at positions p (T,)."""
    D = x.shape[-1]
    inv = 1.0 / base ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = p.double()[:, None] * inv[None, :]
    cos, sin = torch.cat([ang.cos(), ang.cos()], -1).float(), torch.cat([ang.sin(), ang.sin()], -1).float()
    x1, x2 = x[..., : D // 2], x[..., D // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def one_layer(model, x, plan_kw):
    """The first block's attention output for input x, through lenx (with the given extension) and its q, k, v."""
    attn = model.blocks[0].attn
    B, T, C = x.shape
    p = torch.arange(T)
    ctx = model.pos.context(p, p)
    plan = lenx.attention.plan(model.pos, ctx, batch=B, dtype=torch.float32, contiguous=True, **plan_kw)
    q, k, v = attn.qkv(x).view(B, T, 3, attn.n_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    return attn(x, model.pos, ctx, plan), (q, k, v), attn


def test_self_extend_equals_the_two_mask_reference():
    model = make_model("rope", train_len=L, n_layers=1)
    x = torch.randn(1, 5 * L, 32, generator=torch.Generator().manual_seed(0))
    ext = SelfExtend(window=4, group=3).resolve(L)
    with torch.no_grad():
        got, (q, k, v), attn = one_layer(model, x, {"extension": ext})
        T, D = x.shape[1], attn.head_dim
        i, W, G = torch.arange(T), 4, 3
        neighbour = rope_rotate(q, i) @ rope_rotate(k, i).transpose(-1, -2) / math.sqrt(D)
        grouped = rope_rotate(q, i // G + W - W // G) @ rope_rotate(k, i // G).transpose(-1, -2) / math.sqrt(D)
        d = i[:, None] - i[None, :]
        logits = torch.where(d < W, neighbour, grouped).masked_fill(d < 0, float("-inf"))
        want = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(1, T, 32))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scheme", ["rope", "alibi"])
def test_self_extend_runs_one_group_per_input_whatever_the_chunking(scheme, monkeypatch):
    """LongLM (datamllab/LongLM) runs one group size G per input. `group: null` takes it from the input's last
    position: the logits equal a fixed `group=G` run (LongLM's form) and do not change with attention's chunk of
    queries (before issue 32 each chunk chose its own G: 2-4 different G in one sequence at 8x-16x)."""
    model = make_model(scheme, train_len=L)
    idx = ids(16 * L)
    G = next(g for g in range(1, 64) if (16 * L - 1) // g + L // 4 - (L // 4) // g <= L - 1)  # by hand
    assert G == SelfExtend().resolve(L).group_size(16 * L)
    want = under(model, SelfExtend(group=G), idx)  # one G for the whole input, as LongLM
    whole = under(model, SelfExtend(), idx)
    monkeypatch.setattr(lenx.attention, "CHUNK_LOGITS", 2 * model.pos.n_heads * 16 * L * 8)  # chunks of 8 queries
    chunked = under(model, SelfExtend(), idx)
    assert torch.equal(whole, want)
    torch.testing.assert_close(chunked, want, rtol=1e-5, atol=1e-5)  # the same logits up to the chunks' rounding


def test_rerope_on_alibi_reads_far_distances_at_the_window():
    model = make_model("alibi", train_len=L, n_layers=1, n_heads=2)
    x = torch.randn(1, 3 * L, 32, generator=torch.Generator().manual_seed(1))
    ext = ReRoPE(window=5, logn=False).resolve(L)
    with torch.no_grad():
        got, (q, k, v), attn = one_layer(model, x, {"extension": ext})
        T, i = x.shape[1], torch.arange(x.shape[1])
        d = i[:, None] - i[None, :]
        slopes = model.pos.slopes()[:, None, None]
        logits = q @ k.transpose(-1, -2) / math.sqrt(attn.head_dim) - slopes * d.clamp(max=5)
        want = attn.proj((logits.masked_fill(d < 0, float("-inf")).softmax(-1) @ v).transpose(1, 2).reshape(1, T, 32))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ext, seen", [
    (LMInfinite(n_global=3, window=5), lambda i, j: (j <= i) & ((i - j < 5) | (j < 3))),
    (Streaming(sinks=2, cache=8), lambda i, j: (j <= i) & ((i - j < 6) | (j < 2) | (i < 8))),
])
@pytest.mark.parametrize("chunk", [None, 2 * 1 * 7 * 64])  # whole, and chunks of 7 queries (key ranges)
def test_a_window_never_lets_a_query_see_outside_it(ext, seen, chunk, monkeypatch):
    """v is the identity over keys, so attention's output rows are its weights."""
    if chunk:
        monkeypatch.setattr(lenx.attention, "CHUNK_LOGITS", chunk)
    T = 64
    pos = PositionalScheme(d_model=2 * T, n_heads=2, head_dim=T, train_len=L)
    p = torch.arange(T)
    ctx = pos.context(p, p)
    plan = lenx.attention.plan(pos, ctx, batch=1, dtype=torch.float32, contiguous=True, extension=ext.resolve(L))
    assert plan.path == "extended"
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(1, 2, T, T, generator=g), torch.randn(1, 2, T, T, generator=g)
    v = torch.eye(T).expand(1, 2, T, T)
    weights = lenx.attention.attend(q, k, v, pos, ctx, plan, 0.0, (q, k))
    allowed = seen(p[:, None], p[None, :])
    assert (weights[..., ~allowed] == 0).all() and (weights[..., allowed] > 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(1, 2, T))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_finite_at_16x_where_a_method_applies_and_one_line_where_not(scheme):
    model = make_model(scheme, train_len=L)
    for ext in (LogN(), ReRoPE(), SelfExtend(), LMInfinite(), Streaming()):
        ext = ext.resolve(L)
        try:
            extensions.check_applies(ext, model.pos, scheme)
        except ConfigError as e:
            assert scheme not in APPLIES and ext.name != "logn", (scheme, ext.name)
            assert str(e).count("\n") == 0 and scheme in str(e)
            continue
        assert scheme in APPLIES or ext.name == "logn" or (scheme == "none" and ext.windows), (scheme, ext.name)
        model.extension = ext
        n = L if scheme == "learned" else 16 * L  # (a learned table refuses 16x with or without an extension)
        with torch.no_grad():
            assert torch.isfinite(model(ids(n))).all(), (scheme, ext.name)
        model.extension = None


def test_windows_relative_to_the_training_length_and_bad_values():
    assert SelfExtend().resolve(64).W == 16 and ReRoPE().resolve(4096).w == 512  # the released code's 512 at 4k
    assert LMInfinite().resolve(64).W == 64 and Streaming().resolve(64).C == 64 and ReRoPE(window=7).resolve(64).w == 7
    se = SelfExtend().resolve(16)  # W = 4: the smallest G whose largest grouped distance stays below L = 16
    assert se.group_size(64) == 6 and 63 // 6 + 4 - 4 // 6 == 14 and 63 // 5 + 4 - 4 // 5 == 16
    assert se.group_size(16) == 1  # within L: the identity
    with pytest.raises(ConfigError, match="shorter than the training length"):
        SelfExtend(window=1.0).resolve(16)
    with pytest.raises(ConfigError, match="positive number of tokens"):
        ReRoPE(window=-1).resolve(16)
    with pytest.raises(ConfigError, match="unknown extension"):
        extensions.build("../none", 16)


def test_evaluate_scores_a_checkpoint_under_each_extension_once(tmp_path, tree, monkeypatch):
    from test_end_to_end import cfg_eval, compose_run

    from lenx.evaluate import evaluate_checkpoint
    from lenx.train import run

    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))
    cfg = compose_run(tmp_path, tree, "pos=alibi", "eval.multipliers=[1,4]")
    trained = run(cfg)
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    rows = evaluate_checkpoint(ckpt, cfg_eval(cfg), tmp_path / "ev", ["none"], ["none", "rerope", "lm_infinite"])
    by = {(r["extension"], r["multiplier"]): r["ppl"] for r in rows}
    assert len(rows) == 6 and all(r["status"] == "ok" and math.isfinite(r["ppl"]) for r in rows)
    assert by[("none", 1)] == pytest.approx(trained[0]["ppl"], rel=1e-6)
    assert by[("lm_infinite", 1)] == by[("none", 1)] and by[("lm_infinite", 4)] != by[("none", 4)]
    assert evaluate_checkpoint(ckpt, cfg_eval(cfg), tmp_path / "ev", None, ["rerope"]) == []  # already scored
    with pytest.raises(ConfigError, match="unknown extension"):
        evaluate_checkpoint(ckpt, cfg_eval(cfg), tmp_path / "ev", None, ["selfextend"])
    table = (tmp_path / "ev" / "extrapolation.csv").read_text().splitlines()
    assert table[0].startswith("pos,scaling,extension,positions") and len(table) == 7


@pytest.mark.parametrize("path", sorted((CONFIGS / "extension").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_extension_config_builds_and_names_its_source(path):
    assert path.read_text().startswith("# ")
    label, ext = extensions.build(path.stem, 64)
    assert label == path.stem == ext.name


def test_an_entry_overrides_parameters_by_the_names_its_config_has():
    label, ext = extensions.build({"name": "self_extend", "window": 8, "group": 4}, 64)
    assert label == "self_extend[group=4,window=8]" and ext.W == 8 and ext.group_size(1000) == 4
    assert extensions.build("rerope", 64)[0] == "rerope"
    with pytest.raises(ConfigError, match=r"unknown: \['windw'\]"):
        extensions.build({"name": "self_extend", "windw": 8}, 64)
    with pytest.raises(ConfigError, match="unknown"):
        extensions.build({"name": "self_extend", "_target_": "os.system"}, 64)
