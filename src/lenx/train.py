"""Train a decoder on short windows, then score it at every multiplier: `python train.py pos=alibi seq_len=512`."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from lenx import data
from lenx.dist import is_main
from lenx.checkpoint import CONFIG_DIR, config_names, read_checkpoint, scheme_config, scoring_data
from lenx.errors import ConfigError, check_int, user_errors
from lenx.evaluate import check_eval, passkey_task, score_and_record, write_outputs
from lenx.preflight import RunLock, check_writable
from lenx.hardware import resolve_precision
from lenx.lit import AtomicCheckpointIO, LenxModule, ResumableCSVLogger, WindowData, build_model
from lenx.results import atomic_write_text

log = logging.getLogger(__name__)


def check_config(cfg: dict) -> None:
    """Everything that can be refused without data or compute: refused here, before any work starts."""
    for key in ("seq_len", "batch_size", "ckpt_every"):
        check_int(cfg[key], key)
    check_int(cfg["seed"], "seed", minimum=0)
    t = cfg["trainer"]
    check_int(t["max_steps"], "trainer.max_steps")
    check_int(t["accumulate_grad_batches"], "trainer.accumulate_grad_batches")
    dropout = cfg["model"].get("dropout")
    if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        raise ConfigError(f"model.dropout must be a probability in [0, 1), got {dropout!r}")
    if not isinstance(cfg.get("compile", False), bool):
        raise ConfigError(f"compile must be true or false, got {cfg['compile']!r}")
    cxx = os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++")  # what inductor calls
    if cfg.get("compile") and not torch.cuda.is_available() and not shutil.which(cxx):
        raise ConfigError("compile=true on CPU needs a C++ compiler (torch.compile's inductor backend); none "
                          f"({cxx}) was found on PATH (set CXX, or run with compile=false)")
    check_scaling_applies(cfg)
    check_model_memory(cfg)  # shapes, heads vs width, rotary dims, scaling parameters, and the model's size


def check_scaling_applies(cfg: dict) -> None:
    """`+pos/scaling=...` on a scheme whose lenx config has no scaling: say which schemes take one."""
    pos = cfg["pos"]
    if "scaling" not in pos:
        return
    schemes = {n: scheme_config(n) for n in config_names("pos")}
    mine = [c for c in schemes.values() if c.get("_target_") == pos.get("_target_")]
    if mine and not any("scaling" in c for c in mine):
        takes = sorted(n for n, c in schemes.items() if "scaling" in c)
        raise ConfigError(f"pos/scaling does not apply to pos={(cfg.get('choices') or {}).get('pos', pos['_target_'])}"
                          f": only {takes} take a scaling (RoPE extension, or interpolate for learned)")


def check_model_memory(cfg: dict) -> None:
    """Build the model on the meta device (no memory) and refuse one whose weights, gradients and AdamW state
    (16 bytes a parameter in fp32) exceed this machine's memory, e.g. pos=learned with seq_len=10^9."""
    try:
        with torch.device("meta"):
            model = build_model(cfg)
    except (NotImplementedError, RuntimeError):  # a scheme whose construction reads tensor values: real build
        model = build_model(cfg)
    n = sum(p.numel() for p in model.parameters())
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if 16 * n > ram:
        raise ConfigError(f"the model has {n:,} parameters ({16 * n / 2**30:.1f} GiB with gradients and AdamW "
                          f"state), more than this machine's {ram / 2**30:.1f} GiB of memory (check seq_len / "
                          "model sizes: a learned position table holds seq_len rows)")


