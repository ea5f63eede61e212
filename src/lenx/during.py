"""Extrapolation while training: a Lightning callback that scores the model every `eval.every_n_steps` optimizer
steps at `eval.during.multipliers` x the training length, on the same `eval.during.tokens` targets of the
validation split every time (nonoverlapping windows, the protocol of lenx.extrapolation), and logs
`extrap/ppl_<m>x` and `extrap/loss_<m>x` to every logger: columns of logs/metrics.csv, and the W&B history, where
they plot against the step beside the training loss. A task run (data.task) logs `task/acc_<m>x` and
`task/token_acc_<m>x` instead: exact match and per-token accuracy on the same `eval.during.instances` held-out
instances of size m x train_size every time (lenx.tasks.probe.task_accuracy, teacher-forced).

The scores are logged at the index of the step that produced them (global_step - 1, as Lightning logs the training
loss), so a resumed run keeps the points before its checkpoint and logs each later one exactly once
(lenx.loggers.ResumableCSVLogger drops the rows at or after the checkpoint's step).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from lenx.errors import ConfigError, check_int
from lenx.extrapolation import evaluate_lengths, scored_span
from lenx.scoring import check_multipliers
from lenx.tasks.probe import task_accuracy

log = logging.getLogger(__name__)


class DuringTraining(Callback):
    """Scores every `every_n_steps` optimizer steps (`scores(module) -> (metrics, summary)`) and logs them to every
    logger at the step that produced them, with their cost in the log line."""

    def __init__(self, every_n_steps: int) -> None:
        self.every = check_int(every_n_steps, "eval.every_n_steps")
        self.seconds, self.last_step = 0.0, -1
        self.started = time.perf_counter()

    def scores(self, pl_module) -> tuple[dict[str, float], str]:
        raise NotImplementedError

    def on_train_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()
        # the step training starts from (0, or a resumed checkpoint's): its model was scored before the checkpoint
        # was written (or is the untrained one), so scoring waits for the next optimizer step
        self.last_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # optimizer steps taken: unchanged between accumulated micro-batches (trainer.accumulate_grad_batches), so
        # a micro-batch that did not complete a step finds the step already handled
        step = trainer.global_step
        if step % self.every or step == self.last_step:
            return
        self.last_step = step
        t0 = time.perf_counter()
        with torch.no_grad():
            metrics, summary = self.scores(pl_module)
        pl_module.model.train()
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=step - 1)
        spent = time.perf_counter() - t0
        self.seconds += spent
        total = time.perf_counter() - self.started
        log.info("step %d: %s (scored in %.1fs; %.1f%% of training wall time so far)", step, summary, spent,
                 100 * self.seconds / total)


def during_settings(eval_cfg: dict, *keys: str) -> dict | None:
    """eval.during (None when eval.every_n_steps is null), with the keys a callback needs."""
    if eval_cfg.get("every_n_steps") is None:
        return None
    during = eval_cfg.get("during") or {}
    missing = [k for k in keys if not isinstance(during, dict) or k not in during]
    if missing:
        raise ConfigError(f"eval.every_n_steps needs eval.during.{', eval.during.'.join(missing)}")
    return during


class ExtrapolationDuringTraining(DuringTraining):
    def __init__(self, tokens: np.ndarray, *, train_len: int, every_n_steps: int, multipliers: list[int],
                 n_tokens: int, batch_tokens: int) -> None:
        super().__init__(every_n_steps)
        check_multipliers(multipliers, "eval.during.multipliers")
        check_int(n_tokens, "eval.during.tokens")
        scored_span(len(tokens), train_len, list(multipliers), n_tokens, "eval.during.multipliers")  # the longest window fits the split
        self.tokens, self.train_len = tokens, train_len
        self.multipliers, self.n_tokens, self.batch_tokens = list(multipliers), n_tokens, batch_tokens

    @classmethod
    def from_config(cls, eval_cfg: dict, tokens: np.ndarray, train_len: int) -> ExtrapolationDuringTraining | None:
        """The callback for eval.every_n_steps (None when it is null), checked before training starts."""
        during = during_settings(eval_cfg, "multipliers", "tokens")
        if during is None:
            return None
        return cls(tokens, train_len=train_len, every_n_steps=eval_cfg["every_n_steps"],
                   multipliers=during["multipliers"], n_tokens=during["tokens"], batch_tokens=eval_cfg["batch_tokens"])

    def scores(self, pl_module):
        rows, _ = evaluate_lengths(pl_module.model, self.tokens, train_len=self.train_len,
                                   multipliers=self.multipliers, tokens_to_score=self.n_tokens,
                                   batch_tokens=self.batch_tokens, device=pl_module.device)
        metrics = {}
        for r in rows:
            metrics[f"extrap/ppl_{r['multiplier']}x"] = r["ppl"]
            metrics[f"extrap/loss_{r['multiplier']}x"] = r["loss"]
        return metrics, "ppl " + " ".join(f"{r['multiplier']}x={r['ppl']:.2f}" for r in rows)


class TaskAccuracyDuringTraining(DuringTraining):
    """A task run's accuracy at eval.during.multipliers x train_size (sizes the task cannot build are skipped)."""

    def __init__(self, task, *, every_n_steps: int, multipliers: list[int], instances: int) -> None:
        super().__init__(every_n_steps)
        for m in multipliers:
            check_int(m, "eval.during.multipliers")
        self.task, self.multipliers = task, [m for m in multipliers if not task.problem(m * task.train_size)]
        self.instances = check_int(instances, "eval.during.instances")
        if not self.multipliers:
            raise ConfigError(f"eval.during.multipliers={multipliers}: the task builds none of these sizes")

    @classmethod
    def from_config(cls, eval_cfg: dict, task) -> TaskAccuracyDuringTraining | None:
        during = during_settings(eval_cfg, "multipliers", "instances")
        if during is None:
            return None
        return cls(task, every_n_steps=eval_cfg["every_n_steps"], multipliers=during["multipliers"],
                   instances=during["instances"])

    def scores(self, pl_module):
        rows = list(task_accuracy(pl_module.model, self.task, multipliers=self.multipliers,
                                  instances=self.instances, batch=50, decode="teacher", device=pl_module.device))
        metrics = {}
        for r in rows:
            metrics[f"task/acc_{r['multiplier']}x"] = r["accuracy"]
            metrics[f"task/token_acc_{r['multiplier']}x"] = r["token_accuracy"]
        return metrics, "accuracy " + " ".join(f"{r['multiplier']}x={r['accuracy']:.3f}" for r in rows)
