"""Attention's fast paths for bias schemes against the reference mask path (issue 25): the same logits and
gradients, whole and chunked, for every scheme that takes them.

- "features" (ALiBi): the linear bias as exact extra channels of q and k, SDPA's fused causal kernel, no mask;
- "toeplitz" (every bias of i - j alone): a strided view of one vector of distances over reversed keys;
- "chunk_mask" (Shaw, Transformer-XL, DeBERTa, FIRE while scoring): each chunk's mask built in one reused workspace;
  the content schemes' terms placed by distance with one write (`lenx.kernels.by_distance`) instead of a
  gather per pair, FIRE's bias in place.
The reference is the path these replaced: a float (H, t, s) mask per chunk (`path="mask"`), which
`attention=reference` selects. Which kernels ran is read from `lenx.attention.traced()`.
"""

from pathlib import Path

import pytest
import torch
from conftest import make_model

from lenx import attention
from lenx.attention import split_slopes
from lenx.kernels import Workspace, by_distance
from lenx.pos.bias import ALiBi, alibi_slopes

DISTANCE = ["alibi", "alibi_learned", "t5", "kerple_log", "kerple_power", "sandwich"]


def logits_and_grads(model, x, train: bool):
    model.zero_grad()
    model.train(train)
    out = model(x)
    out.float().logsumexp(-1).mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def paths_taken(model, x, pos_T=None, grad: bool = False):
    """The kernels that ran (lenx.attention.traced) in a forward (and backward, with `grad`)."""
    with attention.traced() as seen, torch.set_grad_enabled(grad):
        out = model(x, pos_T)
        if grad:
            out.float().logsumexp(-1).mean().backward()
    return set(seen)


