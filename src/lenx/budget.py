"""A study's GPU budget, estimated from its config and printed before any work (config `budget`, e.g.
experiment=gpu_study; a Hydra callback, so a sweep prints it once before its first job starts).

Training tokens per run = max_steps x batch_size x accumulate_grad_batches x seq_len; training FLOPs = tokens x
lenx.throughput's 6 N + 12 n_layers d T (the model built on the meta device); time per run = tokens / the GPU
throughput the config assumes for its model preset (`budget.tokens_per_s.<preset>`, one GPU); the grid's
GPU-hours = runs x that. Validation and scoring are not counted (at 1x-16x the training length on a few hundred
thousand tokens, minutes against hours of training), nor compilation.
"""

from __future__ import annotations

import math

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lenx import positions
from lenx.checkpoint import build_model
from lenx.errors import ConfigError, user_errors
from lenx.throughput import format_count, gpu_peak_flops, model_flops_per_token


def grid_size(sweep_params: dict | None, task_overrides: list[str]) -> int:
    """Jobs a Hydra basic sweep runs: the product of the sweep's value counts, the config's `hydra.sweeper.params`
    overridden key by key by the command line's sweep overrides (`pos=a,b`)."""
    counts = {k: len(str(v).split(",")) for k, v in (sweep_params or {}).items()}
    for o in OverridesParser.create().parse_overrides(list(task_overrides)):
        if o.is_sweep_override():
            counts[o.get_key_element()] = len(list(o.sweep_string_iterator()))
        else:
            counts.pop(o.get_key_element(), None)  # a single value on the command line replaces the sweep
    return math.prod(counts.values())


def estimate(cfg: dict, preset: str, runs: int = 1) -> dict:
    """The budget of `runs` runs of the resolved config `cfg` whose model preset is `preset` (config group choice)."""
    b = cfg.get("budget") or {}
    assumed = (b.get("tokens_per_s") or {}).get(preset)
    if not assumed:
        raise ConfigError(f"budget.tokens_per_s has no assumed throughput for model={preset} "
                          f"(it has {sorted(b.get('tokens_per_s') or {})}): add budget.tokens_per_s.{preset}=...")
    t = cfg["trainer"]
    tokens = t["max_steps"] * cfg["batch_size"] * t.get("accumulate_grad_batches", 1) * cfg["seq_len"]
    cfg = {**cfg, "positions": dict(cfg.get("positions") or {})}
    positions.configure(cfg)  # a learned table's size
    with torch.device("meta"):
        model = build_model(cfg)
    fpt = model_flops_per_token(model, cfg["seq_len"])
    hours = tokens / assumed / 3600
    peak = gpu_peak_flops(str(b.get("gpu", "")))
    return {"preset": preset, "params": model.param_counts()["total"], "tokens_per_run": tokens,
            "flops_per_token": fpt, "flops_per_run": tokens * fpt, "assumed_tokens_per_s": assumed,
            "gpu": b.get("gpu"), "implied_mfu": assumed * fpt / peak if peak else None, "hours_per_run": hours,
            "runs": runs, "gpu_hours": runs * hours, "budget_gpu_hours": b.get("gpu_hours")}


def describe(e: dict) -> str:
    """The estimate in a few lines, as printed before a study starts."""
    mfu = "" if e["implied_mfu"] is None else f", {100 * e['implied_mfu']:.0f} % MFU of its dense bf16 peak"
    lines = [(f"budget: model={e['preset']} ({format_count(e['params'])} parameters), {e['tokens_per_run']:.3g} "
              f"training tokens a run x {e['flops_per_token'] / 1e9:.3g} GFLOP a token = {e['flops_per_run']:.3g} "
              "FLOP a run"),
             (f"budget: assumed {e['assumed_tokens_per_s']:.3g} tokens/s on one {e['gpu']}{mfu} -> "
              f"{e['hours_per_run']:.2f} GPU-hours a run; {e['runs']} run{'s' * (e['runs'] != 1)}: "
              f"{e['gpu_hours']:.1f} GPU-hours "
              f"(stated budget {e['budget_gpu_hours']} GPU-hours; validation, scoring and compilation not counted)")]
    if e["budget_gpu_hours"] is not None and e["gpu_hours"] > e["budget_gpu_hours"]:
        lines.append(f"budget: the grid exceeds the stated budget by {e['gpu_hours'] / e['budget_gpu_hours']:.2f}x")
    return "\n".join(lines)


def job_config(config: DictConfig) -> dict:
    """The job config as a plain resolved dict, without Hydra's node and the run directory (not yet known)."""
    cfg = OmegaConf.to_container(config, resolve=False)
    cfg.pop("hydra", None)
    cfg["run_dir"] = "<run_dir>"  # (other keys may refer to it)
    return OmegaConf.to_container(OmegaConf.create(cfg), resolve=True)


class PrintBudget(Callback):
    """Prints the study's estimate before the run (or, for a sweep, before its first job); a config without a
    `budget` node prints nothing."""

    def _print(self, config: DictConfig, multirun: bool) -> None:
        if not config.get("budget"):
            return
        with user_errors():
            HydraConfig.instance().set_config(config)  # ${hydra:...} in the job config resolves (as Preflight)
            params = OmegaConf.to_container(config.hydra.sweeper.get("params") or {})
            runs = grid_size(params, config.hydra.overrides.task) if multirun else 1
            e = estimate(job_config(config), config.hydra.runtime.choices.model, runs)
            print(describe(e), flush=True)
            if not multirun:  # one job of the study: what its whole grid (the preset's sweep) would take
                grid = grid_size(params, [])
                print(f"budget: the study's grid (python train.py -m ...): {grid} runs, "
                      f"{grid * e['hours_per_run']:.1f} GPU-hours", flush=True)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._print(config, multirun=False)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._print(config, multirun=True)
