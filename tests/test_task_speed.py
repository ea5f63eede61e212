"""The task-training speed fixes keep behaviour: CPU precision "auto" by step size, logging only on the steps the
logger writes, the per-step dropout seed on the CPU generator, the cached vocabulary index (no timings asserted)."""

import csv

import torch
from conftest import compose_train

from lenx import hardware
from lenx import tasks as T


def test_cpu_auto_precision_is_bf16_only_for_steps_large_enough_to_gain(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    small, large = hardware.CPU_BF16_MIN_FLOPS_PER_STEP / 10, hardware.CPU_BF16_MIN_FLOPS_PER_STEP * 2
    assert hardware.resolve_precision("auto", "auto", small) == "32-true"
    assert hardware.resolve_precision("auto", "auto", large) == "bf16-mixed"
    assert hardware.resolve_precision("auto", "auto") == "bf16-mixed"  # size unknown: as before
    assert hardware.resolve_precision("bf16-mixed", "auto", small) == "bf16-mixed"  # an explicit choice is kept
    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: False)
    assert hardware.resolve_precision("auto", "auto", large) == "32-true"


def test_a_task_run_trains_in_fp32_and_logs_on_the_logger_steps_only(tmp_path, monkeypatch):
    from lenx.train import run

    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: True)  # as on an avx512_bf16 CPU
    seen = {}
    real = hardware.resolve_precision

    def spy(*a):
        seen["precision"] = real(*a)
        return seen["precision"]

    monkeypatch.setattr("lenx.train.resolve_precision", spy)
    cfg = compose_train(["data=copy", "pos=alibi", "experiment=smoke", "trainer.enable_progress_bar=false",
                         "data.task.train_size=3", "trainer.max_steps=10", "trainer.log_every_n_steps=5",
                         "eval.probes.tasks.multipliers=[1]", "eval.probes.tasks.instances=4"], tmp_path / "run")
    run(cfg)
    assert seen["precision"] == "32-true"  # a tiny task model: bf16 autocast would be slower (hardware.py)
    rows = list(csv.DictReader(open(tmp_path / "run" / "logs" / "metrics.csv")))
    assert [r["step"] for r in rows if r.get("train/loss")] == ["4", "9"]  # what Lightning writes, each once
    assert [r["step"] for r in rows if r.get("train/tokens_per_s")] == ["4", "9"]


def test_the_per_step_seed_drives_cpu_dropout(tmp_path):
    from omegaconf import OmegaConf

    from lenx.lit import LenxModule

    cfg = OmegaConf.to_container(compose_train(["data=copy", "experiment=smoke"], tmp_path / "run"), resolve=True)
    T.configure(cfg)
    module = LenxModule(cfg)
    module.on_train_batch_start(None, 0)
    expected = torch.Generator().manual_seed((cfg["seed"] * 1_000_003 + 0) * 1_009 + 0)
    assert torch.equal(torch.rand(5), torch.rand(5, generator=expected))


def test_the_vocabulary_index_is_the_vocabulary_order():
    for task in (T.Addition(train_size=3), T.NiahMultikey(train_size=4), T.VariableTracking(train_size=2)):
        assert [task.id(name) for name in task.vocab] == list(range(task.vocab_size))
