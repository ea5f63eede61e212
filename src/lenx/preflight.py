"""Checks Hydra runs before it creates the output directory and its log file (a Hydra callback, configured in
train.yaml and evaluate.yaml): a missing `ckpt=`, a seed that is not a plain non-negative integer (it names the run
directory), or an output directory that cannot be written is one `lenx: error:` line and exit status 2, not a
Hydra traceback and not a directory named after a typo."""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lenx.errors import ConfigError, check_int, user_errors
from lenx.tasks import build_task


def check_writable(run_dir: Path) -> None:
    """A read-only or full output directory is refused before any work, with the reason."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".lenx_write_test.{os.getpid()}"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to the run directory {run_dir}: {e.strerror or e}") from None


def check_job(config: DictConfig) -> None:
    """What must hold before Hydra names and creates the job's directory."""
    if "ckpt" in config.keys() and OmegaConf.is_missing(config, "ckpt") and not config.get("hf", {}).get("path"):
        raise ConfigError("evaluate.py needs a checkpoint: ckpt=<run dir>/checkpoints/last.ckpt (or a local "
                          "Hugging Face model: hf.path=<dir>)")
    if "seed" in config:
        check_int(config.seed, "seed", minimum=0)
    if "data" in config and OmegaConf.is_dict(config.data.get("task")):  # a task's parameters (lenx.tasks)
        build_task({"data": {"task": OmegaConf.to_container(config.data.task, resolve=True)}})


class Preflight(Callback):
    """Hydra warns and goes on when a callback raises; these exit (SystemExit is not an Exception)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        with user_errors():
            check_job(config)
            HydraConfig.instance().set_config(config)  # as run_job does next: ${hydra:...} in the dir resolves
            check_writable(Path(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        with user_errors():
            HydraConfig.instance().set_config(config)
            check_writable(Path(config.hydra.sweep.dir))

    def on_job_start(self, config: DictConfig, **kwargs) -> None:  # each job of a sweep (its own seed)
        with user_errors():
            check_job(config)


class RunLock:
    """An exclusive lock on a run directory for the whole run (flock on <run_dir>/.lenx.lock, which holds the
    holder's pid): a second process on the same directory is refused at once, naming the holder, instead of both
    training in full and writing every step twice. The kernel drops the lock when the holder dies (SIGKILL too)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / ".lenx.lock"
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"{self.path.parent} is in use by another lenx process (pid {holder}); wait for it "
                              "to finish, or choose another hydra.run.dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing releases the flock
            self.fd = None