def on_reference(model):
    """A context in which the model runs attention=reference."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        before, model.attention = model.attention, "reference"
        try:
            yield
        finally:
            model.attention = before

    return ctx()


@pytest.mark.parametrize("scheme", DISTANCE)
@pytest.mark.parametrize("chunked", [False, True])
def test_fast_paths_equal_the_mask_path(scheme, chunked, monkeypatch):
    n_heads = 3 if scheme == "alibi" else 4  # 3 heads: ALiBi's slopes are not powers of two (the lo channels)
    model = make_model(scheme, train_len=32, n_heads=n_heads, d_model=48 if n_heads == 3 else 32)
    x = torch.randint(0, 50, (2, 160), generator=torch.Generator().manual_seed(0))
    if chunked:  # a few query rows per chunk: many chunks, each with its own key range
        monkeypatch.setattr(attention, "CHUNK_LOGITS", 2 * n_heads * 160 * 24)
    expected = {"alibi": "features", "alibi_learned": "features"}.get(scheme, "toeplitz")
    assert paths_taken(model, x) == {expected}  # scoring (no gradient); a learned bias trains on the mask path
    fast = [logits_and_grads(model, x, train) for train in (False, True)]
    with on_reference(model):
        assert paths_taken(model, x) == {"mask"}
        ref = [logits_and_grads(model, x, train) for train in (False, True)]
    for (out, grads), (out_ref, grads_ref) in zip(fast, ref):
        torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
        assert grads.keys() == grads_ref.keys()
        for name in grads:
            torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("scheme", ["shaw", "shaw_kv", "transformer_xl", "deberta", "fire", "cope"])
@pytest.mark.parametrize("chunked", [False, True])
def test_chunk_masks_equal_the_mask_path(scheme, chunked, monkeypatch):
    # max_distance 8 < 160 tokens: the clipped (far) pairs and the near band both occur; chunked, every chunk
    # has its own key range (and DeBERTa's first ones queries whose near band reaches before key 0)
    over = {"max_distance": 8} if scheme in ("shaw", "shaw_kv", "deberta") else {"npos_max": 8} if scheme == "cope" else {}
    model = make_model(scheme, train_len=32, n_heads=4, d_model=32, **over)
    with torch.no_grad():  # tables of unit scale (the inits are ~0.02): every positional term moves the logits
        for p in model.pos.parameters():
            p.normal_(generator=torch.Generator().manual_seed(p.numel()))
    x = torch.randint(0, 50, (2, 160), generator=torch.Generator().manual_seed(0))
    if chunked:
        monkeypatch.setattr(attention, "CHUNK_LOGITS", 2 * 4 * 160 * 24)
    # every chunk is the scheme's own: none falls back to the general path
    assert paths_taken(model, x) == {"chunk_values" if scheme == "shaw_kv" else "chunk_mask"}
    with torch.no_grad():
        fast = model(x)
    general = "weights" if scheme == "shaw_kv" else "mask"  # (Shaw-KV's value term reads the weights)
    with on_reference(model):
        assert paths_taken(model, x) == {general}
        with torch.no_grad():
            ref = model(x)
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    model.train()
    assert paths_taken(model, x, grad=True) == {general}  # training: the gradient flows through `score`


@pytest.mark.parametrize("t, s, R", [(5, 12, 4), (12, 12, 3), (4, 9, 9), (3, 7, 20), (1, 6, 1)])
def test_by_distance_places_each_term_at_its_distance(t, s, R):
    desc = torch.randn(2, 3, t, R, generator=torch.Generator().manual_seed(t * s + R))
    got = by_distance(desc, s)
    assert got.shape == (2, 3, t, s)
    for r in range(t):
        for j in range(s):
            d = (s - t + r) - j
            want = desc[:, :, r, R - 1 - min(d, R - 1)] if d >= 0 else torch.full((2, 3), float("-inf"))
            assert torch.equal(got[:, :, r, j], want), (r, j)


def test_alibi_features_at_8192_tokens_equal_the_float64_bias():
    """The channels' sum is exact where the mask path's fp32 bias is: at 8192 positions, attention outputs
    within fp32 rounding of a float64 softmax, for power-of-two and other head counts."""
    for n_heads in (4, 3):
        pos = ALiBi(d_model=8 * n_heads, n_heads=n_heads, head_dim=8, train_len=64)
        T = 8192
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, n_heads, T, 8, generator=g) for _ in range(3))
        ctx = pos.context(torch.arange(T), torch.arange(T))
        y = attention.attend_features(q, k, v, pos, ctx, 0.0)
        rows = slice(T - 64, T)  # the last queries: the largest positions, every key visible
        i, j = torch.arange(T)[rows, None], torch.arange(T)[None, :]
        logits = q[:, :, rows].double() @ k.double().transpose(-1, -2) / 8 ** 0.5
        logits = logits - alibi_slopes(n_heads).double()[:, None, None] * (i - j)
        ref = logits.masked_fill(j > i, float("-inf")).softmax(-1) @ v.double()
        assert (y[:, :, rows].double() - ref).abs().max() < 2e-6


def test_split_slopes_make_exact_products():
    slopes = torch.tensor([0.5, 0.3, 2 ** -0.375, 1e-3])
    hi = split_slopes(slopes, 8191)
    assert hi[0] == 0.5  # a power of two stays whole
    p = torch.arange(8192, dtype=torch.float64)
    assert torch.equal((hi.double()[:, None] * p).float().double(), hi.double()[:, None] * p)  # exact in fp32
    assert ((slopes - hi).abs() <= slopes * 2.0 ** -10).all()


def test_toeplitz_view_writes_no_tensor_of_the_mask_size():
    model = make_model("t5", train_len=32, n_heads=4)
    ctx = model.pos.context(torch.arange(1024), torch.arange(1024))
    view = attention.toeplitz_view(ctx.bias_HR, 512, 256, 768, torch.float32)
    assert view.shape == (1, 4, 256, 768)
    assert view.untyped_storage().nbytes() == 4 * 4 * (256 + 768 - 1)  # one vector of distances per head
    i, c = 100, 700  # query 612, key 767 - 700 = 67: distance 545
    assert view[0, :, i, c].tolist() == ctx.bias_HR[:, 545].tolist()
    assert torch.isinf(view[0, 0, 0, :255]).all() and not torch.isinf(view[0, 0, 0, 255:]).any()


def test_features_decline_far_positions_and_the_plan_knows_it():
    pos = ALiBi(d_model=16, n_heads=2, head_dim=8, train_len=16)
    far = torch.arange(70000, 70040)
    assert not attention.channels_exact(pos.context(far, far))
    assert attention.plan(pos, pos.context(far, far), batch=1, dtype=torch.float32, contiguous=False).path == "mask"
    model = make_model("alibi", train_len=16)
    x = torch.randint(0, 50, (1, 40), generator=torch.Generator().manual_seed(1))
    # explicit positions past FEATURE_POSITIONS: planned on the mask path (features never tried), same logits
    assert paths_taken(model, x, far) == {"mask"}
    with torch.no_grad():
        out = model(x, far)
        with on_reference(model):
            torch.testing.assert_close(out, model(x, far), rtol=1e-5, atol=1e-5)


def test_features_need_increasing_positions_for_the_causal_kernel():
    pos = ALiBi(d_model=16, n_heads=2, head_dim=8, train_len=16)
    up, shuffled = torch.tensor([0, 3, 4, 9]), torch.tensor([0, 4, 3, 9])
    assert attention.plan(pos, pos.context(up, up), batch=1, dtype=torch.float32, contiguous=False).path \
        == "features"
    assert attention.plan(pos, pos.context(shuffled, shuffled), batch=1, dtype=torch.float32,
                          contiguous=False).path == "mask"
    assert attention.plan(pos, pos.context(up, up), batch=1, dtype=torch.bfloat16, contiguous=False).path == "mask"


def test_fire_linear_pieces_equal_its_mlp():
    """Without a gradient, FIRE's bias comes from the MLP's linear pieces: the same values as the MLP, for every
    layer's table, at positions past the threshold (the interpolation regime) and before it; with one hidden unit
    that never switches (w1 = 0) too."""
    model = make_model("fire", train_len=32, n_heads=4, n_layers=2)
    pos = model.pos
    with torch.no_grad():
        pos.w1_NW[1, 3] = 0.0
    q, k = torch.arange(300, 700), torch.arange(700)
    for n in range(pos.tables):
        with torch.no_grad():
            ref = pos.fire_bias(q, k, n)
            fast = pos.fire_bias(q, k, n, pieces=True)
        torch.testing.assert_close(fast, ref.detach(), rtol=1e-5, atol=1e-6)
    x = torch.randint(0, 50, (1, 200), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = model(x)
        with on_reference(model):
            torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t, s", [(1, 1), (7, 7), (5, 40), (64, 300)])
@pytest.mark.parametrize("init_L", [512.0, 4.0])
def test_fire_chunk_mask_is_its_bias_bitwise(t, s, init_L):
    """FIRE's chunk mask (pieces numbered by searches and a cumulative sum, x from a strided buffer) holds the
    same values as its bias on the pieces path plus the causal mask, bit for bit: before the threshold L (one
    normaliser for every query) and past it (init_L 4: a normaliser per query), with unit-scale weights so that
    most pieces fall inside x in [0, 1], and a hidden unit that never switches."""
    from lenx.pos.base import AttnContext, causal

    pos = make_model("fire", train_len=32, n_heads=4, init_L=init_L).pos
    with torch.no_grad():
        for seed, p in enumerate(pos.parameters()):
            p.normal_(generator=torch.Generator().manual_seed(seed))
        pos.c_N.abs_()
        pos.w1_NW[0, 5] = 0.0
        q_pos, k_pos = torch.arange(s - t, s), torch.arange(s)
        for n in range(pos.tables):
            ctx = AttnContext(q_pos_T=q_pos, k_pos_S=k_pos, layer=n)
            _, mask = pos.chunk_mask(torch.zeros(1, 4, t, 8), torch.zeros(1, 4, s, 8), ctx, Workspace())
            ref = causal(pos.fire_bias(q_pos, k_pos, n, pieces=True), q_pos, k_pos)
            assert torch.equal(mask[0], ref), (mask[0] - ref).abs().nan_to_num().max()
    edges = pos.mlp_pieces(0)[0]
    assert ((edges > 0) & (edges < 1)).sum() >= 3  # several pieces inside [0, 1]: the numbering is exercised


@pytest.mark.parametrize("t, s", [(1, 1), (9, 9), (20, 100), (64, 300)])
@pytest.mark.parametrize("gate_scale", [1.0, 8.0])
def test_cope_chunk_mask_is_its_score_with_the_clamp_found(t, s, gate_scale):
    """CoPE's chunk mask (exact terms near each query, the clamped constant beyond) equals `score` + the causal
    mask: with gates near 1/2 (the clamp at npos_max - 1 = 7 reached ~14 keys back) and with gates spread to
    0 and 1 (q scaled by 8: rows whose count stays below the clamp for longer, so blocks grow)."""
    from lenx.pos.base import AttnContext

    pos = make_model("cope", train_len=32, n_heads=4, npos_max=8).pos
    g = torch.Generator().manual_seed(s)
    q, k = gate_scale * torch.randn(2, 4, t, 8, generator=g), torch.randn(2, 4, s, 8, generator=g)
    q_pos, k_pos = torch.arange(s - t, s), torch.arange(s)
    with torch.no_grad():
        pos.pos_emb_NDP.normal_(generator=g)
        ctx = AttnContext(q_pos_T=q_pos, k_pos_S=k_pos)
        q2, mask = pos.chunk_mask(q, k, ctx, Workspace())
        ref = pos.score(q, k, ctx).masked_fill(k_pos[None, :] > q_pos[:, None], float("-inf"))
    assert q2 is q
    torch.testing.assert_close(mask, ref, rtol=0, atol=1e-6)
    if s >= 100:  # most of each long row is the clamped constant, which the blocks never computed
        assert (mask[..., :s - t - 32] == mask[..., :1]).float().mean() > 0.5


def test_fire_piece_starts_are_counted_on_the_divided_values():
    """The first distance of each piece is where psi(d) / norm passes the edge, as bucketize compares: from the
    search's guess and from guesses a few distances off either way (the walk that corrects rounding)."""
    from lenx.pos.fire import distances_at_most

    psi = torch.log(0.1 * torch.arange(500.0) + 1)
    norm = torch.log(0.1 * torch.tensor([400.0, 499.0, 3000.0]) + 1)
    edges = torch.cat([torch.tensor([-1.0, 0.0, 1.0, 2.0]), psi[[3, 77, 499]] / norm[1]])  # ties with values too
    brute = (psi[None, :, None] / norm[:, None, None] <= edges).sum(1)
    assert torch.equal(distances_at_most(psi, norm, edges), brute)
    for off in (-3, 2, 5):
        assert torch.equal(distances_at_most(psi, norm, edges, (brute + off).clamp(0, 500)), brute)


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU")])])
def test_flex_attention_equals_the_sdpa_paths(device):
    """attention=flex (FlexAttention, compiled; ~30 s of compilation per shape on a CPU): the same logits as the
    SDPA paths, and on CUDA the same gradients (FlexAttention has no backward on CPU: training there keeps SDPA),
    for a fixed and a learned distance bias, at default and at gapped positions."""
    grads = device == "cuda"
    for scheme in ("alibi", "t5"):
        model = make_model(scheme, train_len=32, n_heads=4).to(device)
        x = torch.randint(0, 50, (2, 64), generator=torch.Generator().manual_seed(3)).to(device)
        for pos_T in (None, torch.arange(64, device=device) * 3 + 5):
            runs = []
            for impl in ("sdpa", "flex"):
                model.attention = impl
                model.zero_grad()
                with torch.set_grad_enabled(grads):
                    if impl == "flex":
                        assert paths_taken(model, x) == {"flex"}
                    out = model(x, pos_T)
                    if grads:
                        out.float().logsumexp(-1).mean().backward()
                runs.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                            if p.grad is not None}))
            (a, ga), (b, gb) = runs
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
            assert ga.keys() == gb.keys() and bool(ga) == grads
            for n in ga:
                torch.testing.assert_close(gb[n], ga[n], rtol=1e-3, atol=1e-4, msg=n)


