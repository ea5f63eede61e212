"""Crash and resume, rerun semantics, and refusals that keep earlier results intact."""

import csv
import errno
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, compose_train

from lenx.errors import CheckpointError, ConfigError, user_errors
from lenx.evaluate import evaluate_checkpoint
from lenx.runid import run_id
from lenx.train import run

SMOKE = ["experiment=smoke", "data.vocab_size=300", "data.valid_fraction=0.2", "data.test_fraction=0.2",
         "trainer.enable_progress_bar=false", "eval.multipliers=[1,2]", "eval.probes.probe=null"]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))


def compose(tmp_path, tree, *overrides, run_dir="run"):
    return compose_train([*SMOKE, f"data.path={tree}", *overrides], tmp_path / run_dir)


def train_cli(tmp_path, tree, run_dir, *extra):
    env = {**os.environ, "LENX_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT / "tests"),
           "WANDB_MODE": "disabled"}
    args = [*SMOKE, f"data.path={tree}", "trainer.max_steps=12", "ckpt_every=4", "trainer.val_check_interval=4",
            "pos=alibi", "model.dropout=0.1", f"hydra.run.dir={run_dir}", "eval.every_n_steps=3",
            "eval.during.multipliers=[1,2]", "eval.during.tokens=256", *extra]
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_sigkill_then_the_same_command_resumes_to_the_same_weights_bitwise(tmp_path, tree):
    """Train 12 steps straight; separately, SIGKILL at step 6 (last checkpoint: step 4) and rerun the same command.
    Dropout is on, so the RNG state matters as well as the data position, optimizer and LR schedule."""
    straight = train_cli(tmp_path, tree, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    kill = ["+callbacks.kill._target_=killer.KillAtStep", "+callbacks.kill.step=6",
            f"+callbacks.kill.marker={tmp_path / 'killed'}"]
    first = train_cli(tmp_path, tree, tmp_path / "crashed", *kill)
    assert first.returncode == -9 and (tmp_path / "killed").exists()
    ckpt = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 4  # what the crash left
    assert not (tmp_path / "crashed" / "extrapolation.jsonl").exists()
    again = train_cli(tmp_path, tree, tmp_path / "crashed", *kill)  # the same command
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resuming from" in again.stderr + again.stdout
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(ckpt, weights_only=True)
    assert a["global_step"] == b["global_step"] == 12
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k  # bitwise
    rows = [[json.loads(x)["loss"] for x in (d / "extrapolation.jsonl").read_text().splitlines()]
            for d in (tmp_path / "straight", tmp_path / "crashed")]
    assert rows[0] == rows[1]
    # the training curve of the resumed run covers every step from 0, once, with the uninterrupted run's values
    curves = [[(r["step"], r["train/loss"]) for r in csv.DictReader(open(d / "logs" / "metrics.csv"))
               if r.get("train/loss")] for d in (tmp_path / "straight", tmp_path / "crashed")]
    assert curves[0] == curves[1] and [s for s, _ in curves[0]] == [str(i) for i in range(12)]
    during = [[(r["step"], r["extrap/ppl_2x"]) for r in csv.DictReader(open(d / "logs" / "metrics.csv"))
               if r.get("extrap/ppl_2x")] for d in (tmp_path / "straight", tmp_path / "crashed")]
    assert during[0] == during[1] and [s for s, _ in during[0]] == ["2", "5", "8", "11"]  # each once
    for noise in ("`weights_only` was not set", "dataloader is not resumable", "will be deleted"):
        assert noise not in again.stderr + again.stdout


def resolved_run_dir(tmp_path, *overrides):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = hcompose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg.hydra.run.dir


def test_the_same_command_maps_to_the_same_run_dir():
    base = resolved_run_dir(None, "pos=alibi", "seq_len=64")
    assert base.startswith("outputs/train/alibi_L64_s0_")
    assert resolved_run_dir(None, "pos=alibi", "seq_len=64") == base
    assert resolved_run_dir(None, "pos=alibi", "seq_len=64", "eval.multipliers=[1,2]", "logger=none",
                            "trainer.enable_progress_bar=false", "compile=true") == base  # not what is trained
    for other in (["seed=1"], ["optim.lr=1e-3"], ["model=small"], ["trainer.max_steps=10"], ["pos=rope"]):
        assert resolved_run_dir(None, "seq_len=64", *(other if other != ["pos=rope"] else []),
                                *([] if other == ["pos=rope"] else ["pos=alibi"])) != base, other
    assert run_id({"a": 1, "eval": {"x": 1}}) == run_id({"a": 1, "eval": {"x": 2}}) != run_id({"a": 2})


def test_finished_run_rerun_trains_nothing_and_scores_only_what_is_missing(tmp_path, tree, cache, monkeypatch):
    first = run(compose(tmp_path, tree, "pos=alibi"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    stamp = ckpt.stat().st_mtime_ns
    import lenx.extrapolation as ex

    calls = []
    real = ex.score_windows
    monkeypatch.setattr(ex, "score_windows", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    new = run(compose(tmp_path, tree, "pos=alibi", "eval.multipliers=[1,2,4]"))  # the same run, one more length
    assert ckpt.stat().st_mtime_ns == stamp  # not retrained, checkpoint untouched
    assert calls == [128] and [r["eval_len"] for r in new] == [128]
    rows = [json.loads(x) for x in (tmp_path / "run" / "extrapolation.jsonl").read_text().splitlines()]
    assert [r["eval_len"] for r in rows] == [32, 64, 128]
    assert [r["loss"] for r in rows[:2]] == [r["loss"] for r in first]  # earlier rows kept as written


def test_killed_evaluation_rerun_completes_the_rest(tmp_path, tree, cache, monkeypatch):
    run(compose(tmp_path, tree, "pos=rope", "eval.multipliers=[1]"))
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    eval_cfg = {"multipliers": [1, 2, 4], "mode": "nonoverlapping", "stride": 0.5, "split": "validation",
                "tokens": 1024, "batch_tokens": 4096, "device": "cpu", "probes": {"extrapolation": {"_target_": "lenx.extrapolation.Perplexity"}}}
    import lenx.extrapolation as ex

    real, calls = ex.score_windows, []

    def dies_on_the_third_length(*a, **k):
        calls.append(a[2])
        if len(calls) == 3:
            raise KeyboardInterrupt  # a kill mid-evaluation
        return real(*a, **k)

    monkeypatch.setattr(ex, "score_windows", dies_on_the_third_length)
    with pytest.raises(KeyboardInterrupt):
        evaluate_checkpoint(ckpt, eval_cfg, tmp_path / "ev")
    saved = [json.loads(x) for x in (tmp_path / "ev" / "extrapolation.jsonl").read_text().splitlines()]
    assert [r["eval_len"] for r in saved] == [32, 64]  # written as they came
    calls.clear()
    monkeypatch.setattr(ex, "score_windows", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    new = evaluate_checkpoint(ckpt, eval_cfg, tmp_path / "ev")
    assert calls == [128] and [r["eval_len"] for r in new] == [128]
    rows = [json.loads(x) for x in (tmp_path / "ev" / "extrapolation.jsonl").read_text().splitlines()]
    assert [r["eval_len"] for r in rows] == [32, 64, 128] and rows[:2] == saved


def test_resume_refusals_keep_the_checkpoint(tmp_path, tree, cache):
    run(compose(tmp_path, tree, "pos=alibi"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    before = ckpt.read_bytes()
    with pytest.raises(ConfigError, match="already holds a checkpoint and resume=never"):
        run(compose(tmp_path, tree, "pos=alibi", "resume=never"))
    with pytest.raises(ConfigError, match="its model config differs"):
        run(compose(tmp_path, tree, "pos=alibi", "model.d_model=64"))  # another model forced into the same dir
    assert ckpt.read_bytes() == before  # refused, not overwritten
    ckpt.write_bytes(before[: len(before) // 2])  # a truncated file (not one lenx wrote: its writes are atomic)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        run(compose(tmp_path, tree, "pos=alibi"))
    assert (tmp_path / "run" / "extrapolation.jsonl").is_file()


def test_read_only_output_directory_is_refused_before_training(tmp_path, tree, cache, monkeypatch):
    from pathlib import Path

    real = Path.write_bytes

    def read_only(self, data):
        if self.name.startswith(".lenx_write_test"):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", read_only)
    with pytest.raises(ConfigError, match="cannot write to the run directory .*Read-only file system"):
        run(compose(tmp_path, tree, "pos=none"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_disk_full_mid_write_keeps_the_previous_file_and_gives_one_line(tmp_path, capsys, monkeypatch):
    from lenx import results

    results.append_rows(tmp_path, [{"pos": "a", "eval_len": 1}])
    before = (tmp_path / "extrapolation.jsonl").read_text()

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(results.os, "fsync", full)
    with pytest.raises(SystemExit) as e, user_errors():
        results.append_rows(tmp_path, [{"pos": "b", "eval_len": 2}])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lenx: error: cannot write") and "No space left on device" in err and "intact" in err
    assert (tmp_path / "extrapolation.jsonl").read_text() == before
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_wandb_unavailable_falls_back_to_csv_and_keeps_results(tmp_path, tree, cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails, as without the package
    rows = run(compose(tmp_path, tree, "pos=alibi", "logger=wandb"))
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert (tmp_path / "run" / "logs" / "metrics.csv").is_file()
    assert len((tmp_path / "run" / "extrapolation.jsonl").read_text().splitlines()) == 2


def test_checkpoint_of_another_model_shape_is_refused(tmp_path, tree, cache):
    run(compose(tmp_path, tree, "pos=alibi"))
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["hyper_parameters"]["cfg"]["model"]["d_model"] = 64  # its weights are 32 wide
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="does not match the model its config describes"):
        evaluate_checkpoint(str(tmp_path / "other.ckpt"), {"multipliers": [1], "mode": "nonoverlapping",
                                                           "stride": 0.5, "split": "validation", "tokens": 256,
                                                           "batch_tokens": 1024, "probes": {"extrapolation": {"_target_": "lenx.extrapolation.Perplexity"}}}, tmp_path / "e")
