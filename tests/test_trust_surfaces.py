"""Trust of the surfaces added after the first red team (issue 33): a checkpoint never chooses paths, scoring takes
the run lock, scoring during training scores each optimizer step once, and bad values are one line before work."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, compose_train
from test_trust import EVAL, SMOKE, cli, compose, poisoned

from lenx.errors import CheckpointError, ConfigError
from lenx.evaluate import evaluate_checkpoint
from lenx.preflight import RunLock
from lenx.train import run


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def trained(tmp_path, tree, cache):
    run(compose(tmp_path, tree, "pos=rope"))
    return tmp_path / "run" / "checkpoints" / "last.ckpt"


def files_under(root):
    return {p for p in root.rglob("*") if p.is_file()}


# -------------------------------------------------------------------------------- a checkpoint never chooses paths
def test_a_checkpoints_cache_dir_is_never_where_scoring_writes(trained, tmp_path, cache):
    elsewhere = tmp_path / "chosen_by_the_checkpoint"
    bad = poisoned(trained, tmp_path / "bad.ckpt", lambda c: c["data"].__setitem__("cache_dir", str(elsewhere)))
    rows = evaluate_checkpoint(str(bad), EVAL, tmp_path / "e")
    assert rows and all(r["status"] == "ok" for r in rows)
    assert not elsewhere.exists()  # the scorer's cache ($LENX_CACHE) was used
    assert str(cache) in rows[0].get("cache_dir", str(cache)) or (cache / "index").is_dir()


@pytest.mark.parametrize("name", ["../../escape", "/tmp/abs", "nope"])
def test_a_checkpoints_data_name_is_refused_before_any_file_is_written(trained, tmp_path, cache, name):
    before = files_under(tmp_path)
    bad = poisoned(trained, tmp_path / "bad.ckpt", lambda c: c["data"].__setitem__("name", name))
    with pytest.raises(CheckpointError, match=r"data.name=.* is not one of lenx's corpora or tasks") as e:
        evaluate_checkpoint(str(bad), EVAL, tmp_path / "e")
    assert "\n" not in str(e.value)
    new = files_under(tmp_path) - before - {tmp_path / "bad.ckpt"}
    assert not [p for p in new if p.suffix == ".lock" and "e" not in p.relative_to(tmp_path).parts[:1]], new
    assert not any("escape" in str(p) or "abs" in p.name for p in files_under(tmp_path.parent) - before)


def test_a_checkpoints_data_values_must_be_plain(trained, tmp_path):
    bad = poisoned(trained, tmp_path / "bad.ckpt", lambda c: c["data"].__setitem__("path", "${oc.env:HOME}"))
    with pytest.raises(CheckpointError, match=r"data.path=.* is not a plain value"):
        evaluate_checkpoint(str(bad), EVAL, tmp_path / "e")


def test_an_unknown_corpus_name_is_one_line_before_the_cache_is_touched(tmp_path, tree, cache):
    with pytest.raises(ConfigError, match=r"unknown corpus data.name='\.\./x'"):
        run(compose(tmp_path, tree, "data.name=../x"))
    assert not cache.exists()


# ------------------------------------------------------------------------------------------ scoring takes the lock
def test_scoring_into_a_directory_another_process_holds_is_refused(trained, tmp_path):
    out = tmp_path / "e"
    out.mkdir()
    with RunLock(out):  # as a training run (or another scoring) holds it
        with pytest.raises(ConfigError, match=rf"in use by another lenx process \(pid {os.getpid()}\)"):
            evaluate_checkpoint(str(trained), EVAL, out)
    assert not (out / "extrapolation.jsonl").exists()
    assert evaluate_checkpoint(str(trained), EVAL, out)  # released: it scores


def test_scoring_into_a_training_runs_directory_while_it_trains_is_refused(trained, tmp_path):
    """The training run's own lock file: a second process (not this one) holds it."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, 'src'); from lenx.preflight import RunLock\n"
        f"with RunLock({str(tmp_path / 'run')!r}):\n print('held', flush=True); time.sleep(60)")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"in use by another lenx process \(pid {holder.pid}\)"):
            evaluate_checkpoint(str(trained), EVAL, tmp_path / "run")
    finally:
        holder.kill()
        holder.wait()


