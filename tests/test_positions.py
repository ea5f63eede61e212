"""Train-time position augmentation (lenx.positions): each mode's draws against the distributions its paper's code
specifies, bitwise contiguous training, every scheme under randomized positions, shift invariance through the
augmented path, learned-table sizing, and runs that record their mode."""

import logging
import math

import numpy as np
import pytest
import torch
from conftest import SCHEMES, compose_train, make_model, small_model_overrides
from omegaconf import OmegaConf

from lenx import positions
from lenx.checkpoint import safe_run_config
from lenx.checks import check_config
from lenx.errors import CheckpointError, ConfigError
from lenx.lit import LenxModule, build_model
from lenx.results import scheme_label
from lenx.runid import run_id

T, STEPS = 16, 3000


def test_null_lengths_resolve_to_the_longest_evaluation_and_bad_ones_are_refused():
    cfg = {"seq_len": 32, "eval": {"multipliers": [1, 4, 16]}, "positions": {"_target_": "lenx.positions.PoSE",
                                                                           "target_len": None, "chunks": 2}}
    assert positions.configure(cfg).span(32) == 512 and cfg["positions"]["target_len"] == 512  # recorded
    with pytest.raises(ConfigError, match="shorter than seq_len"):
        positions.configure({**cfg, "positions": {"_target_": "lenx.positions.Randomized", "max_len": 16}})
    with pytest.raises(ConfigError, match="chunks must be an integer >= 2"):
        positions.PoSE(chunks=1)


def materialise(drawn, layers=3):
    """A mode's training positions as one tensor: a LayerDraws as its input draw and its layers' draws."""
    if isinstance(drawn, positions.LayerDraws):
        return torch.stack([drawn.embed_T] + [f(l) for l in range(layers) for f in (drawn.positions, drawn.distances)])
    return drawn


def module_for(tmp_path, scheme, *over):
    cfg = OmegaConf.to_container(compose_train(["seq_len=16", "model.d_model=32", "model.n_layers=2",
                                                "model.n_heads=2", "data.vocab_size=50", f"pos={scheme}",
                                                *small_model_overrides(scheme), *over], tmp_path), resolve=True)
    positions.configure(cfg)
    torch.manual_seed(0)
    return LenxModule(cfg), cfg


def test_contiguous_training_is_todays_bitwise(tmp_path, monkeypatch):
    module, _ = module_for(tmp_path, "alibi")
    batch = torch.randint(0, 50, (4, 17))
    seen = []
    forward = module.model.forward
    monkeypatch.setattr(module.model, "forward", lambda idx, pos_T=None: seen.append(pos_T) or forward(idx, pos_T))
    pos_T = module.train_positions(batch, 0)
    loss = module._loss(batch, pos_T)
    assert pos_T is None and seen == [None]  # the Decoder's own default positions (and its Toeplitz path)
    logits = forward(batch[:, :-1])
    ref = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
    assert torch.equal(loss, ref)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_trains_under_randomized_positions_and_scores_at_16x(scheme, tmp_path, caplog):
    module, cfg = module_for(tmp_path, scheme, "positions=randomized")
    with caplog.at_level(logging.WARNING):
        check_config(cfg)
    said = "has no effect" in caplog.text
    # schemes that read no positions say so
    assert said == (scheme in ("none", "cope", "cpe", "fox", "fox_pro", "stickbreaking", "selective", "abacus")), caplog.text
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        batch = torch.randint(0, 50, (2, 17), generator=g)
        pos_T = module.positions.for_step(16, 0, step)
        for p in (pos_T.embed_T, pos_T.positions(0), pos_T.positions(1), pos_T.distances(1)):
            assert p.max() < 256 and (p.diff() > 0).all()
        loss = module._loss(batch, pos_T)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = module.model.eval()(torch.randint(0, 50, (1, 16 * 16), generator=g))  # 16x, contiguous
    assert torch.isfinite(logits).all()