def check_world(cfg: dict, trainer) -> None:
    """Rules for more than one process, checked before training: `batch_size` is the global batch (split evenly
    over the processes, so the optimisation is the same whatever the device count), and a Hydra multirun cannot
    use the launcher that re-runs the command for each rank (it would re-run the whole sweep)."""
    world = trainer.world_size
    if cfg["batch_size"] % world:
        raise ConfigError(f"batch_size={cfg['batch_size']} is the global batch and must divide evenly over "
                          f"{world} processes (devices x nodes)")
    launcher = getattr(trainer.strategy, "launcher", None)
    if (world > 1 and type(launcher).__name__ == "_SubprocessScriptLauncher" and HydraConfig.initialized()
            and HydraConfig.get().mode == RunMode.MULTIRUN):
        raise ConfigError("a -m sweep cannot use trainer.strategy=ddp on several local devices: Lightning would "
                          "re-run the whole sweep in each process. Use trainer.strategy=ddp_spawn, or "
                          "hydra/launcher=submitit_slurm (one SLURM task per device)")


def resume_point(cfg: dict, run_dir: Path) -> tuple[str | None, int, dict | None]:
    """(checkpoint to resume from, its step, its contents): `resume` auto -> run_dir's last.ckpt if present;
    never -> none, and a run dir holding checkpoints is refused (never overwritten); a path -> that checkpoint.
    Checked here, before data or compute: the checkpoint must load and describe the same model."""
    mode, last = cfg.get("resume", "auto"), run_dir / "checkpoints" / "last.ckpt"
    if mode in (None, "never"):
        if last.is_file():
            raise ConfigError(f"{run_dir} already holds a checkpoint and resume=never: choose another "
                              "hydra.run.dir, or resume=auto to continue that run")
        return None, 0, None
    path = last if mode == "auto" else Path(mode)
    if mode == "auto" and not path.is_file():
        return None, 0, None
    ckpt = read_checkpoint(path)

    def what(c: dict, key: str):  # the part of a config that defines the model, minus where the cache lives
        return {k: v for k, v in c[key].items() if k != "cache_dir"} if isinstance(c[key], dict) else c[key]

    for key in ("model", "pos", "seq_len", "data"):
        a, b = what(ckpt["hyper_parameters"]["cfg"], key), what(cfg, key)
        if a != b:
            raise ConfigError(f"cannot resume from {path}: its {key} config differs from this run's "
                              f"({a} vs {b}); use another hydra.run.dir or resume=never")
    return str(path), int(ckpt.get("global_step", 0)), ckpt


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
    """The configured logger; the CSV one keeps the curve before `resume_step` (a resumed run's checkpoint)."""
    if not cfg.get("logger"):
        return False
    lcfg = cfg.logger
    if lcfg._target_.endswith("WandbLogger"):
        choices = choices or {}
        tags = list(lcfg.get("tags") or []) + [f"{k}={choices[k]}" for k in ("pos", "pos/scaling", "model", "data")
                                                if choices.get(k)] + [f"seq_len={cfg.seq_len}", f"seed={cfg.seed}"]
        group = lcfg.get("group")
        if group is None and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            group = Path(HydraConfig.get().sweep.dir).name  # the runs of one sweep share a W&B group
        try:
            logger = instantiate(lcfg, offline=wandb_offline(lcfg.get("offline", "auto")), tags=tags, group=group)
            logger.experiment  # start the run now (it is lazy): a missing package or a failing init shows here
            return logger
        except Exception as e:  # W&B trouble must never cost a run: fall back to CSV
            log.warning("W&B logger unavailable (%s); logging to CSV instead", e)
            return ResumableCSVLogger(cfg.run_dir, name="", version="logs", resume_step=resume_step)
    if lcfg._target_ == "lenx.lit.ResumableCSVLogger":
        return instantiate(lcfg, resume_step=resume_step)
    return instantiate(lcfg)