FROZEN_CLOCK = """
import datetime, runpy, sys
import hydra.core.utils

sys.argv = sys.argv[1:]  # [evaluate.py, microsecond, overrides...] (python -c puts "-c" first)
US = int(sys.argv.pop(1))

class Clock(datetime.datetime):  # every process reads the same second; they differ in the microsecond only
    @classmethod
    def now(cls, tz=None):
        return datetime.datetime(2026, 12, 6, 12, 0, 0, US)

hydra.core.utils.datetime = Clock
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_two_evaluations_started_in_the_same_second_never_share_a_directory(trained, tmp_path, cache):
    """evaluate.py's default directory is named to the microsecond (it was to the second: two scorings started in
    the same second wrote one directory and lost rows, both exit 0). The clock is frozen at one second."""
    env = {**os.environ, "WANDB_MODE": "disabled", "LENX_CACHE": str(cache), "PYTHONPATH": str(ROOT / "src")}
    args = [f"ckpt={trained}", "eval.multipliers=[1,2]", "eval.tokens=256", "eval.progress=false",
            "eval.probes.probe=null", "eval.probes.passkey=null"]
    procs = [subprocess.Popen([sys.executable, "-c", FROZEN_CLOCK, str(ROOT / "evaluate.py"), str(us), *args],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for us in (1, 2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    assert [rc for rc, _ in results] == [0, 0], [e[-800:] for _, e in results]
    dirs = sorted((tmp_path / "outputs" / "evaluate").iterdir())
    assert [d.name for d in dirs] == ["2026-12-06_12-00-00.000001", "2026-12-06_12-00-00.000002"]
    for d in dirs:  # each holds its whole scoring: 2 lengths, once
        assert len((d / "extrapolation.jsonl").read_text().splitlines()) == 2


# -------------------------------------------------------------------------------------- one line before any work
def test_scalings_and_extensions_as_plain_names_on_the_command_line(trained, tmp_path, cache):
    r = cli("evaluate.py", f"ckpt={trained}", "scalings=yarn", "extensions=self_extend", "eval.multipliers=[1,2]",
            "eval.tokens=256", "eval.progress=false", "eval.probes.probe=null", f"hydra.run.dir={tmp_path / 'e'}",
            env={"LENX_CACHE": str(cache)})
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    rows = [json.loads(x) for x in (tmp_path / "e" / "extrapolation.jsonl").read_text().splitlines()]
    assert {(r["scaling"], r["extension"]) for r in rows} == {("yarn", "self_extend")}


def test_scalings_of_a_wrong_type_are_one_line(trained, tmp_path, cache):
    r = cli("evaluate.py", f"ckpt={trained}", "scalings={a: 1}", f"hydra.run.dir={tmp_path / 'e'}",
            env={"LENX_CACHE": str(cache)})
    assert r.returncode == 2 and r.stderr.startswith("lenx: error: scalings must be a name or a list of names")
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("window", [float("inf"), float("nan"), -1.0])
def test_an_extension_window_that_is_not_finite_is_one_line(trained, tmp_path, window):
    with pytest.raises(ConfigError, match="self_extend.window must be a finite positive number"):
        evaluate_checkpoint(str(trained), EVAL, tmp_path / "e", extensions=[{"name": "self_extend",
                                                                             "window": window}])
    assert not (tmp_path / "e" / "extrapolation.jsonl").exists()


@pytest.mark.parametrize("override, match", [
    ("positions.max_len=9223372036854775808", r"positions.max_len=9223372036854775808 is more than the 2147483648"),
    ("positions.max_len=4294967296", r"positions.max_len=4294967296 is more than"),
])
def test_position_ranges_past_what_lenx_draws_are_one_line(tmp_path, tree, cache, override, match):
    with pytest.raises(ConfigError, match=match):
        run(compose(tmp_path, tree, "pos=rope", "positions=randomized", override))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_randomized_distances_draw_as_before_without_allocating_the_range():
    """The distance draw no longer builds the max_len - 1 candidates (2**31 of them would be 16 GiB); the draws
    are those of rng.choice(np.arange(1, max_len)) (Ruoss et al.'s form), draw for draw."""
    import numpy as np

    from lenx import positions

    mode = positions.Randomized(max_len=64).resolve(16, [1])
    ctx = positions.LayerDraws(mode, 16, (0, 1, 2))
    got = ctx.distances(0).tolist()
    rng = positions._rng(0, 1, 2, positions.LAYER, 0, 1)
    assert got == [0, *np.sort(rng.choice(np.arange(1, 64), size=15, replace=False)).tolist()]
    big = positions.LayerDraws(positions.Randomized(max_len=2**31).resolve(16, [1]), 16, (0, 1, 2))
    assert len(big.distances(0)) == 16


@pytest.mark.parametrize("override, match", [
    ("data.task.train_size=100000000000", r"data.task.train_size=100000000000: an instance of size 100000000000 has"),
    ("eval.probes.tasks.sizes=1..100000000000", r"eval.probes.tasks.sizes='1..100000000000' is 100000000000 sizes"),
    ("eval.probes.passkey.run=true", r"eval.probes.passkey.run=true, but a task run \(data=copy\) has no corpus"),
    ("eval.every_n_steps=2 eval.during.multipliers=[0]", r"^eval.during.multipliers must be positive integers"),
])
def test_task_runs_refuse_before_training(tmp_path, cache, override, match):
    cfg = compose_train(["data=copy", "experiment=smoke", "trainer.enable_progress_bar=false",
                         "data.task.train_size=3", *override.split()], tmp_path / "run")
    with pytest.raises(ConfigError, match=match):
        run(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_task_size_with_nothing_to_hold_out_is_refused_before_training(tmp_path, cache):
    cfg = compose_train(["data=parity", "experiment=smoke", "trainer.enable_progress_bar=false",
                         "data.task.train_size=1"], tmp_path / "run")
    with pytest.raises(ConfigError, match="size 1 has too few distinct parity instances"):
        run(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_task_runs_say_which_probes_they_skip(tmp_path, cache, caplog):
    import logging

    cfg = compose_train(["data=copy", "experiment=smoke", "trainer.enable_progress_bar=false", "trainer.max_steps=1",
                         "data.task.train_size=3", "eval.probes.tasks.instances=4"], tmp_path / "run")
    with caplog.at_level(logging.INFO, logger="lenx.scoring"):
        run(cfg)
    (line,) = [r.getMessage() for r in caplog.records if "do not apply" in r.getMessage()]
    assert "extrapolation, probe" in line and "read a corpus" in line


def test_during_training_errors_name_the_during_key(tmp_path, tree, cache):
    with pytest.raises(ConfigError, match=r"lower eval.during.multipliers or use a larger split"):
        run(compose(tmp_path, tree, "pos=rope", "eval.every_n_steps=2", "eval.during.multipliers=[1,100000]"))
    with pytest.raises(ConfigError, match=r"^eval.during.multipliers must be a list"):
        run(compose(tmp_path, tree, "pos=rope", "eval.every_n_steps=2", "eval.during.multipliers=4"))


def test_a_stored_tokenizer_path_is_not_read(trained, tmp_path):
    """A checkpoint's data.tokenizer (a path) is dropped: scoring uses the tokenizer stored in the checkpoint."""
    bad = poisoned(trained, tmp_path / "bad.ckpt", lambda c: c["data"].__setitem__("tokenizer", "/nonexistent/t.json"))
    assert torch.load(bad, weights_only=True)["hyper_parameters"]["cfg"]["data"]["tokenizer"] == "/nonexistent/t.json"
    assert evaluate_checkpoint(str(bad), EVAL, tmp_path / "e")


@pytest.mark.parametrize("device, match", [
    ("tpu", "eval.device must be auto, cpu or cuda"),
    pytest.param("cuda:0", "eval.device=cuda:0 requested but CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"))])
def test_an_evaluation_device_this_machine_lacks_is_one_line_before_work(trained, tmp_path, device, match):
    with pytest.raises(ConfigError, match=match):
        evaluate_checkpoint(str(trained), {**EVAL, "device": device}, tmp_path / "e")
    assert not (tmp_path / "e" / "extrapolation.jsonl").exists()


def test_a_scaling_entry_that_is_not_a_name_is_one_line(trained, tmp_path, cache):
    r = cli("evaluate.py", f"ckpt={trained}", "scalings=[yarn,3]", f"hydra.run.dir={tmp_path / 'e'}",
            env={"LENX_CACHE": str(cache)})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("lenx: error: scalings[1]=3 is not a name")
