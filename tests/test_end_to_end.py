"""Train -> checkpoint -> evaluate, end to end on a tiny corpus, through the real entry points."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, compose_train

from lenx.errors import ConfigError
from lenx.evaluate import evaluate_checkpoint, load_model
from lenx.train import run


def compose_run(tmp_path, tree, *overrides):
    return compose_train(["experiment=smoke", f"data.path={tree}", "data.vocab_size=300", "data.valid_fraction=0.2",
                          "data.test_fraction=0.2", "logger=csv", "trainer.enable_progress_bar=false", *overrides],
                         tmp_path / "run")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))


def test_train_then_rescore_checkpoint_gives_the_same_numbers(tmp_path, tree, cache):
    cfg = compose_run(tmp_path, tree, "pos=alibi", "ckpt_every=3")  # 4 steps: the last is not a multiple of 3
    rows = run(cfg)
    run_dir = tmp_path / "run"
    assert [r["multiplier"] for r in rows] == [1, 2, 4, 8, 16]
    assert [r["eval_len"] for r in rows] == [32, 64, 128, 256, 512]
    assert len({r["tokens"] for r in rows}) == 1 and rows[0]["tokens"] % 512 == 0  # same targets at every length
    assert all(r["status"] == "ok" and math.isfinite(r["ppl"]) and r["ppl"] > 1 for r in rows)
    assert all(r["pos"] == "alibi" and r["corpus_hash"] and r["tokenizer_hash"] and r["git_sha"] for r in rows)
    probe = [json.loads(x) for x in (run_dir / "probe.jsonl").read_text().splitlines()]
    assert [p["distance"] for p in probe] == [16, 32, 64, 128, 256, 512] and all(p["status"] == "ok" for p in probe)
    for f in ("extrapolation.csv", "extrapolation.jsonl", "extrapolation.png", "checkpoints/last.ckpt",
              "run_config.yaml", "logs/metrics.csv", "position_loss.csv", "probe.csv"):
        assert (run_dir / f).is_file(), f
    # a checkpoint alone rebuilds the model and reproduces every number
    again = evaluate_checkpoint(str(run_dir / "checkpoints" / "last.ckpt"), cfg_eval(cfg), tmp_path / "ev")
    assert [r["ppl"] for r in again] == pytest.approx([r["ppl"] for r in rows], rel=1e-6)
    model, mcfg = load_model(run_dir / "checkpoints" / "last.ckpt")
    assert mcfg["seq_len"] == 32 and model.pos.__class__.__name__ == "ALiBi"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    lines = (run_dir / "extrapolation.jsonl").read_text().splitlines()
    assert len(lines) == 5 and json.loads(lines[0])["mode"] == "nonoverlapping"


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path, tree, cache):
    """compile=true trains the same function: same parameter names in the checkpoint (so evaluation, resume and
    fine-tuning take it as it is) and the same numbers up to float rounding."""
    eager = run(compose_run(tmp_path / "eager", tree, "pos=alibi"))
    compiled_cfg = compose_run(tmp_path / "compiled", tree, "pos=alibi", "compile=true")
    from torch._dynamo.utils import counters
    counters.clear()
    compiled = run(compiled_cfg)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo did capture the model
    assert [r["ppl"] for r in compiled] == pytest.approx([r["ppl"] for r in eager], rel=1e-3)
    sd = {tmp: torch.load(tmp_path / tmp / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
          for tmp in ("eager", "compiled")}
    assert sd["compiled"].keys() == sd["eager"].keys()
    load_model(tmp_path / "compiled" / "run" / "checkpoints" / "last.ckpt")


def cfg_eval(cfg):
    return {k: (list(v) if k == "multipliers" else v) for k, v in cfg.eval.items()}


def test_learned_table_is_recorded_out_of_range(tmp_path, tree, cache):
    cfg = compose_run(tmp_path, tree, "pos=learned", "eval.multipliers=[1,2]")
    rows = run(cfg)
    assert rows[0]["status"] == "ok" and math.isfinite(rows[0]["ppl"])
    assert rows[1]["status"] == "out_of_range" and math.isnan(rows[1]["ppl"]) and "out of range" in rows[1]["error"]
    # the table-interpolation scaling, post hoc, scores the same checkpoint past its table
    again = evaluate_checkpoint(str(tmp_path / "run" / "checkpoints" / "last.ckpt"), cfg_eval(cfg), tmp_path / "e",
                                ["interpolate"])
    assert [r["status"] for r in again] == ["ok", "ok"] and again[0]["ppl"] == pytest.approx(rows[0]["ppl"])


def test_eval_longer_than_validation_split_refused_before_training(tmp_path, tree, cache):
    cfg = compose_run(tmp_path, tree, "pos=none", "eval.multipliers=[1,100000]")
    with pytest.raises(ConfigError, match="longer than the evaluation split"):
        run(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def cli(script, *args, env_extra=None, cwd=ROOT):
    env = {**os.environ, "WANDB_MODE": "offline", **(env_extra or {})}
    return subprocess.run([sys.executable, script, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_cli_train_and_evaluate(tmp_path, tree, cache):
    env = {"LENX_CACHE": str(tmp_path / "cache")}
    common = [f"data.path={tree}", "data.vocab_size=300", "data.valid_fraction=0.2", "data.test_fraction=0.2"]
    r = cli("train.py", "experiment=smoke", "pos=alibi", f"hydra.run.dir={tmp_path / 't'}", *common, env_extra=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "alibi" in r.stdout and "512" in r.stdout  # the printed table
    ckpt = tmp_path / "t" / "checkpoints" / "last.ckpt"
    r = cli("evaluate.py", f"ckpt={ckpt}", "eval.multipliers=[1,2]", f"hydra.run.dir={tmp_path / 'e'}",
            env_extra=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len((tmp_path / "e" / "extrapolation.jsonl").read_text().splitlines()) == 2
    # sliding with stride 1 and document context, into the same directory: rows are appended
    r = cli("evaluate.py", f"ckpt={ckpt}", "eval.multipliers=[1,2]", "eval.mode=[nonoverlapping,sliding]",
            "eval.stride=1", "eval.context=document", "eval.tokens=256", f"hydra.run.dir={tmp_path / 'e'}",
            env_extra=env)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "e" / "extrapolation.jsonl").read_text().splitlines()]
    doc = [x for x in rows if x["context"] == "document"]
    assert [(x["mode"], x["stride"], x["tokens"]) for x in doc] == [
        ("nonoverlapping", 32, 256), ("nonoverlapping", 64, 256), ("sliding", 1, 256), ("sliding", 1, 256)]
    assert len({x["targets_hash"] for x in doc}) == 1 and doc[0]["targets_hash"] != rows[0]["targets_hash"]
    assert "nonoverlapping/document" in r.stdout and "sliding/document" in r.stdout


@pytest.mark.parametrize("args, match", [
    (["seq_len=0"], "seq_len must be a positive integer"),
    (["model.n_heads=3"], "does not divide"),
    (["pos=nonexistent"], "Could not find 'pos/nonexistent'"),
    (["model.d_modle=4"], "d_modle"),
    (["compile=maybe"], "compile must be true or false"),
])
def test_cli_bad_input_is_one_clear_message(tmp_path, args, match):
    r = cli("train.py", "experiment=smoke", f"hydra.run.dir={tmp_path / 'r'}", *args)
    assert r.returncode != 0 and match in r.stderr
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_cli_missing_checkpoint(tmp_path):
    r = cli("evaluate.py", f"ckpt={tmp_path / 'nope.ckpt'}", f"hydra.run.dir={tmp_path / 'e'}")
    assert r.returncode == 2 and "checkpoint not found" in r.stderr


def test_corrupt_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    from lenx.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"bad.ckpt is not a lenx checkpoint \(not a file written by torch.save\)"):
        load_model(bad)


SCALINGS = ["none", "pi", "ntk", "dynamic_ntk", "yarn", "llama3", "longrope"]


def test_rope_checkpoint_under_every_scaling(tmp_path, tree, cache):
    cfg = compose_run(tmp_path, tree, "pos=rope")
    trained = run(cfg)
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    rows = evaluate_checkpoint(ckpt, cfg_eval(cfg), tmp_path / "ev", SCALINGS)
    assert len(rows) == 5 * len(SCALINGS)
    assert all(r["status"] == "ok" and math.isfinite(r["ppl"]) for r in rows)
    by = {(r["scaling"], r["multiplier"]): r["ppl"] for r in rows}
    for m in (1, 2, 4, 8, 16):
        assert by[("none", m)] == pytest.approx(trained[m.bit_length() - 1]["ppl"], rel=1e-6)
        assert by[("pi", 1)] == pytest.approx(by[("none", 1)], rel=1e-6)  # factor null: s = 1 at 1x
    assert abs(by[("pi", 16)] / by[("none", 16)] - 1) > 1e-7  # ... and a change at 16x (tiny: 4 steps trained)
    assert (tmp_path / "ev" / "extrapolation.png").is_file()


def test_fine_tune_at_longer_length_with_pi(tmp_path, tree, cache):
    base = compose_run(tmp_path / "a", tree, "pos=rope")
    run(base)
    ckpt = tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"
    tuned = compose_run(tmp_path / "b", tree, "pos=rope", f"init_from={ckpt}", "seq_len=64", "pos/scaling=pi",
                        "pos.scaling.factor=2", "pos.scaling.original_len=32", "eval.multipliers=[1,2,4]")
    rows = run(tuned)
    assert [r["eval_len"] for r in rows] == [64, 128, 256] and rows[0]["scaling"] == "pi"
    model, mcfg = load_model(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt")
    assert model.pos.original_len == 32 and mcfg["pos"]["scaling"]["factor"] == 2


def test_scaling_on_a_non_rotary_checkpoint_is_refused(tmp_path, tree, cache):
    cfg = compose_run(tmp_path, tree, "pos=alibi", "eval.multipliers=[1]")
    run(cfg)
    with pytest.raises(ConfigError, match="does not apply"):
        evaluate_checkpoint(str(tmp_path / "run" / "checkpoints" / "last.ckpt"), cfg_eval(cfg), tmp_path / "e",
                            ["yarn"])
    assert not (tmp_path / "e" / "extrapolation.jsonl").exists()


def wandb_file(offline_run, last: bytes, timeout: float = 60.0) -> bytes:
    """The bytes of an offline W&B run's transaction log once `last` (the last thing lenx logs) is in it: W&B's
    service process writes the file after run.finish() returns, later under load (seen: a CI run read it early)."""
    import time

    deadline = time.time() + timeout
    while True:
        data = b"".join(p.read_bytes() for p in offline_run.rglob("*.wandb"))
        if last in data or time.time() > deadline:
            return data
        time.sleep(0.5)


def test_wandb_offline_run_holds_the_extrapolation_table(tmp_path, tree, cache, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = compose_run(tmp_path, tree, "pos=alibi", "logger=wandb", "eval.multipliers=[1,2]")
    rows = run(cfg)
    assert len(rows) == 2 and (tmp_path / "run" / "extrapolation.csv").is_file()  # local results first
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    data = wandb_file(runs[0], b"position_nll")
    assert b"extrapolation" in data and b"position_loss" in data and b"pos=alibi" in data


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, tree, cache, monkeypatch):
    from lenx.lit import LenxModule, NonFiniteLossError

    real = LenxModule._loss

    def poisoned(self, batch, pos_T=None):
        loss = real(self, batch, pos_T)
        return loss * float("nan") if self.training and self.global_step >= 2 else loss

    monkeypatch.setattr(LenxModule, "_loss", poisoned)
    cfg = compose_run(tmp_path, tree, "pos=alibi", "ckpt_every=1", "trainer.val_check_interval=4")
    with pytest.raises(NonFiniteLossError, match="training loss is nan at step 2"):
        run(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    model, _ = load_model(ckpt)  # the last good checkpoint is intact and loads
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.slow
def test_two_by_two_wandb_sweep_then_aggregate(tmp_path, tree, cache):
    env = {"LENX_CACHE": str(tmp_path / "cache"), "WANDB_API_KEY": "", "NETRC": str(tmp_path / "none")}
    sweep = tmp_path / "sweep"
    r = cli("train.py", "-m", "experiment=smoke", "pos=alibi,rope", "seed=0,1", "logger=wandb",
            "eval.multipliers=[1,2]", f"data.path={tree}", "data.vocab_size=300", "data.valid_fraction=0.2",
            "data.test_fraction=0.2", f"hydra.sweep.dir={sweep}", "eval.every_n_steps=2",
            "eval.during.multipliers=[1,2]", "eval.during.tokens=256", env_extra=env)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = sorted(p.parent for p in sweep.rglob("extrapolation.jsonl"))
    assert len(runs) == 4
    for run_dir in runs:
        (offline,) = (run_dir / "wandb").glob("offline-run-*")
        data = wandb_file(offline, b"position_nll")
        assert b"extrapolation" in data and sweep.name.encode() in data  # the table, and the sweep's group
        assert b"extrap/ppl_2x" in data and b"position_nll" in data  # the curve during training; positions
    r = subprocess.run([sys.executable, "scripts/aggregate.py", str(sweep)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "| alibi | none | nonoverlapping |" in (sweep / "summary.md").read_text()
    assert (sweep / "summary.png").is_file() and "8 rows from 4 runs" in r.stdout
    # the same sweep again, one more eval length: no job retrains, each scores only the new length
    stamps = {p: p.stat().st_mtime_ns for p in sweep.rglob("last.ckpt")}
    r = cli("train.py", "-m", "experiment=smoke", "pos=alibi,rope", "seed=0,1", "logger=csv",
            "eval.multipliers=[1,2,4]", f"data.path={tree}", "data.vocab_size=300", "data.valid_fraction=0.2",
            "data.test_fraction=0.2", f"hydra.sweep.dir={sweep}", env_extra=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in sweep.rglob("last.ckpt")} == stamps and len(stamps) == 4
    for run_dir in runs:
        rows = [json.loads(x) for x in (run_dir / "extrapolation.jsonl").read_text().splitlines()]
        assert [x["eval_len"] for x in rows] == [32, 64, 128]


@pytest.mark.slow
def test_submitit_local_sweep_end_to_end(tmp_path, tree, cache):
    sweep = tmp_path / "sweep"
    r = cli("train.py", "-m", "experiment=smoke", "pos=alibi,rope", "eval.multipliers=[1,2]", f"data.path={tree}",
            "data.vocab_size=300", "data.valid_fraction=0.2", "data.test_fraction=0.2",
            "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}",
            env_extra={"LENX_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr[-3000:]
    runs = sorted(p.parent.name for p in sweep.rglob("extrapolation.jsonl"))
    assert [n.rsplit("_", 1)[0] for n in runs] == ["alibi_L32_s0", "rope_L32_s0"]  # + the run id


def test_passkey_training_task_and_accuracy_table(tmp_path, tree, cache):
    cfg = compose_run(tmp_path, tree, "data=passkey", "pos=alibi", "seq_len=32")
    with pytest.raises(ConfigError, match="data=passkey needs seq_len >="):
        run(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
    cfg = compose_run(tmp_path, tree, "data=passkey", "pos=alibi", "seq_len=128", "eval.multipliers=[1,2]",
                      "eval.probes.passkey.multipliers=[1,2]", "eval.probes.passkey.depths=[0.0,1.0]", "eval.probes.passkey.trials=3")
    rows = run(cfg)
    assert [r["eval_len"] for r in rows] == [128, 256]  # perplexity on the corpus stream, as for any run
    pk = [json.loads(x) for x in (tmp_path / "run" / "passkey.jsonl").read_text().splitlines()]
    assert [(p["eval_len"], p["depth"], p["trials"]) for p in pk] == [(128, 0.0, 3), (128, 1.0, 3), (256, 0.0, 3),
                                                                     (256, 1.0, 3)]
    assert all(0.0 <= p["accuracy"] <= 1.0 for p in pk) and (tmp_path / "run" / "passkey.png").is_file()
