"""The position modes' draws against their authors' code (lenx.positions): each mode's distribution, draws per
attention layer (randomized; ALiBi's sorted distances placed Toeplitz, against a re-implementation of the authors'
construction), per example (PoSE, offsets), the shared variants bitwise lenx's earlier draws, SHAPE's evaluation
offset, and prefixes of per-layer draws for greedy decoding."""

import logging
from collections import Counter

import numpy as np
import pytest
import torch
from conftest import make_model
from test_positions import materialise, module_for

from lenx import positions
from lenx.checks import check_config
from lenx.lit import build_model

T, STEPS = 16, 3000


def draws(mode, seed=0, n=STEPS, T=T):
    """One draw per step (a shared draw: the distribution of each example's row, or of each layer's positions)."""
    return [mode.shared(T, seed, step).numpy() for step in range(n)]


def check_positions(ps, span):
    for p in ps:
        assert len(p) == T and (np.diff(p) > 0).all() and p.min() >= 0 and p.max() < span


def within_sampling_noise(counts: np.ndarray, probs: np.ndarray, n: int) -> bool:
    """Every count within 5 standard deviations of its expectation under the stated distribution."""
    expect, sd = n * probs, np.sqrt(n * probs * (1 - probs))
    return bool((np.abs(counts - expect) <= 5 * sd + 1).all())


def test_randomized_is_a_uniform_sorted_subset_of_the_range():
    mode = positions.Randomized(max_len=64)
    ps = draws(mode)
    check_positions(ps, 64)
    counts = np.bincount(np.concatenate(ps), minlength=64)
    # the authors' choice(arange(L), T, replace=False): each position is in a draw with probability T / L
    assert within_sampling_noise(counts, np.full(64, T / 64), STEPS)
    assert len({tuple(p) for p in ps}) > STEPS * 0.99  # (and draws differ from step to step)


