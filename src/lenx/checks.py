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
from lenx.checkpoint import is_rotary, scheme_configs
from lenx.errors import ConfigError, check_int
from lenx.lit import build_model

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
    from lenx.pos.bias import T5Bias

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
    from lenx.pos.bias import T5Bias

    dims = dict(d_model=scheme.d_model, n_heads=scheme.n_heads, head_dim=scheme.head_dim, train_len=span)
    for n in range(scheme.num_buckets, 3, -2):
        if n // 2 < span and not T5Bias(num_buckets=n, max_distance=span, **dims).untrained_buckets(span):
            return f"pos.max_distance={span} (<= seq_len)" if n == scheme.num_buckets else \
                f"pos.num_buckets={n} pos.max_distance={span}"
    return f"pos.max_distance={span} with fewer buckets"
