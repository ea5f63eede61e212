"""Re-score a checkpoint at many lengths: `python evaluate.py ckpt=<path> [scalings=[none,yarn]]
[extensions=[none,self_extend]]`."""

from __future__ import annotations

import itertools
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lenx import data
from lenx import hf as hf_lib
from lenx.checkpoint import (  # noqa: F401  (load_model, read_checkpoint, scaling_config: public here too)
    CONFIG_DIR,
    load_model,
    read_checkpoint,
    rebuild,
    scaling_config,
    scoring_data,
)
from lenx.configs import build_extension
from lenx.errors import ConfigError, user_errors
from lenx.extensions import check_applies
from lenx.preflight import RunLock, check_writable
from lenx.scoring import Run, check_eval, probes_for, report, score
from lenx.tasks import build_task


def evaluate_checkpoint(ckpt: str, eval_cfg: dict, run_dir: Path, scalings: list[str] | None = None,
                        extensions: list[str | dict] | None = None) -> list[dict]:
    """Score one checkpoint under each scaling (None: as trained) x each training-free extension (None: none)
    with every probe of eval.probes; validates everything before scoring, including that the tokens to score are
    those the checkpoint was trained on (scoring_data). Rows already in run_dir for this checkpoint, scaling and
    extension are kept, not scored again. Returns the new perplexity rows."""
    with scoring_lock(run_dir):
        return _evaluate_checkpoint(ckpt, eval_cfg, Path(run_dir), scalings, extensions)


def scoring_lock(run_dir: Path) -> RunLock:
    """The run directory's lock (lenx.preflight.RunLock), taken before any work: a second scoring into the same
    directory, or a scoring into a directory a training run holds, is refused at once instead of interleaving rows."""
    check_writable(Path(run_dir))
    return RunLock(Path(run_dir))


def _evaluate_checkpoint(ckpt: str, eval_cfg: dict, run_dir: Path, scalings: list[str] | None,
                         extensions: list[str | dict] | None) -> list[dict]:
    state = read_checkpoint(ckpt)  # fails fast on a missing/foreign checkpoint
    _, cfg = rebuild(state, None, ckpt)
    probes = check_eval(eval_cfg, None, cfg["seq_len"])  # values first, before the corpus is touched
    task = build_task(cfg)  # a task model: no corpus; only probes that score tasks
    probes = probes_for(probes, task=task, what=f"{ckpt} ({'a language' if task is None else 'a task'} model)")
    models = [rebuild(state, s, ckpt) for s in (scalings or [None])]  # every scaling validated before scoring
    exts = [build_extension(e, cfg["seq_len"]) for e in (extensions or ["none"])]
    scheme = cfg.get("choices", {}).get("pos", cfg["pos"]["_target_"])
    for (model, _), (_, ext) in itertools.product(models, exts):  # ... and every extension, on every model
        check_applies(ext, model.pos, scheme, model.layer_modifiers)
    if task is None:  # then the corpus: the tokens the checkpoint was trained on, and a split that holds the windows
        cfg = scoring_data(state, cfg, eval_cfg["split"], bool(eval_cfg.get("new_corpus", False)))
        check_eval(eval_cfg, len(data.load_tokens(cfg, eval_cfg["split"])), cfg["seq_len"])
    new: dict[str, list[dict]] = {}
    for (model, mcfg), (name, ext) in itertools.product(models, exts):
        model.extension = None if name == "none" else ext
        run = Run({**mcfg, "data": cfg["data"], "provenance": cfg["provenance"], "extension": name}, eval_cfg,
                  run_dir, ckpt=ckpt, choices=cfg.get("choices", {}))
        for table, rows in score(model, run, probes).items():
            new.setdefault(table, []).extend(rows)
    report(run, probes, new)
    return new.get("extrapolation", [])


def evaluate_hf(hf: dict, data_cfg: dict, eval_cfg: dict, run_dir: Path, scalings: list[str] | None = None
                ) -> list[dict]:
    """Score a local Hugging Face causal LM (lenx.hf) under each scaling with the probes that read a corpus, on
    data_cfg's corpus tokenised with the model's own tokenizer. Returns the new perplexity rows."""
    with scoring_lock(run_dir):
        return _evaluate_hf(hf, data_cfg, eval_cfg, Path(run_dir), scalings)


def _evaluate_hf(hf: dict, data_cfg: dict, eval_cfg: dict, run_dir: Path, scalings: list[str] | None
                 ) -> list[dict]:
    # values first, before the model or corpus is touched
    probes = probes_for(check_eval(eval_cfg, None, 1), task=None, what=f"hf.path={hf.get('path')} (a language model)")
    models, choices = hf_lib.scoring_setup(hf, data_cfg, eval_cfg, scalings)
    ckpt = str(hf_lib.local_dir(hf["path"]).resolve())
    check_eval(eval_cfg, len(data.load_tokens({"data": models[0][1]["data"]}, eval_cfg["split"])),
               models[0][1]["seq_len"])  # the split holds the longest window
    new: dict[str, list[dict]] = {}
    for model, cfg in models:
        run = Run(cfg, eval_cfg, run_dir, ckpt=ckpt, choices=choices)
        for table, rows in score(model, run, probes).items():
            new.setdefault(table, []).extend(rows)
    report(run, probes, new)
    return new.get("extrapolation", [])


def list_of_names(value, key: str) -> list | None:
    """`scalings=` / `extensions=` as a list: null, a list, or one name (`scalings=yarn`: a list of one)."""
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if OmegaConf.is_list(value):
        names = OmegaConf.to_container(value, resolve=True)
        for i, v in enumerate(names):
            if not isinstance(v, (str, dict)):  # a name, or a mapping {name: ..., <parameter>: ...}
                raise ConfigError(f"{key}[{i}]={v!r} is not a name (nor a mapping with name: ...); known names are "
                                  f"the files of configs/{'pos/scaling' if key == 'scalings' else 'extension'}/")
        return names
    raise ConfigError(f"{key} must be a name or a list of names, e.g. {key}=[none,{'yarn' if key == 'scalings' else 'self_extend'}], "
                      f"got {value!r}")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with user_errors():
        eval_cfg = OmegaConf.to_container(cfg.eval, resolve=True)
        names = {k: list_of_names(cfg[k], k) for k in ("scalings", "extensions")}
        if cfg.hf.path:  # a local Hugging Face model instead of a lenx checkpoint
            if names["extensions"] not in (None, ["none"]):
                raise ConfigError("extensions apply to lenx checkpoints (they act inside lenx's attention); a "
                                  "Hugging Face model takes scalings=[...] only")
            evaluate_hf(OmegaConf.to_container(cfg.hf, resolve=True), OmegaConf.to_container(cfg.hf.data, resolve=True),
                        eval_cfg, Path(cfg.run_dir), names["scalings"])
            return
        evaluate_checkpoint(cfg.ckpt, eval_cfg, Path(cfg.run_dir), names["scalings"], names["extensions"])
