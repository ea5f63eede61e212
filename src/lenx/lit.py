"""Lightning wrappers: the LightningModule (model + optimisation) and the DataModule (random training windows)."""

from __future__ import annotations

import io
import logging
import math
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from torch.utils.data import DataLoader, Dataset

from lenx import positions, throughput
from lenx.checkpoint import build_model  # public here too (lenx.lit.build_model)
from lenx.errors import ConfigError, LenxError
from lenx.probes import Passkey, PasskeyWindows
from lenx.results import atomic_write_bytes
from lenx.tasks import Task, TaskItems, masked_loss, pad

log = logging.getLogger(__name__)


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup from 1/warmup to 1, then cosine from 1 down to min_ratio at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch.save checkpointing, through a temporary file and a rename: a kill mid-write leaves the
    previous checkpoint whole, never a truncated one. Resuming loads with weights_only=True (plain data only)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        atomic_write_bytes(Path(path), buf.getvalue())

    def load_checkpoint(self, path, map_location=lambda storage, loc: storage, weights_only=None):
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


class NonFiniteLossError(LenxError):
    """The training loss became NaN or inf; the last good checkpoint is kept."""


class LenxModule(L.LightningModule):
    """Receives the resolved config as a plain dict and builds the model itself, so a checkpoint alone rebuilds it."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = cfg
        self.model = build_model(cfg)
        # train-time position augmentation (validation: default positions, from SHAPE's offset for positions=offset)
        self.positions = positions.build(cfg)
        self.tokenizer_json: str | None = None  # set by train.run from the data cache
        self._last_step_time: float | None = None
        # MFU (lenx.throughput): the matmul parameters N of 6 N + 12 n_layers d T, and the device's peak (on_fit_start)
        self.n_matmul = throughput.matmul_params(self.model)
        self.peak_flops: float | None = None

    def on_fit_start(self) -> None:
        # CUDA: the device's dense bf16 peak from lenx.throughput's table; CPU: the matmul peak measured now (~0.2 s)
        # in the training precision's dtype, as scripts/benchmark.py compares it
        dtype = torch.bfloat16 if str(self.trainer.precision).startswith("bf16") else torch.float32
        self.peak_flops, what = throughput.device_peak(self.device, dtype)
        if self.global_rank == 0:
            log.info("MFU (train/mfu) against %s", what)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The tokenizer the model was trained with, bytes-identical, so scoring the checkpoint never depends on a
        # cache or corpus that may have changed since (lenx.checkpoint.scoring_data).
        if self.tokenizer_json is not None:
            checkpoint["lenx_tokenizer"] = self.tokenizer_json

    def configure_model(self) -> None:
        # Lightning calls this before fitting (on the right device, inside the strategy's setup). In place, so
        # parameter names and checkpoints stay those of the eager model.
        if self.cfg.get("compile"):
            self.model.compile()

    def forward(self, idx_BT: torch.Tensor) -> torch.Tensor:
        return self.model(idx_BT)

    def _loss(self, batch_BT, pos_T: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(batch_BT, (tuple, list)):  # a task batch (ids, answer mask[, labels]): loss on answers only
            return masked_loss(self.model(batch_BT[0][:, :-1], pos_T), *batch_BT)
        logits_BTV = self.model(batch_BT[:, :-1], pos_T)
        return F.cross_entropy(logits_BTV.float().flatten(0, 1), batch_BT[:, 1:].flatten())

    def train_positions(self, batch_BT, batch_idx: int) -> torch.Tensor | positions.LayerDraws | None:
        """This forward's positions: None (0..T-1) unless a position mode draws them from (seed, step, micro) (and
        each example's row: this process's examples are rows global_rank x B.. of the step's draw)."""
        ids_BT = batch_BT[0] if isinstance(batch_BT, (tuple, list)) else batch_BT
        micro = batch_idx % self.cfg["trainer"].get("accumulate_grad_batches", 1)
        B = ids_BT.shape[0]
        pos_T = self.positions.for_step(ids_BT.shape[1] - 1, self.cfg["seed"], self.global_step, micro, batch=B,
                                        first=self.global_rank * B)
        return None if pos_T is None else pos_T.to(ids_BT.device)

    def training_step(self, batch_BT, batch_idx):
        loss = self._loss(batch_BT, self.train_positions(batch_BT, batch_idx))
        if not torch.isfinite(loss):
            last = Path(self.cfg.get("run_dir", ".")) / "checkpoints" / "last.ckpt"
            kept = (f"the last good checkpoint, {last} (step {torch.load(last, weights_only=True)['global_step']}),"
                    " is kept" if last.is_file() else f"no checkpoint was written before it (ckpt_every="
                    f"{self.cfg.get('ckpt_every')})")
            raise NonFiniteLossError(f"training loss is {loss.item()} at step {self.global_step}; stopping: {kept} "
                                     "(try a lower optim.lr)")
        now = time.perf_counter()
        # self.log costs ~1.5 ms a call on a CPU (a third of a tiny task model's step): log only on the steps the
        # logger writes (every trainer.log_every_n_steps), which hold the same values as logging every step
        if getattr(self.trainer, "_logger_connector", None) is None or self.trainer._logger_connector.should_update_logs:
            self.log("train/loss", loss, prog_bar=True)
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
            if self._last_step_time is not None:  # wall time of the previous step: forward, backward and optimizer
                ids_BT = batch_BT[0] if isinstance(batch_BT, (tuple, list)) else batch_BT  # tokens, padding included
                tokens_per_s = ids_BT[:, 1:].numel() / (now - self._last_step_time)  # this process's (device's)
                self.log("train/tokens_per_s", tokens_per_s, prog_bar=True)
                if self.peak_flops:  # model FLOPs utilisation (lenx.throughput: PaLM's 6 N + 12 n_layers d T)
                    fpt = throughput.flops_per_token(self.n_matmul, len(self.model.blocks), self.model.tok.embedding_dim,
                                                     ids_BT.shape[1] - 1)
                    self.log("train/mfu", tokens_per_s * fpt / self.peak_flops, prog_bar=True)
        self._last_step_time = now
        return loss

    def on_train_batch_start(self, batch, batch_idx) -> None:
        # Random draws of a step (dropout) come from a generator seeded by (seed, step, rank) only, so a run resumed
        # from a checkpoint draws exactly what the uninterrupted run drew, whatever else consumed the global RNG
        # in between (dataloader iterators draw a base seed when they start, validation runs, ...).
        seed = (self.cfg["seed"] * 1_000_003 + self.global_step) * 1_009 + self.global_rank
        if self.device.type == "cpu":  # the CPU generator is the one CPU dropout draws from; torch.manual_seed would
            torch.default_generator.manual_seed(seed)  # also queue a lazy CUDA seeding with a formatted stack trace,
        else:                                          # 3.7 ms a step (a fifth of a tiny task model's step)
            torch.manual_seed(seed)

    def validation_step(self, batch_BT, batch_idx):
        self.log("val/loss", self._loss(batch_BT), prog_bar=True)

    def configure_optimizers(self):
        o = self.cfg["optim"]
        decay = [p for p in self.parameters() if p.dim() >= 2]  # no weight decay on norms and biases
        no_decay = [p for p in self.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": o["weight_decay"]},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=o["lr"], betas=tuple(o["betas"]), eps=o["eps"])
        total = self.cfg["trainer"]["max_steps"]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(
            s, warmup=o["warmup_steps"], total=total, min_ratio=o["min_lr_ratio"]))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class RandomWindows(Dataset):
    """Item i is the window tokens[o : o + seq_len + 1] at an offset drawn from an RNG seeded by (seed, i).

    Deterministic per index, so a resumed run sees exactly the windows the uninterrupted one would have.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, n_items: int, seed: int, start: int = 0) -> None:
        if len(tokens) < seq_len + 2:
            raise ConfigError(f"seq_len={seq_len} needs at least {seq_len + 2} tokens; the split has {len(tokens)}")
        self.tokens, self.seq_len, self.n_items, self.seed, self.start = tokens, seq_len, n_items, seed, start

    def __len__(self) -> int:
        # Not n_items - start: a resumed Lightning epoch continues its batch count from the restored step, and
        # ends at len(dataloader); the items past n_items - start are never reached (max_steps stops first).
        return self.n_items

    def __getitem__(self, i: int) -> torch.Tensor:
        i += self.start  # items already consumed before a resume are skipped, not repeated
        o = int(np.random.default_rng((self.seed, i)).integers(0, len(self.tokens) - self.seq_len - 1))
        return torch.from_numpy(self.tokens[o:o + self.seq_len + 1].astype(np.int64))


class WindowData(L.LightningDataModule):
    """Training windows from the train stream (or passkey sequences); fixed validation windows at the training
    length.

    Item i of the training set is a pure function of (seed, i), and one optimizer step consumes
    batch_size x accumulate items (batch_size is global, split over the processes); the training dataloader starts at the item after the last step
    already taken (global_step, restored from a checkpoint), so a resumed run continues the exact item sequence
    of the uninterrupted one. Under DDP, Lightning's DistributedSampler gives each rank its own items.
    """

    def __init__(self, train_tokens: np.ndarray, val_tokens: np.ndarray, *, seq_len: int, batch_size: int,
                 max_steps: int, accumulate: int, val_batches: int, seed: int, passkey: Passkey | None = None,
                 task: Task | None = None) -> None:
        super().__init__()
        self.train_tokens, self.val_tokens, self.passkey, self.task = train_tokens, val_tokens, passkey, task
        self.seq_len, self.batch_size, self.max_steps, self.accumulate = seq_len, batch_size, max_steps, accumulate
        self.val_batches, self.seed = max(1, val_batches), seed
        self._dataset(0)  # refuse impossible shapes (seq_len vs the split, passkey length) up front

    def _dataset(self, start_step: int, val: bool = False) -> Dataset:
        per_step = self.batch_size * self.accumulate  # batch_size is global: split over the processes below
        n, start = (self.val_batches * self.batch_size, 0) if val else (self.max_steps * per_step,
                                                                        start_step * per_step)
        seed = 10_000 + self.seed if val else self.seed
        if self.task is not None:  # a task run: instances of the task (validation: the held-out half, own stream)
            return TaskItems(self.task, n, self.seed, start, "validation" if val else "train")
        if self.passkey is None:
            return RandomWindows(self.val_tokens if val else self.train_tokens, self.seq_len, n, seed, start)
        return PasskeyWindows(self.passkey, self.seq_len, n, seed, start)  # data=passkey: synthetic sequences

    def _trainer_state(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_step, trainer.world_size) if trainer is not None else (0, 1)

    def _loader(self, ds: Dataset, world: int) -> DataLoader:
        # No worker processes: on a CPU box they would compete with torch's compute threads, and the
        # data path is a memmap slice per item, far cheaper than a forward pass. Per process: the global
        # batch / world size (Lightning's DistributedSampler hands each rank its own items).
        return DataLoader(ds, batch_size=self.batch_size // world, shuffle=False, num_workers=0,
                          pin_memory=torch.cuda.is_available(), collate_fn=pad if self.task is not None else None)

    def train_dataloader(self):
        step, world = self._trainer_state()
        return self._loader(self._dataset(step), world)

    def val_dataloader(self):
        _, world = self._trainer_state()
        return self._loader(self._dataset(0, val=True), world)