def test_attention_setting_is_checked():
    from lenx.errors import ConfigError
    from lenx.scoring import check_attention

    assert check_attention("flex", "attention") == "flex"
    assert check_attention("reference", "attention") == "reference"
    with pytest.raises(ConfigError, match="sdpa, flex or reference"):
        check_attention("fast", "eval.attention")


# ------------------------------------------------------------------------------------- the plan is what runs
SCHEMES = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "configs" / "pos").glob("*.yaml"))
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])]


def planned_and_ran(model, x, pos_T, train: bool):
    """(the paths the plans chose, the kernels that ran, logits, gradients) for one forward (+ backward)."""
    planned, real = [], attention.plan

    def spy(*args, **kw):
        chosen = real(*args, **kw)
        planned.append(chosen.path)
        return chosen

    attention.plan = spy
    try:
        model.zero_grad()
        model.train(train)
        with attention.traced() as ran, torch.set_grad_enabled(train):
            torch.manual_seed(0)  # the same draws in every forward (Abacus's offset k while training)
            out = model(x, pos_T)
            if train:
                out.float().logsumexp(-1).mean().backward()
    finally:
        attention.plan = real
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return set(planned), set(ran), out.detach(), grads


def matrix_model(scheme: str, device: str):
    over = {"max_distance": 8} if scheme in ("shaw", "shaw_kv", "deberta") else \
        {"npos_max": 8} if scheme == "cope" else {}
    model = make_model(scheme, train_len=64, n_heads=4, d_model=32, **over).to(device)
    with torch.no_grad():  # unit-scale positional tables: every term moves the logits
        for p in model.pos.parameters():
            p.normal_(generator=torch.Generator(device=device).manual_seed(p.numel()))
    return model


