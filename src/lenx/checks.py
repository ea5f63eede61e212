"""Refusals that need no data or compute: a training config is checked here, before any work starts."""

from __future__ import annotations

import logging
import os
import shutil
import sys

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from lenx import positions
from lenx.checkpoint import build_model, is_rotary
from lenx.configs import scheme_configs
from lenx.errors import ConfigError, check_int
from lenx.pos.bias import T5Bias

log = logging.getLogger(__name__)


def check_config(cfg: dict) -> None:
    """Everything that can be refused without data or compute: refused here, before any work starts."""
    for key in ("seq_len", "batch_size", "ckpt_every"):
        check_int(cfg[key], key)
    check_int(cfg["seed"], "seed", minimum=0)
    if cfg.get("ckpt_keep_every") is not None:
        check_int(cfg["ckpt_keep_every"], "ckpt_keep_every")
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
    model = check_model_memory(cfg)  # shapes, heads vs width, rotary dims, scaling parameters, the model's size
    check_positions(cfg, model.pos)
    check_trained_range(cfg, model.pos)


def check_trained_range(cfg: dict, scheme) -> None:
    """A scheme with learned terms that training at this length cannot reach is said, with the fix: T5's buckets
    past seq_len (max_distance > seq_len) stay at their initial values, yet every longer distance reads them."""
    if not isinstance(scheme, T5Bias):
        return
    mode = positions.build(cfg)  # pose and randomized train distances up to their span; offsets keep seq_len's
    span = cfg["seq_len"] if isinstance(mode, (positions.Contiguous, positions.Offset)) else mode.span(cfg["seq_len"])
    untrained = scheme.untrained_buckets(span)
    if untrained:
        first = scheme.first_distance_in(untrained[0])
        log.warning("pos=t5: buckets %d-%d of %d are never trained at seq_len=%d (max_distance=%d > the %d distances "
                    "training sees), yet every distance from %d on reads them at evaluation; the papers trained T5 at "
                    "L >= 512, where every bucket is trained: set %s for that regime", untrained[0], untrained[-1],
                    scheme.num_buckets, cfg["seq_len"], scheme.max_distance, span, first, t5_fit(scheme, span))


def t5_fit(scheme, span: int) -> str:
    """The overrides that train every T5 bucket at `span` distances: max_distance = span, and where T5's bucket
    count still leaves some untrained (fewer distances than buckets), the largest even num_buckets that leaves none."""
    dims = {"d_model": scheme.d_model, "n_heads": scheme.n_heads, "head_dim": scheme.head_dim, "train_len": span}
    for n in range(scheme.num_buckets, 3, -2):
        if n // 2 < span and not T5Bias(num_buckets=n, max_distance=span, **dims).untrained_buckets(span):
            return f"pos.max_distance={span} (<= seq_len)" if n == scheme.num_buckets else \
                f"pos.num_buckets={n} pos.max_distance={span}"
    return f"pos.max_distance={span} with fewer buckets"


def check_positions(cfg: dict, scheme) -> None:
    """A position mode (configs/positions/) the scheme cannot take is refused; one it cannot feel is said."""
    mode = positions.build(cfg)
    if type(mode) is positions.Contiguous:
        return
    span, table = mode.span(cfg["seq_len"]), getattr(scheme, "max_positions", None)
    if table is not None and span > table:
        raise ConfigError(f"positions={mode.name} gives positions up to {span - 1}, past the learned table's "
                          f"{table} rows (pos.max_positions={table}); leave it null to size the table to {span}")
    name = (cfg.get("choices") or {}).get("pos", type(scheme).__name__)
    if not scheme.reads_positions:
        log.warning("positions=%s has no effect on pos=%s: the scheme reads no positions, so this run trains the "
                    "same model as positions=contiguous", mode.name, name)
    elif isinstance(mode, positions.Offset) and scheme.shift_invariant:
        log.warning("positions=%s has no effect on pos=%s beyond rounding: the scheme sees position differences "
                    "only, and a shifted window keeps them, so this run trains the model positions=contiguous "
                    "trains (offsets matter to absolute schemes: learned, sinusoidal, FoPE, and FIRE past its "
                    "threshold L)", mode.name, name)
    elif isinstance(mode, positions.Offset) and table is not None and mode.eval_start(cfg["seq_len"]) > 0:
        start = mode.eval_start(cfg["seq_len"])
        log.warning("positions=%s scores a learned table from position %d (SHAPE's evaluation offset K, for its "
                    "sinusoidal encoding): the table's rows from %d on are never trained, and every evaluation "
                    "window longer than %d tokens reads them; positions.eval_offset=0 scores at 0.. instead",
                    mode.name, start, mode.max_len, mode.max_len - start)


def check_scaling_applies(cfg: dict) -> None:
    """`+pos/scaling=...` on a scheme that is not rotary (lenx.pos.rope.Rotary): say which schemes take one."""
    pos = cfg["pos"]
    if "scaling" not in pos or is_rotary(pos):
        return
    takes = sorted(n for n, c in scheme_configs().items() if is_rotary(c))
    raise ConfigError(f"pos/scaling does not apply to pos={(cfg.get('choices') or {}).get('pos', pos['_target_'])}"
                      f": only {takes} take a RoPE scaling (a learned table has `pos.interpolate=true` instead)")


def check_model_memory(cfg: dict):
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
    return model


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
