"""Extrapolation while training: a Lightning callback that scores the model every `eval.every_n_steps` optimizer
steps at `eval.during.multipliers` x the training length, on the same `eval.during.tokens` targets of the
validation split every time (nonoverlapping windows, the protocol of lenx.extrapolation), and logs
`extrap/ppl_<m>x` and `extrap/loss_<m>x` to every logger: columns of logs/metrics.csv, and the W&B history, where
they plot against the step beside the training loss.

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
from lenx.extrapolation import check_multipliers, evaluate_lengths, scored_span

log = logging.getLogger(__name__)


class ExtrapolationDuringTraining(Callback):
    def __init__(self, tokens: np.ndarray, *, train_len: int, every_n_steps: int, multipliers: list[int],
                 n_tokens: int, batch_tokens: int) -> None:
        check_int(every_n_steps, "eval.every_n_steps")
        check_multipliers(list(multipliers))
        check_int(n_tokens, "eval.during.tokens")
        scored_span(len(tokens), train_len, list(multipliers), n_tokens)  # the longest window fits the split
        self.tokens, self.train_len, self.every = tokens, train_len, every_n_steps
        self.multipliers, self.n_tokens, self.batch_tokens = list(multipliers), n_tokens, batch_tokens
        self.seconds, self.last_step = 0.0, -1
        self.started = time.perf_counter()

    @classmethod
    def from_config(cls, eval_cfg: dict, tokens: np.ndarray, train_len: int) -> "ExtrapolationDuringTraining | None":
        """The callback for eval.every_n_steps (None when it is null), checked before training starts."""
        every = eval_cfg.get("every_n_steps")
        if every is None:
            return None
        during = eval_cfg.get("during") or {}
        if not isinstance(during, dict) or "multipliers" not in during or "tokens" not in during:
            raise ConfigError("eval.every_n_steps needs eval.during.multipliers and eval.during.tokens")
        return cls(tokens, train_len=train_len, every_n_steps=every, multipliers=during["multipliers"],
                   n_tokens=during["tokens"], batch_tokens=eval_cfg["batch_tokens"])

    def on_train_start(self, trainer, pl_module) -> None:
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # optimizer steps taken; unchanged between accumulated micro-batches
        if step % self.every or step == self.last_step:
            return
        self.last_step = step
        t0 = time.perf_counter()
        with torch.no_grad():
            rows, _ = evaluate_lengths(pl_module.model, self.tokens, train_len=self.train_len,
                                       multipliers=self.multipliers, tokens_to_score=self.n_tokens,
                                       batch_tokens=self.batch_tokens, device=pl_module.device)
        pl_module.model.train()
        metrics = {}
        for r in rows:
            metrics[f"extrap/ppl_{r['multiplier']}x"] = r["ppl"]
            metrics[f"extrap/loss_{r['multiplier']}x"] = r["loss"]
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=step - 1)
        spent = time.perf_counter() - t0
        self.seconds += spent
        total = time.perf_counter() - self.started
        log.info("step %d: ppl %s (scored in %.1fs; %.1f%% of training wall time so far)", step,
                 " ".join(f"{r['multiplier']}x={r['ppl']:.2f}" for r in rows), spent, 100 * self.seconds / total)