RELATIVE = {"rope", "rope_partial", "xpos", "p_rope", "hope", "rope_nope", "rnope_swa", "alibi", "alibi_learned", "t5", "kerple_log", "kerple_power", "sandwich",
            "shaw", "shaw_kv", "transformer_xl", "deberta"}  # each paper's own claim: terms of i - j only (a window too)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_shift_invariance_is_what_each_scheme_declares(scheme):
    """Shifting every position by a constant leaves the logits unchanged exactly for the schemes that declare it
    (positions=offset then trains the same model, and lenx says so), through the augmented (explicit positions)
    path; for absolute schemes (learned, sinusoidal, FIRE's psi(max(L, i)), FoPE's cross terms) it changes them."""
    over = {"learned": {"max_positions": 8192}, "fope": {"sigma": 1.0}}.get(scheme, {})  # (fope: larger cross terms)
    model = make_model(scheme, train_len=16, **over)
    assert model.pos.shift_invariant == (scheme in RELATIVE or not model.pos.reads_positions)
    idx = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(1))
    p = torch.from_numpy(positions.Randomized(max_len=200).draw(16, np.random.default_rng(0)))
    with torch.no_grad():
        a, b = model(idx, p), model(idx, p + 5000)
    if model.pos.shift_invariant:  # (rotary angles at +5000 round differently in fp32: ~1e-7 measured)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    else:  # an untrained FIRE or FoPE moves the logits ~1e-3 under this shift (measured), 100x the tolerance
        assert (a - b).abs().max() > 1e-4
    if model.pos.reads_positions:  # ... and the gaps matter: the same tokens at contiguous positions score differently
        with torch.no_grad():
            assert not torch.equal(model(idx), a)


@pytest.mark.parametrize("scheme", ["alibi", "learned", "fire"])
def test_offsets_on_a_shift_invariant_scheme_are_said_to_do_nothing(scheme, tmp_path, caplog):
    _, cfg = module_for(tmp_path, scheme, "positions=offset")
    with caplog.at_level(logging.WARNING):
        check_config(cfg)
    assert ("positions=offset has no effect" in caplog.text) == (scheme == "alibi"), caplog.text


def test_learned_table_is_sized_to_the_mode_or_refused(tmp_path):
    _, cfg = module_for(tmp_path, "learned", "positions=randomized", "positions.max_len=100")
    assert build_model(cfg).pos.max_positions == 100
    _, small = module_for(tmp_path, "learned", "positions=offset", "positions.max_len=100", "pos.max_positions=50")
    with pytest.raises(ConfigError, match="past the learned table's 50 rows"):
        check_config(small)
    _, plain = module_for(tmp_path, "learned")
    assert build_model(plain).pos.max_positions == 16  # contiguous: the training length, as before


def test_run_ids_rows_and_checkpoints_record_the_mode(tmp_path):
    base = OmegaConf.to_container(compose_train(["seq_len=16"], tmp_path), resolve=False)
    older = {k: v for k, v in base.items() if k != "positions"}  # a config from before position modes
    assert run_id(base) == run_id(older)  # contiguous runs keep their directories
    rand = OmegaConf.to_container(compose_train(["seq_len=16", "positions=randomized"], tmp_path), resolve=False)
    assert run_id(rand) != run_id(base)
    rows = [{"pos": "rope", "positions": "randomized"}, {"pos": "rope", "positions": "contiguous"}, {"pos": "rope"}]
    assert [scheme_label(r) for r in rows] == ["rope+randomized", "rope", "rope"]
    _, cfg = module_for(tmp_path, "rope", "positions=pose")
    assert safe_run_config(cfg)["positions"] == cfg["positions"]
    with pytest.raises(CheckpointError, match="not one of lenx's positions configs"):
        safe_run_config({**cfg, "positions": {"_target_": "os.system", "command": "true"}})


def test_a_trained_run_records_its_mode_and_its_learned_table_reaches_16x(tmp_path, tree, monkeypatch):
    from test_end_to_end import compose_run

    from lenx.evaluate import load_model
    from lenx.train import run

    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))
    rows = run(compose_run(tmp_path, tree, "pos=learned", "positions=randomized", "eval.multipliers=[1,16]"))
    assert all(r["positions"] == "randomized" for r in rows)
    assert all(r["status"] == "ok" and math.isfinite(r["ppl"]) for r in rows)  # a contiguous table: out_of_range
    model, mcfg = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert model.pos.max_positions == 16 * mcfg["seq_len"] == mcfg["positions"]["max_len"]


