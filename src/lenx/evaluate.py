"""Re-score a checkpoint at many lengths: `python evaluate.py ckpt=<path> [scalings=[none,yarn]]`."""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from lenx import data
from lenx.checkpoint import (  # noqa: F401  (load_model, read_checkpoint, scaling_config: public here too)
    CONFIG_DIR,
    load_model,
    read_checkpoint,
    rebuild,
    scaling_config,
    scoring_data,
)
from lenx.errors import user_errors
from lenx.scoring import Run, check_eval, report, score
from lenx.tasks import build_task


def evaluate_checkpoint(ckpt: str, eval_cfg: dict, run_dir: Path, scalings: list[str] | None = None) -> list[dict]:
    """Score one checkpoint under each scaling (None: as trained) with every probe of eval.probes; validates
    everything before scoring, including that the tokens to score are those the checkpoint was trained on
    (scoring_data). Rows already in run_dir for this checkpoint and scaling are kept, not scored again.
    Returns the new perplexity rows."""
    run_dir = Path(run_dir)
    state = read_checkpoint(ckpt)  # fails fast on a missing/foreign checkpoint
    _, cfg = rebuild(state, None, ckpt)
    probes = check_eval(eval_cfg, None, cfg["seq_len"])  # values first, before the corpus is touched
    if build_task(cfg) is not None:  # a task model: no corpus; only probes that score tasks
        probes = [p for p in probes if getattr(p, "task_probe", False)]
    else:
        cfg = scoring_data(state, cfg, eval_cfg["split"], bool(eval_cfg.get("new_corpus", False)))
        probes = check_eval(eval_cfg, len(data.load_tokens(cfg, eval_cfg["split"])), cfg["seq_len"])
    models = [rebuild(state, s, ckpt) for s in (scalings or [None])]  # every scaling validated before scoring
    new: dict[str, list[dict]] = {}
    for model, mcfg in models:
        run = Run({**mcfg, "data": cfg["data"], "provenance": cfg["provenance"]}, eval_cfg, run_dir, ckpt=ckpt,
                  choices=cfg.get("choices", {}))
        for table, rows in score(model, run, probes).items():
            new.setdefault(table, []).extend(rows)
    report(run, probes, new)
    return new.get("extrapolation", [])


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with user_errors():
        eval_cfg = OmegaConf.to_container(cfg.eval, resolve=True)
        scalings = OmegaConf.to_container(cfg.scalings) if cfg.scalings is not None else None
        evaluate_checkpoint(cfg.ckpt, eval_cfg, Path(cfg.run_dir), [scalings] if isinstance(scalings, str)
                            else scalings)
