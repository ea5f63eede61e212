"""Where training curves go: CSV (resumable, always), W&B beside it (offline unless credentials exist; never costs a
run). `logger=wandb` keeps logs/metrics.csv too, so a W&B run has its local curve and scripts/curves.py reads it."""

from __future__ import annotations

import csv
import io
import logging
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from omegaconf import DictConfig

from lenx.results import atomic_write_text

log = logging.getLogger(__name__)


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger (<save_dir>/<name>/<version>/metrics.csv), except that a resumed run keeps its curve.

    Lightning's writer deletes metrics.csv when its directory is not empty, so a resumed run lost every step before
    its checkpoint. Here the rows of steps before `resume_step` (the checkpoint's global step) are kept, the later
    ones (logged after the checkpoint, before a kill) dropped, since the resumed run logs those steps again; and
    the file is flushed at every logging step, so a kill loses no row that precedes the checkpoint."""

    def __init__(self, *args, resume_step: int = 0, **kwargs) -> None:
        kwargs.setdefault("flush_logs_every_n_steps", 1)
        super().__init__(*args, **kwargs)
        self.resume_step = resume_step

    @property
    def experiment(self):
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, self.resume_step)
        return self._experiment


class _KeepingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, keep_before: int) -> None:
        self._keep_before = keep_before
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            keys = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) < self._keep_before]
        self.metrics_keys = sorted(keys)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.metrics_keys)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, buf.getvalue())


def wandb_offline(requested) -> bool:
    """W&B runs offline unless credentials exist (env key or a netrc entry), so a run never blocks on the network."""
    if requested != "auto":
        return bool(requested)
    if os.environ.get("WANDB_MODE") in ("offline", "disabled"):
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return not (netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"))


def make_logger(cfg: DictConfig, choices: dict | None = None, resume_step: int = 0):
    """The configured logger(s); the CSV one keeps the curve before `resume_step` (a resumed run's checkpoint).
    `logger=wandb` gives [CSV, W&B]: the CSV curve is always written (<run_dir>/logs/metrics.csv), W&B beside it."""
    if not cfg.get("logger"):
        return False
    lcfg = cfg.logger
    if lcfg._target_.endswith("WandbLogger"):
        csv_logger = ResumableCSVLogger(cfg.run_dir, name="", version="logs", resume_step=resume_step)
        choices = choices or {}
        tags = list(lcfg.get("tags") or []) + [f"{k}={choices[k]}" for k in ("pos", "pos/scaling", "model", "data")
                                                if choices.get(k)] + [f"seq_len={cfg.seq_len}", f"seed={cfg.seed}"]
        group = lcfg.get("group")
        if group is None and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            group = Path(HydraConfig.get().sweep.dir).name  # the runs of one sweep share a W&B group
        try:
            logger = instantiate(lcfg, offline=wandb_offline(lcfg.get("offline", "auto")), tags=tags, group=group)
            logger.experiment  # start the run now (it is lazy): a missing package or a failing init shows here
            return [csv_logger, logger]
        except Exception as e:  # W&B trouble must never cost a run: the CSV curve goes on alone
            log.warning("W&B logger unavailable (%s); logging to CSV only", e)
            return [csv_logger]
    if lcfg._target_ == "lenx.loggers.ResumableCSVLogger":
        return instantiate(lcfg, resume_step=resume_step)
    return instantiate(lcfg)


def log_to_wandb(trainer, tables: dict[str, list[dict]]) -> None:
    """The extrapolation rows, loss per position and probes as W&B tables, with a ppl-vs-length line plot."""
    from lightning.pytorch.loggers import WandbLogger

    for lg in trainer.loggers:
        if not isinstance(lg, WandbLogger):
            continue
        try:
            import wandb

            wb = {}
            for name, rs in tables.items():  # list-valued columns (per-unit sums) stay in the local files
                cols = sorted({k for r in rs for k, v in r.items() if not isinstance(v, list)})
                wb[name] = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rs])
            if "extrapolation" in wb:
                wb["extrapolation_ppl"] = wandb.plot.line(wb["extrapolation"], "eval_len", "ppl",
                                                          title="ppl vs evaluation length")
            if "position_loss" in wb:
                wb["position_nll"] = wandb.plot.line(wb["position_loss"], "position_bin_start", "mean_nll",
                                                     stroke="eval_len", title="loss by position (bin start)")
            lg.experiment.log(wb)
            offline, run_path = lg.experiment.settings.mode == "offline", Path(lg.experiment.dir).parent
            lg.experiment.finish()  # flush now: a sweep's next job starts a new run in this process
            if offline:
                print(f"W&B run saved offline; upload it with: wandb sync {run_path}")
        except Exception as e:  # local results are already written; W&B is a copy
            log.warning("could not log extrapolation tables to W&B: %s", e)