def test_a_randomized_run_scores_under_its_own_positions_on_request(tmp_path, tree, monkeypatch):
    """eval.positions=train: perplexity windows read the run's randomized draws (as the authors' code does at test
    time), rows say so and stay apart from the contiguous ones; the draws are strictly increasing, within max_len,
    one per batch and the same on every call."""
    from test_end_to_end import compose_run

    from lenx.evaluate import load_model
    from lenx.extrapolation import evaluate_lengths
    from lenx.results import mode_label
    from lenx.train import run

    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))
    rows = run(compose_run(tmp_path, tree, "pos=rope", "positions=randomized", "eval.multipliers=[1,4]",
                           "eval.positions=train"))
    assert [r["eval_positions"] for r in rows] == ["randomized"] * 2
    assert {mode_label(r) for r in rows} == {"nonoverlapping@randomized"}
    model, mcfg = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    seen = []
    real = model.forward
    model.forward = lambda x, pos=None: (seen.append(pos), real(x, pos))[1]
    tokens = np.arange(5000) % 200
    kw = dict(train_len=mcfg["seq_len"], multipliers=[1, 4], tokens_to_score=512, batch_tokens=128,
              device=torch.device("cpu"))
    first = evaluate_lengths(model, tokens, positions=positions.build(mcfg), **kw)[0]
    drawn = list(seen)
    assert len(drawn) > 2 and all(p is not None for p in drawn)
    drawn = [materialise(d, layers=mcfg["model"]["n_layers"]) for d in drawn]  # the input's and every layer's
    for p in drawn:
        assert (p.diff() > 0).all() and 0 <= int(p.min()) and int(p.max()) < mcfg["positions"]["max_len"]
    assert not torch.equal(drawn[0], drawn[1])
    seen.clear()
    again = evaluate_lengths(model, tokens, positions=positions.build(mcfg), **kw)[0]
    seen = [materialise(d, layers=mcfg["model"]["n_layers"]) for d in seen]
    assert all(torch.equal(a, b) for a, b in zip(seen, drawn)) and [r["ppl"] for r in again] == [
        r["ppl"] for r in first]
    seen.clear()
    plain = evaluate_lengths(model, tokens, **kw)[0]
    assert all(p is None for p in seen) and [r["eval_positions"] for r in plain] == ["contiguous"] * 2
    assert plain[0]["ppl"] != first[0]["ppl"]


def test_task_batches_train_under_a_position_mode(tmp_path):
    from lenx import tasks

    cfg = OmegaConf.to_container(compose_train(["data=copy", "pos=rope", "positions=pose", "model.d_model=32",
                                                "model.n_layers=1", "model.n_heads=2"], tmp_path), resolve=True)
    task = tasks.configure(cfg)
    positions.configure(cfg)
    module = LenxModule(cfg)
    batch = tasks.pad([task.instance(0, "train", i) for i in range(4)])
    pos_BT = module.train_positions(batch, 0)  # a row per example
    assert pos_BT.shape == (4, batch[0].shape[1] - 1) and (pos_BT.diff() > 0).all()
    assert pos_BT.max() < cfg["positions"]["target_len"] == 16 * cfg["seq_len"]
    assert torch.isfinite(module._loss(batch, pos_BT))


@pytest.mark.parametrize("over, before", [
    (["pos=rope"], {"method": "none", "original_len": None}),
    (["pos=rope", "pos/scaling=yarn", "pos.scaling.factor=4"], None),
    (["pos=learned"], {"method": "none", "original_len": None}),
    (["pos=learned", "pos.interpolate=true"], {"method": "interpolate"}),
])
def test_run_ids_survive_the_change_of_config_shape(tmp_path, over, before):
    """Configs composed today hash to the ids their pre-class form (a scaling named by `method`, a learned table's
    interpolation as a scaling) had, so a rerun of an older command finds its run directory."""
    new = OmegaConf.to_container(compose_train(["seq_len=16", *over], tmp_path), resolve=False)
    old = {k: v for k, v in new.items() if k != "positions"}
    pos = dict(old["pos"])
    if "interpolate" in pos:  # learned.yaml had a scaling default (none, or interpolate) instead
        del pos["interpolate"]
        pos["scaling"] = before
    else:
        scaling = pos["scaling"]
        pos["scaling"] = before or {"method": "yarn", **{k: v for k, v in scaling.items() if k != "_target_"}}
    old["pos"] = pos
    assert run_id(new) == run_id(old)
    assert run_id(new) != run_id({**old, "pos": {**pos, "scaling": {"method": "pi"}}})  # (the id still sees it)