def run(cfg: DictConfig) -> list[dict]:
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
    check_config(cfg_dict)
    check_eval(cfg_dict["eval"], None, cfg.seq_len)
    init_state = read_checkpoint(cfg.init_from)["state_dict"] if cfg.get("init_from") else None
    resume_from, trained_steps, resumed = resume_point(cfg_dict, run_dir)

    if resumed is None:
        cfg_dict["provenance"] = data.prepare(cfg_dict)  # tokenizer + token memmaps (cached after the first run)
    else:  # the tokens it was trained on, with its own tokenizer; a changed corpus is refused with both hashes
        recorded = {**cfg_dict, "provenance": resumed["hyper_parameters"]["cfg"].get("provenance", {})}
        for split in dict.fromkeys(("train", cfg_dict["eval"]["split"])):
            cfg_dict = scoring_data(resumed, recorded, split)
    prov = cfg_dict["provenance"]
    passkey = passkey_task(cfg_dict)  # data=passkey: refuses a seq_len too short for the task before training
    check_eval(cfg_dict["eval"], len(data.load_tokens(cfg_dict, cfg_dict["eval"]["split"])), cfg.seq_len)
    if is_main():
        atomic_write_text(run_dir / "run_config.yaml", OmegaConf.to_yaml(cfg_dict))
    log.info("data ready in %.1fs: %s", time.time() - t0, {k: prov[k] for k in ("corpus", "n_tokens")})

    L.seed_everything(cfg.seed, workers=True)
    module = LenxModule(cfg_dict)
    module.tokenizer_json = (Path(prov["dir"]) / "tokenizer.json").read_text()
    if init_state is not None:  # fine-tuning (e.g. at a longer seq_len under a RoPE scaling): weights only
        try:
            module.load_state_dict(init_state, strict=True)
        except RuntimeError as e:
            raise ConfigError(f"init_from={cfg.init_from} does not fit this model: {e}") from None
    t = cfg_dict["trainer"]
    dm = WindowData(data.load_tokens(cfg_dict, "train"), data.load_tokens(cfg_dict, "validation"),
                    seq_len=cfg.seq_len, batch_size=cfg.batch_size, max_steps=t["max_steps"],
                    accumulate=t["accumulate_grad_batches"], val_batches=t["limit_val_batches"] or 1,
                    seed=cfg.seed, passkey=passkey)
    ckpt_cb = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_last=True, save_top_k=0,
                              every_n_train_steps=cfg.ckpt_every)
    extra = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    trainer = instantiate(cfg.trainer, precision=resolve_precision(t["precision"], t["accelerator"]),
                          logger=make_logger(cfg, cfg_dict["choices"], trained_steps), callbacks=[ckpt_cb, *extra],
                          plugins=[AtomicCheckpointIO()], default_root_dir=str(run_dir))
    check_world(cfg_dict, trainer)
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
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=False)  # resumable
        log.info("trained in %.1fs", time.time() - t0)

    tables = score_and_record(module.model, cfg_dict, cfg_dict["eval"], run_dir,
                              ckpt=str(run_dir / "checkpoints" / "last.ckpt"), choices=cfg_dict["choices"])
    write_outputs(run_dir, tables)
    if is_main():
        log_to_wandb(trainer, tables)
        print(f"total wall time {time.time() - t0:.1f}s; run dir {run_dir}")
    return tables["extrapolation"]


def log_to_wandb(trainer, tables: dict[str, list[dict]]) -> None:
    """The extrapolation rows, loss per position and probes as W&B tables, with a ppl-vs-length line plot."""
    from lightning.pytorch.loggers import WandbLogger

    for lg in trainer.loggers:
        if not isinstance(lg, WandbLogger):
            continue
        try:
            import wandb

            wb = {}
            for name, rs in tables.items():
                cols = sorted({k for r in rs for k in r})
                wb[name] = wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rs])
            lg.experiment.log({**wb, "extrapolation_ppl": wandb.plot.line(
                wb["extrapolation"], "eval_len", "ppl", title="ppl vs evaluation length")})
            offline, run_path = lg.experiment.settings.mode == "offline", Path(lg.experiment.dir).parent
            lg.experiment.finish()  # flush now: a sweep's next job starts a new run in this process
            if offline:
                print(f"W&B run saved offline; upload it with: wandb sync {run_path}")
        except Exception as e:  # local results are already written; W&B is a copy
            log.warning("could not log extrapolation tables to W&B: %s", e)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    with user_errors():
        run(cfg)
