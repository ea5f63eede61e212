"""A run's identity: `${lenx_run_id:}` in the run / sweep directory names, so the same command finds its run again.

The id hashes the composed job config (every group choice and value that changes what is trained) and leaves out
what does not: Hydra's own node, the run directory, `resume`, the logger, the evaluation settings, extra callbacks
and cosmetic trainer flags. Rerunning a command therefore lands in the same directory and resumes from its last
checkpoint (or, if training finished, only scores what is missing); changing eval settings re-scores the same
model instead of training a new one.
"""

from __future__ import annotations

import hashlib
import json

from omegaconf import OmegaConf

# `compile` and `attention` change how the same function is computed, not what is trained: a run may resume with
# them toggled.
NOT_IDENTITY = ("hydra", "run_dir", "resume", "logger", "eval", "callbacks", "compile", "attention", "budget",
                "ckpt_keep_every")
COSMETIC_TRAINER = ("enable_progress_bar", "enable_model_summary", "log_every_n_steps")


def run_id(cfg: dict) -> str:
    """8 hex digits of a sha256 over the job config minus NOT_IDENTITY (and cosmetic trainer flags)."""
    ident = {k: v for k, v in cfg.items() if k not in NOT_IDENTITY}
    if (ident.get("positions") or {}).get("_target_") == "lenx.positions.Contiguous":
        del ident["positions"]  # the default (and older configs, which have no `positions`): ids stay as they were
    if isinstance(ident.get("attn"), dict) and not any(ident["attn"].values()):
        del ident["attn"]  # no attention modifier (and older configs, which have no `attn`): ids stay as they were
    if isinstance(ident.get("pos"), dict):
        ident["pos"] = _pos_identity(ident["pos"])
    if isinstance(ident.get("trainer"), dict):
        ident["trainer"] = {k: v for k, v in ident["trainer"].items() if k not in COSMETIC_TRAINER}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _pos_identity(pos: dict) -> dict:
    """The pos config as ids saw it before RoPE scalings were classes and a learned table's interpolation its own
    option (a scaling named by `method`), so that a rerun of an older command still finds its run directory."""
    from lenx.pos.rope_scaling import scaling_label

    pos = dict(pos)
    scaling = pos.get("scaling")
    if isinstance(scaling, dict) and "_target_" in scaling:
        pos["scaling"] = {"method": scaling_label(scaling), **{k: v for k, v in scaling.items() if k != "_target_"}}
    if pos.get("_target_") == "lenx.pos.absolute.Learned" and "interpolate" in pos:
        pos["scaling"] = {"method": "interpolate"} if pos.pop("interpolate") else {"method": "none",
                                                                                   "original_len": None}
    return pos


def _resolve_run_id(*, _root_) -> str:
    return run_id(OmegaConf.to_container(_root_, resolve=False))


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("lenx_run_id"):
        OmegaConf.register_new_resolver("lenx_run_id", _resolve_run_id)