def check_matrix(scheme: str, device: str, impls: tuple[str, ...]):
    model = matrix_model(scheme, device)
    x = torch.randint(0, 50, (2, 48), generator=torch.Generator().manual_seed(0)).to(device)
    gapped = torch.arange(48, device=device) * 3 + 5
    for where, pos_T in (("default", None), ("gapped", gapped)):
        if scheme == "learned" and pos_T is not None:
            continue  # a learned table of 64 rows holds no position past 63
        for train in (False, True):
            runs = {}
            for impl in ("reference", *impls):
                model.attention = impl
                planned, ran, out, grads = planned_and_ran(model, x, pos_T, train)
                # one plan per forward and kind of layer (a hybrid's windowed RoPE layers and full NoPE layers)
                kinds = len(set(model.layer_modifiers))
                assert 1 <= len(planned) <= kinds and ran == planned, (scheme, where, train, impl, planned, ran)
                runs[impl] = (out, grads)
            out_ref, grads_ref = runs["reference"]
            for impl in impls:
                out, grads = runs[impl]
                torch.testing.assert_close(out, out_ref, rtol=1e-4, atol=1e-4, msg=f"{scheme} {where} {impl}")
                assert grads.keys() == grads_ref.keys()
                for name in grads:
                    torch.testing.assert_close(grads[name], grads_ref[name], rtol=1e-3, atol=1e-4,
                                               msg=f"{scheme} {where} {impl} {name}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_runs_the_planned_kernel_and_matches_the_reference(scheme, device):
    """Every scheme x {training step, scoring} x {default positions, gapped positions} x {sdpa, reference}: the
    kernels that ran are exactly the plan's path (no fallback anywhere), with logits and gradients equal to the
    reference path's. (attention=flex: the test below.)"""
    check_matrix(scheme, device, ("sdpa",))


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scheme", DISTANCE)
def test_flex_runs_where_planned(scheme, device):
    """attention=flex on every bias of the distance: FlexAttention where the plan says so (scoring; on CUDA
    training too), the SDPA paths the plan chose where it cannot run (CPU backward), each what the plan said.
    FlexAttention compiles per shape (~30 s on a CPU)."""
    check_matrix(scheme, device, ("flex",))
