"""Extrapolation while training (eval.every_n_steps): curves in metrics.csv, the same numbers as the final scoring."""

import csv

import pytest
from conftest import compose_train

from lenx.errors import ConfigError
from lenx.train import run

SMOKE = ["experiment=smoke", "data.vocab_size=300", "data.valid_fraction=0.2", "data.test_fraction=0.2",
         "trainer.enable_progress_bar=false", "eval.probes.probe=null", "eval.progress=false"]


def test_scores_during_training_land_in_metrics_csv_and_match_the_final_scoring(tmp_path, tree, monkeypatch):
    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))
    cfg = compose_train([*SMOKE, f"data.path={tree}", "pos=alibi", "eval.every_n_steps=2",
                         "eval.during.multipliers=[1,2]", "eval.during.tokens=256", "eval.multipliers=[1,2]",
                         "eval.tokens=256"], tmp_path / "run")
    final = run(cfg)
    rows = [r for r in csv.DictReader(open(tmp_path / "run" / "logs" / "metrics.csv")) if r.get("extrap/ppl_1x")]
    assert [int(r["step"]) for r in rows] == [1, 3]  # after optimizer steps 2 and 4 (of 4), at the step's index
    last = {m: float(rows[-1][f"extrap/ppl_{m}x"]) for m in (1, 2)}
    # the model after step 4 is the one scored at the end, on the same targets: the same numbers
    assert last == pytest.approx({r["multiplier"]: r["ppl"] for r in final}, rel=1e-9)
    assert all(float(r["extrap/loss_2x"]) > 0 for r in rows)


def test_wandb_run_keeps_the_csv_curve_and_logs_the_same_points(tmp_path, tree, monkeypatch):
    """logger=wandb writes logs/metrics.csv as the CSV logger does (it wrote none before issue 32), and the
    offline W&B run holds the same extrap/ppl_<m>x points."""
    import json

    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = compose_train([*SMOKE, f"data.path={tree}", "pos=rope", "logger=wandb", "eval.every_n_steps=2",
                         "eval.during.multipliers=[1,2]", "eval.during.tokens=256", "eval.multipliers=[1]",
                         "eval.tokens=256"], tmp_path / "run")
    run(cfg)
    rows = [r for r in csv.DictReader(open(tmp_path / "run" / "logs" / "metrics.csv")) if r.get("extrap/ppl_2x")]
    assert [int(r["step"]) for r in rows] == [1, 3]
    assert any(r.get("train/loss") for r in csv.DictReader(open(tmp_path / "run" / "logs" / "metrics.csv")))
    (offline,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    from test_end_to_end import wandb_file

    data = wandb_file(offline, b"position_nll")
    assert b"extrap/ppl_2x" in data and b"extrap/ppl_1x" in data
    for r in rows:  # each point's value, as W&B's history serialises it (JSON of the float)
        assert json.dumps(float(r["extrap/ppl_2x"])).encode()[:8] in data


@pytest.mark.parametrize("override, match", [("eval.every_n_steps=0", "eval.every_n_steps must be a positive"),
                                             ("eval.during.tokens=-1", "eval.during.tokens must be a positive"),
                                             ("eval.during.multipliers=[0]", "multipliers must be positive")])
def test_bad_during_settings_are_refused_before_training(tmp_path, tree, monkeypatch, override, match):
    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=match):
        run(compose_train([*SMOKE, f"data.path={tree}", "eval.every_n_steps=2", override], tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_ckpt_keep_every_keeps_intermediate_checkpoints_that_score(tmp_path, tree, monkeypatch):
    import torch

    from lenx.evaluate import evaluate_checkpoint, load_model

    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))
    run(compose_train([*SMOKE, f"data.path={tree}", "pos=rope", "ckpt_keep_every=2", "eval.multipliers=[1]"],
                      tmp_path / "run"))
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step*.ckpt")) == ["step2.ckpt", "step4.ckpt"]
    assert torch.load(ckpts / "step2.ckpt", weights_only=True)["global_step"] == 2
    early, _ = load_model(ckpts / "step2.ckpt")
    final, _ = load_model(ckpts / "last.ckpt")
    assert any(not torch.equal(a, b) for a, b in zip(early.parameters(), final.parameters()))
    rows = evaluate_checkpoint(str(ckpts / "step2.ckpt"), {
        "multipliers": [1], "mode": "nonoverlapping", "stride": 0.5, "split": "validation", "tokens": 256,
        "batch_tokens": 1024, "device": "cpu", "progress": False,
        "probes": {"extrapolation": {"_target_": "lenx.extrapolation.Perplexity"}}}, tmp_path / "e")
    assert rows[0]["ckpt"].endswith("step2.ckpt") and rows[0]["status"] == "ok"


def test_a_task_run_logs_its_accuracy_during_training_as_scored_at_the_end(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))
    cfg = compose_train(["data=copy", "pos=alibi", "experiment=smoke", "trainer.enable_progress_bar=false",
                         "data.task.train_size=3", "eval.every_n_steps=2", "eval.during.multipliers=[1,2]",
                         "eval.during.instances=8", "eval.probes.tasks.multipliers=[1,2]",
                         "eval.probes.tasks.instances=8"], tmp_path / "run")
    run(cfg)
    rows = [r for r in csv.DictReader(open(tmp_path / "run" / "logs" / "metrics.csv")) if r.get("task/acc_1x")]
    assert [int(r["step"]) for r in rows] == [1, 3]
    final = {json.loads(x)["multiplier"]: json.loads(x) for x in (tmp_path / "run" / "tasks.jsonl").read_text()
             .splitlines()}
    # the same held-out instances (seed 0) and the same model after step 4: the numbers logged equal the final ones
    for m in (1, 2):
        assert float(rows[-1][f"task/acc_{m}x"]) == final[m]["accuracy"]
        assert float(rows[-1][f"task/token_acc_{m}x"]) == pytest.approx(final[m]["token_accuracy"], rel=1e-12)
    assert not (tmp_path / "cache").exists()


def test_accumulated_steps_score_each_optimizer_step_once_and_never_the_untrained_model(tmp_path, tree, monkeypatch):
    """trainer.accumulate_grad_batches=2: the first micro-batches of a run (global_step 0) and of a resumed run
    (the checkpoint's step) complete no optimizer step. Before issue 33 the first scored the untrained model at
    step -1 and the second scored the checkpoint's step a second time (two rows at step 1)."""
    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))
    args = [*SMOKE, f"data.path={tree}", "pos=alibi", "trainer.accumulate_grad_batches=2", "eval.every_n_steps=2",
            "eval.during.multipliers=[1]", "eval.during.tokens=256", "eval.multipliers=[1]", "eval.tokens=256",
            "ckpt_every=2"]
    run(compose_train([*args, "trainer.max_steps=2"], tmp_path / "run"))
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "run" / "logs" / "metrics.csv"))
             if r.get("extrap/ppl_1x")]
    assert steps == [1]
    run(compose_train([*args, "trainer.max_steps=4"], tmp_path / "run"))  # resumes from last.ckpt at step 2
    steps = [int(r["step"]) for r in csv.DictReader(open(tmp_path / "run" / "logs" / "metrics.csv"))
             if r.get("extrap/ppl_1x")]
    assert steps == [1, 3]