def test_pose_two_chunks_follow_the_released_code():
    mode = positions.PoSE(target_len=64)
    ps = draws(mode)
    check_positions(ps, 64)
    first, skip = [], []
    for p in ps:
        jumps = np.flatnonzero(np.diff(p) > 1)
        cut = int(jumps[0]) + 1 if len(jumps) else None  # no jump: a skip of 0 (the cut is then invisible)
        assert len(jumps) <= 1 and p[0] == 0  # two chunks; the first keeps positions 0.. (the code's lt = 0)
        if cut is not None:
            first.append(cut)
        skip.append(int(p[-1]) - (T - 1))
    # rt1 = randint(1, (T + 1) // 2): the first chunk's length, uniform (a skip of 0 hides it: 1 draw in 49)
    assert set(first) == set(range(1, (T + 1) // 2 + 1))
    lengths = np.array([Counter(first)[k] for k in range(1, (T + 1) // 2 + 1)])
    assert within_sampling_noise(lengths, np.full(len(lengths), 1 / len(lengths)), len(first))
    # rt = randint(0, target_len - T): the skip, uniform over 0..48, so distances up to target_len - 1 occur
    counts = np.bincount(skip, minlength=64 - T + 1)
    assert len(counts) == 64 - T + 1 and within_sampling_noise(counts, np.full(len(counts), 1 / len(counts)), STEPS)
    assert max(int(p[-1] - p[0]) for p in ps) == 63


def test_pose_more_chunks_and_offset():
    ps = draws(positions.PoSE(target_len=64, chunks=4), n=500)
    check_positions(ps, 64)
    assert max(len(np.flatnonzero(np.diff(p) > 1)) for p in ps) == 3 and all(p[0] == 0 for p in ps)
    ps = draws(positions.Offset(max_len=40))
    check_positions(ps, 40)
    assert all((np.diff(p) == 1).all() for p in ps)  # a shifted window, no gaps
    starts = np.bincount([int(p[0]) for p in ps], minlength=40 - T + 1)
    assert len(starts) == 40 - T + 1 and within_sampling_noise(starts, np.full(len(starts), 1 / len(starts)), STEPS)


MODES = [positions.Randomized(max_len=64), positions.RandomizedShared(max_len=64), positions.PoSE(target_len=64),
         positions.PoSEBatch(target_len=64), positions.Offset(max_len=64), positions.OffsetBatch(max_len=64)]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_draws_are_a_function_of_seed_step_and_micro_batch(mode):
    a, b = (materialise(mode.for_step(T, 3, 17, batch=4)) for _ in range(2))
    assert torch.equal(a, b)
    others = [mode.for_step(T, 4, 17, batch=4), mode.for_step(T, 3, 18, batch=4), mode.for_step(T, 3, 17, 1, batch=4)]
    assert all(not torch.equal(a, materialise(o)) for o in others)


def old_draw(mode, T, seed, step, micro=0):
    """lenx's draw before per-layer and per-example draws (commit 984059a), re-implemented: one vector per forward."""
    rng = np.random.default_rng((seed, step, micro, 0x9E3779B9))
    if isinstance(mode, positions.Randomized):
        return np.sort(rng.choice(mode.max_len, size=T, replace=False))
    if isinstance(mode, positions.Offset):
        return int(rng.integers(0, mode.max_len - T + 1)) + np.arange(T)
    cut, skip = int(rng.integers(1, (T + 1) // 2 + 1)), int(rng.integers(0, mode.max_len - T + 1))
    return np.arange(T) + np.where(np.arange(T) >= cut, skip, 0)


@pytest.mark.parametrize("mode", [positions.RandomizedShared(max_len=64), positions.PoSEBatch(target_len=64),
                                  positions.OffsetBatch(max_len=64)], ids=lambda m: m.name)
def test_the_shared_variants_draw_what_lenx_drew_before(mode):
    """randomized_shared, pose_batch, offset_batch: one vector per forward, bitwise lenx's earlier draws, and the
    model runs it as before (one context for every layer); offset_batch scores at 0."""
    for step in range(20):
        got = mode.for_step(T, 5, step, micro=step % 2, batch=4)
        assert got.shape == (T,) and np.array_equal(got.numpy(), old_draw(mode, T, 5, step, step % 2))
    assert mode.eval_start(T) == 0 or not isinstance(mode, positions.Offset)


def test_pose_and_offset_draw_per_example():
    """The authors draw per example (PoSE's loop over examples; SHAPE's randint(..., size=(bsz,))): (B, T) rows,
    row r from (seed, step, micro, first + r), each a draw of the mode's distribution."""
    for mode in (positions.PoSE(target_len=64), positions.Offset(max_len=64)):
        rows = mode.for_step(T, 1, 2, micro=0, batch=8)
        assert rows.shape == (8, T) and len({tuple(r.tolist()) for r in rows}) > 1
        check_positions(rows.numpy(), 64)
        assert torch.equal(mode.for_step(T, 1, 2, batch=4, first=4), rows[4:])  # DDP: rank 1's rows 4..7
        rng = np.random.default_rng((1, 2, 0, positions.TAG, positions.ROW, 3))
        assert np.array_equal(rows[3].numpy(), mode.draw(T, rng))
        assert mode.for_eval(T, 0, 64, 3).shape == (T,)  # scoring under the mode: one draw per batch
    pose = [r.numpy() for s in range(300) for r in positions.PoSE(target_len=64).for_step(T, 0, s, batch=4)]
    check_positions(pose, 64)
    skips = np.bincount([int(p[-1]) - (T - 1) for p in pose], minlength=64 - T + 1)
    assert within_sampling_noise(skips, np.full(len(skips), 1 / len(skips)), len(pose))


@pytest.mark.parametrize("scheme", ["rope", "rope_partial", "learned", "sinusoidal", "none", "alibi", "xpos", "fire",
                                    "shaw", "t5", "cope"])
def test_per_example_rows_equal_each_example_on_its_own(scheme):
    """Positions (B, T): the batched path (RoPE's cos/sin per example, absolute tables) and the grouped one (every
    other scheme) give each example the logits it gets alone at its row, and equal rows collapse to one vector."""
    model = make_model(scheme, train_len=16, **({"max_positions": 64} if scheme == "learned" else {}))
    idx = torch.randint(0, 50, (6, T), generator=torch.Generator().manual_seed(2))
    rows = positions.PoSE(target_len=64).for_step(T, 0, 1, batch=6)
    rows[4] = rows[1]  # a group of two equal rows
    with torch.no_grad():
        got = model(idx, rows)
        alone = torch.cat([model(idx[b:b + 1], rows[b]) for b in range(6)])
        torch.testing.assert_close(got, alone, rtol=1e-5, atol=1e-5)
        same = rows[:1].expand(6, T)
        assert torch.equal(model(idx, same), model(idx, rows[0]))
    model.train()
    model(idx, rows).float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def layer_contexts(model, idx, pos):
    """The context each block receives (layer order), recorded from the blocks' calls."""
    seen = []
    for block in model.blocks:
        real = block.forward
        block.forward = lambda x, p, ctx, plan, real=real: (seen.append(ctx), real(x, p, ctx, plan))[1]
    with torch.no_grad():
        out = model(idx, pos)
    for block in model.blocks:
        del block.forward
    return seen, out


def test_randomized_draws_again_in_every_attention_layer():
    """RoPE's rotation (Ruoss et al.'s NOISY_ROTARY: a fresh rng key per attention layer) reads layer l's own sorted
    draw from [0, max_len), a function of (seed, step, micro, layer); the input's draw is the shared one."""
    model = make_model("rope", train_len=16, n_layers=3)
    idx = torch.randint(0, 50, (2, T), generator=torch.Generator().manual_seed(3))
    mode = positions.Randomized(max_len=64)
    drawn = mode.for_step(T, 7, 11, micro=1)
    ctxs, out = layer_contexts(model, idx, drawn)
    for layer, ctx in enumerate(ctxs):
        rng = np.random.default_rng((7, 11, 1, positions.TAG, positions.LAYER, layer, 0))
        expect = np.sort(rng.choice(64, size=T, replace=False))  # the authors' choice(arange(L), T, replace=False)
        assert ctx.layer == layer and np.array_equal(ctx.q_pos_T.numpy(), expect)
        torch.testing.assert_close(ctx.cos_TD, model.pos.context(torch.from_numpy(expect), None).cos_TD)
    assert len({tuple(c.q_pos_T.tolist()) for c in ctxs}) == 3  # a new draw per layer
    assert np.array_equal(drawn.embed_T.numpy(), old_draw(mode, T, 7, 11, 1))
    again = layer_contexts(model, idx, mode.for_step(T, 7, 11, micro=1))[1]
    assert torch.equal(out, again)
    with torch.no_grad():  # the shared variant: one draw for every layer, as before
        shared = positions.RandomizedShared(max_len=64).for_step(T, 7, 11, micro=1)
        ctxs = layer_contexts(model, idx, shared)[0]
        assert all(torch.equal(c.q_pos_T, shared) for c in ctxs)


def authors_noisy_alibi(slopes_H, distances, T):
    """Ruoss et al.'s `compute_noisy_alibi_encodings_biases` (randomize_both_sides=False) re-implemented in numpy
    from the sorted drawn distances d_1 < ... < d_{T-1}: the vector [dummy, left + 0.5, 0, right] tiled over the
    queries and moved by `relative_shift`'s reshape trick (`_rel_shift_inner`), times the slopes. (H, T, T)."""
    symmetric = -np.sort(distances)
    right, left = symmetric[:T - 1], np.flip(symmetric)[:T - 1] + 0.5
    vec = np.concatenate([[0.0], left, [0.0], right])  # 2T entries
    logits = np.tile(vec, (T, 1))  # (T, 2T)
    x = logits.reshape(2 * T, T)[1:].reshape(T, 2 * T - 1)[:, :T]  # _rel_shift_inner
    return x[None] * slopes_H[:, None, None]


def test_randomized_alibi_draws_sorted_distances_placed_toeplitz():
    """ALiBi under randomized positions: per layer, T - 1 sorted distinct distances from [1, max_len) (their
    `sample_positions` = choice(arange(1, L), replace=False)), the pair at offset m reading d_m. The bias equals the
    authors' construction on past keys and the diagonal, less their constant 0.5 m_h on strictly past keys
    (a non-causal encoder's left/right symmetry break, which lenx's causal ALiBi leaves out)."""
    from lenx.attention import positional_mask

    model = make_model("alibi", train_len=16, n_layers=2)
    idx = torch.randint(0, 50, (2, T), generator=torch.Generator().manual_seed(4))
    mode = positions.Randomized(max_len=64)
    drawn = mode.for_step(T, 2, 9)
    ctxs, out = layer_contexts(model, idx, drawn)
    slopes = model.pos.slopes_H.numpy().astype(np.float64)
    for layer, ctx in enumerate(ctxs):
        rng = np.random.default_rng((2, 9, 0, positions.TAG, positions.LAYER, layer, 1))
        d = np.sort(rng.choice(np.arange(1, 64), size=T - 1, replace=False))
        ref = authors_noisy_alibi(slopes, d, T)
        past = np.tril(np.ones((T, T)), -1).astype(bool)
        ref = np.where(past, ref - 0.5 * slopes[:, None, None], ref)
        mask = positional_mask(model.pos, ctx, 0, torch.float32).numpy()
        lower = np.tril(np.ones((T, T))).astype(bool)
        np.testing.assert_allclose(mask[:, lower], ref[:, lower], rtol=1e-6, atol=1e-6)
        assert np.isneginf(mask[:, ~lower]).all()
    assert not np.array_equal(*(c.drawn_R.numpy() for c in ctxs))  # each layer its own distances
    model.attention = "reference"  # the fast paths (features, Toeplitz view) read the drawn distances as the mask
    ref_out = layer_contexts(model, idx, drawn)[1]
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)


def test_offset_scores_at_shapes_k(tmp_path):
    """SHAPE evaluates at a fixed offset K (`self.pe[step + max_noise_size:]`): the Decoder's default positions
    start at K = max_len - seq_len + 1 for positions=offset (validation and scoring), at 0 for offset_batch and
    eval_offset: 0; a shift-invariant scheme ignores it (bitwise its contiguous path)."""
    _, cfg = module_for(tmp_path, "sinusoidal", "positions=offset", "positions.max_len=64")
    model = build_model(cfg).eval()
    assert model.position_offset == 64 - 16 + 1 == positions.eval_offset(cfg)
    idx = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(idx), model(idx, torch.arange(16) + 49))
        assert not torch.equal(model(idx), model(idx, torch.arange(16)))
    for over in (["positions=offset_batch"], ["positions=offset", "positions.eval_offset=0"]):
        assert build_model(module_for(tmp_path, "sinusoidal", *over, "positions.max_len=64")[1]).position_offset == 0
    _, cfg = module_for(tmp_path, "alibi", "positions=offset", "positions.max_len=64")
    model = build_model(cfg).eval()
    with torch.no_grad():
        shifted = model(idx)
        model.position_offset = 0
        assert torch.equal(shifted, model(idx))
    _, cfg = module_for(tmp_path, "learned", "positions=offset", "positions.max_len=64")
    assert build_model(cfg).pos.max_positions == 64 + 49  # every evaluation window up to max_len at K



def test_offset_batch_on_a_shift_invariant_scheme_and_shapes_offset_on_a_learned_table_are_said(tmp_path, caplog):
    _, cfg = module_for(tmp_path, "alibi", "positions=offset_batch")
    with caplog.at_level(logging.WARNING):
        check_config(cfg)
    assert "positions=offset_batch has no effect" in caplog.text
    caplog.clear()
    _, cfg = module_for(tmp_path, "learned", "positions=offset", "positions.max_len=64")
    with caplog.at_level(logging.WARNING):
        check_config(cfg)
    assert "scores a learned table from position 49" in caplog.text and "rows from 64 on" in caplog.text
    caplog.clear()
    _, cfg = module_for(tmp_path, "learned", "positions=offset", "positions.max_len=64", "positions.eval_offset=0")
    with caplog.at_level(logging.WARNING):
        check_config(cfg)
    assert "learned table" not in caplog.text


def test_an_offset_checkpoint_from_before_shapes_offset_still_scores_at_zero(tmp_path):
    """Before issue 32 `positions=offset` scored at 0 and sized a learned table to max_len: a stored Offset config
    without eval_offset is rebuilt so (same table, same logits), not at SHAPE's K."""
    from lenx.checkpoint import safe_run_config

    _, cfg = module_for(tmp_path, "learned", "positions=offset", "positions.max_len=64", "positions.eval_offset=0")
    old = {**cfg, "positions": {k: v for k, v in cfg["positions"].items() if k != "eval_offset"}}
    rebuilt = safe_run_config(old)
    assert rebuilt["positions"]["eval_offset"] == 0
    model = build_model(rebuilt)
    assert model.position_offset == 0 and model.pos.max_positions == 64
    new = safe_run_config({**cfg, "positions": {**cfg["positions"], "eval_offset": None}})
    assert build_model(new).position_offset == 49  # a run of today's default keeps SHAPE's K



@pytest.mark.parametrize("scheme", ["rope", "alibi", "learned"])
def test_a_prefix_of_layer_draws_is_the_causal_prefix(scheme):
    """Greedy decoding feeds growing prefixes with draws[:n]: every layer's positions and distances are cut to
    their first n, so the prefix's logits are the full sequence's first n (causality under per-layer draws)."""
    model = make_model(scheme, train_len=16, **({"max_positions": 64} if scheme == "learned" else {}))
    idx = torch.randint(0, 50, (2, T), generator=torch.Generator().manual_seed(5))
    drawn = positions.Randomized(max_len=64).for_eval(T, 0, 2, 1)
    with torch.no_grad():
        full, head = model(idx, drawn), model(idx[:, :9], drawn[:9])
    torch.testing.assert_close(head, full[:, :9], rtol=1e-5, atol=1e-5)
    assert torch.equal(drawn[:9][:4].positions(1), drawn.positions(1)[:4])
