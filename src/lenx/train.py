"""Train a decoder on short windows, then score it at every multiplier: `python train.py pos=alibi seq_len=512`."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from lenx import data, positions, tasks
from lenx.checkpoint import CONFIG_DIR, read_checkpoint, resume_point, scoring_data
from lenx.checks import check_config, check_world
from lenx.dist import is_main
from lenx.during import ExtrapolationDuringTraining, TaskAccuracyDuringTraining
from lenx.errors import ConfigError, user_errors
from lenx.hardware import resolve_precision
from lenx.lit import AtomicCheckpointIO, LenxModule, WindowData
from lenx.loggers import log_to_wandb, make_logger
from lenx.preflight import RunLock, check_writable
from lenx.probes import passkey_task
from lenx.results import atomic_write_text
from lenx.scoring import Run, check_eval, probes_for, report, score
from lenx.throughput import param_line

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> list[dict]:
    """Train (or resume, or find finished) the run in cfg.run_dir, then score it; returns the perplexity rows."""
    run_dir = Path(cfg.run_dir)
    check_writable(run_dir)
    if not is_main():  # DDP ranks started by rank zero: the lock is rank zero's
        return train_and_score(cfg, run_dir)
    with RunLock(run_dir):
        return train_and_score(cfg, run_dir)


def train_and_score(cfg: DictConfig, run_dir: Path) -> list[dict]:
    t0 = time.time()
    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    cfg_dict["choices"] = {k: v for k, v in choices.items() if not k.startswith("hydra")}
    task = tasks.configure(cfg_dict)  # a task run: vocab_size and seq_len from the task (data.task)
    positions.configure(cfg_dict)  # a position mode's null length: seq_len x the largest eval multiplier
    check_config(cfg_dict)
    what = f"a task run (data={cfg_dict['data'].get('name')})" if task is not None else "a language model"
    # probes that read the corpus (perplexity, repeated segment, passkey) have nothing to score on a task run
    probes = probes_for(check_eval(cfg_dict["eval"], None, cfg_dict["seq_len"]), task=task, what=what)
    init_state = read_checkpoint(cfg.init_from)["state_dict"] if cfg.get("init_from") else None
    resume_from, trained_steps, resumed = resume_point(cfg_dict, run_dir)

    if task is not None:  # synthetic instances: no corpus, no tokenizer
        cfg_dict["provenance"] = tasks.provenance(cfg_dict)
    elif resumed is None:
        cfg_dict["provenance"] = data.prepare(cfg_dict)  # tokenizer + token memmaps (cached after the first run)
    else:  # the tokens it was trained on, with its own tokenizer; a changed corpus is refused with both hashes
        recorded = {**cfg_dict, "provenance": resumed["hyper_parameters"]["cfg"].get("provenance", {})}
        for split in dict.fromkeys(("train", cfg_dict["eval"]["split"])):
            cfg_dict = scoring_data(resumed, recorded, split)
    prov = cfg_dict["provenance"]
    pos_cfg = cfg_dict.get("pos")
    if task is None and isinstance(pos_cfg, dict) and "digit_ids" in pos_cfg and pos_cfg["digit_ids"] is None:
        pos_cfg["digit_ids"] = data.digit_ids(prov, str(pos_cfg.get("digits", "")))  # pos=abacus on a corpus
    passkey = passkey_task(cfg_dict)  # data=passkey: refuses a seq_len too short for the task before training
    if task is None:  # the split holds the longest window
        check_eval(cfg_dict["eval"], len(data.load_tokens(cfg_dict, cfg_dict["eval"]["split"])), cfg.seq_len)
    if is_main():
        atomic_write_text(run_dir / "run_config.yaml", OmegaConf.to_yaml(cfg_dict))
    log.info("data ready in %.1fs: %s", time.time() - t0, {k: prov[k] for k in ("corpus", "n_tokens")})

    L.seed_everything(cfg.seed, workers=True)
    module = LenxModule(cfg_dict)
    log.info("%s", param_line(module.model))  # total and non-embedding (lenx.throughput)
    if task is None:
        module.tokenizer_json = (Path(prov["dir"]) / "tokenizer.json").read_text()
    if init_state is not None:  # fine-tuning (e.g. at a longer seq_len under a RoPE scaling): weights only
        try:
            module.load_state_dict(init_state, strict=True)
        except RuntimeError as e:
            raise ConfigError(f"init_from={cfg.init_from} does not fit this model: {e}") from None
    t = cfg_dict["trainer"]
    streams = [None, None] if task else [data.load_tokens(cfg_dict, s) for s in ("train", "validation")]
    dm = WindowData(*streams, seq_len=cfg_dict["seq_len"], batch_size=cfg.batch_size, max_steps=t["max_steps"],
                    accumulate=t["accumulate_grad_batches"], val_batches=t["limit_val_batches"] or 1,
                    seed=cfg.seed, passkey=passkey, task=task)
    ckpt_cb = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0,
                              every_n_train_steps=cfg.ckpt_every)
    extra = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    if cfg.get("ckpt_keep_every"):  # intermediate checkpoints, kept (python evaluate.py ckpt=... scores any of them)
        extra.append(ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step}", save_top_k=-1,
                                     every_n_train_steps=cfg.ckpt_keep_every, auto_insert_metric_name=False))
    during = (TaskAccuracyDuringTraining.from_config(cfg_dict["eval"], task) if task else
              ExtrapolationDuringTraining.from_config(cfg_dict["eval"], streams[1], cfg.seq_len))
    # 6 x parameters x tokens: the step's matmul work, which decides whether bf16 autocast pays on a CPU
    flops_per_step = 6 * sum(p.numel() for p in module.parameters()) * cfg.batch_size * cfg_dict["seq_len"] \
        * t["accumulate_grad_batches"]
    trainer = instantiate(cfg.trainer, precision=resolve_precision(t["precision"], t["accelerator"], flops_per_step),
                          logger=make_logger(cfg, cfg_dict["choices"], trained_steps),
                          callbacks=[ckpt_cb, *extra, *([during] if during else [])],
                          plugins=[AtomicCheckpointIO()], default_root_dir=str(run_dir))
    check_world(cfg_dict, trainer)
    last = run_dir / "checkpoints" / "last.ckpt"
    if trained_steps >= t["max_steps"]:  # a finished run, rerun: nothing to train, score what is missing
        log.info("already trained (%d steps in %s); scoring only", trained_steps, resume_from)
        module.load_state_dict(resumed["state_dict"])
    else:
        if resume_from:
            log.info("resuming from %s (step %d of %d)", resume_from, trained_steps, t["max_steps"])
        with warnings.catch_warnings():
            # Lightning warns that a mid-epoch resume needs a stateful dataloader; lenx's training items are a pure
            # function of (seed, item index) and the loader restarts at the restored global step (WindowData).
            warnings.filterwarnings("ignore", message=".*dataloader is not resumable.*")
            trainer.fit(module, datamodule=dm, ckpt_path=resume_from)
        # The periodic callback saves every ckpt_every steps only: write the final state too, so that
        # last.ckpt is the model scored below whatever max_steps is (it lagged at step 100 of 150 before).
        trainer.save_checkpoint(last, weights_only=False)  # resumable: optimizer and loops too
        log.info("trained in %.1fs", time.time() - t0)

    scored = Run(cfg_dict, cfg_dict["eval"], run_dir, ckpt=str(last), choices=cfg_dict["choices"])
    new = score(module.model, scored, probes)
    report(scored, probes, new)
    if is_main():
        log_to_wandb(trainer, new)
        print(f"total wall time {time.time() - t0:.1f}s; run dir {run_dir}")
    return new.get("extrapolation", [])


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run(cfg)
