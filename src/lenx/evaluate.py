"""Re-score a checkpoint at many lengths: `python evaluate.py ckpt=<path> [scalings=[none,yarn]]`."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from lenx import data
from lenx.checkpoint import (  # noqa: F401  (load_model, read_checkpoint and scaling_config: public here too)
    CONFIG_DIR,
    load_model,
    read_checkpoint,
    rebuild,
    scaling_config,
    scoring_data,
)
from lenx.dist import is_main
from lenx.errors import ConfigError, check_int, user_errors
from lenx.extrapolation import check_multipliers, evaluate_lengths, resolve_stride, scored_span
from lenx.hardware import eval_autocast, resolve_device
from lenx.lit import build_model
from lenx.probes import Passkey, passkey_accuracy, repeat_segment
from lenx.results import (
    PASSKEY_COLUMNS,
    POSITION_COLUMNS,
    PROBE_COLUMNS,
    append_rows,
    format_table,
    git_state,
    plot_passkey,
    plot_positions,
    plot_rows,
    read_rows,
)

log = logging.getLogger(__name__)


def scaling_name(cfg: dict) -> str:
    return cfg["pos"].get("scaling", {}).get("method", "none") if "scaling" in cfg["pos"] else "none"


def eval_strides(eval_cfg: dict) -> list:
    """The stride of each requested mode: nonoverlapping -> None (= eval_len), sliding -> eval.stride."""
    modes = eval_cfg.get("mode", "nonoverlapping")
    modes = [modes] if isinstance(modes, str) else list(modes)
    unknown = sorted(set(modes) - {"nonoverlapping", "sliding"})
    if unknown:
        raise ConfigError(f"unknown eval.mode {unknown}; expected nonoverlapping and/or sliding")
    return [None if m == "nonoverlapping" else eval_cfg["stride"] for m in modes]


def check_eval(eval_cfg: dict, n_tokens: int | None, train_len: int) -> None:
    """Refuse, before any training or scoring, eval settings that cannot work (on a split of n_tokens, when
    given); say when eval.tokens is more than the split holds."""
    if eval_cfg.get("split") not in data.SPLITS:
        raise ConfigError(f"eval.split must be one of {list(data.SPLITS)}, got {eval_cfg.get('split')!r}")
    check_multipliers(list(eval_cfg["multipliers"]))
    context = eval_cfg.get("context", "stream")
    if context not in ("stream", "document"):
        raise ConfigError(f"eval.context must be 'stream' or 'document', got {context!r}")
    eval_autocast(str(eval_cfg.get("precision", "32")), torch.device("cpu"))  # validates the value
    check_int(eval_cfg["tokens"], "eval.tokens")
    check_int(eval_cfg["batch_tokens"], "eval.batch_tokens")
    if not isinstance(eval_cfg.get("new_corpus", False), bool):
        raise ConfigError(f"eval.new_corpus must be true or false, got {eval_cfg['new_corpus']!r}")
    for stride in eval_strides(eval_cfg):
        for m in eval_cfg["multipliers"]:
            resolve_stride(stride, m * train_len)
    if eval_cfg.get("probe"):
        for key in ("seg_len", "trials"):
            check_int(eval_cfg["probe"].get(key), f"eval.probe.{key}")
        bad = [m for m in eval_cfg["probe"]["multipliers"] if not isinstance(m, (int, float)) or m <= 0]
        if bad or not eval_cfg["probe"]["multipliers"]:
            raise ConfigError(f"eval.probe.multipliers must be positive numbers, got {eval_cfg['probe']['multipliers']}")
    pk = eval_cfg.get("passkey")
    if pk:
        if pk.get("run") not in ("auto", True, False):
            raise ConfigError(f"eval.passkey.run must be auto, true or false, got {pk.get('run')!r}")
        check_int(pk.get("trials"), "eval.passkey.trials")
        check_multipliers(list(pk["multipliers"]))
    if n_tokens is not None and context == "stream":
        (_, scored), = scored_span(n_tokens, train_len, list(eval_cfg["multipliers"]), eval_cfg["tokens"])
        if eval_cfg["tokens"] > n_tokens - 1:
            log.warning("lenx: eval.tokens=%d is more than the %s split holds (%d targets): %d targets are scored "
                        "at each length (a multiple of the longest window)", eval_cfg["tokens"], eval_cfg["split"],
                        n_tokens - 1, scored)


def passkey_task(cfg: dict) -> Passkey | None:
    """The passkey task for a run trained on data=passkey (data.task), else None; checks seq_len fits it."""
    d = cfg["data"]
    if d.get("task") in (None, "lm"):
        return None
    if d["task"] != "passkey":
        raise ConfigError(f"unknown data.task {d['task']!r}; expected lm or passkey")
    task = Passkey(data.load_tokenizer(cfg), data.prepare(cfg)["eod_id"], (d.get("passkey") or {}).get("digits", 5))
    if cfg["seq_len"] + 1 < task.min_length():
        raise ConfigError(f"data=passkey needs seq_len >= {task.min_length() - 1} to hold the needle and the "
                          f"question, got seq_len={cfg['seq_len']}")
    return task


def run_passkey(eval_cfg: dict, cfg: dict) -> bool:
    pk = eval_cfg.get("passkey") or {}
    return pk.get("run") is True or (pk.get("run") == "auto" and cfg["data"].get("task") == "passkey")


def score_and_record(model: torch.nn.Module, cfg: dict, eval_cfg: dict, run_dir: Path, *, ckpt: str = "",
                     choices: dict | None = None) -> dict[str, list[dict]]:
    """Score `model` at every multiplier and mode, and run the probes, appending each result to run_dir's files
    as soon as it exists (atomic rewrites). Results already in run_dir for this checkpoint and scaling are
    skipped, so a rerun after a kill completes the rest. Returns the new rows, {table name: rows}."""
    tokens = data.load_tokens(cfg, eval_cfg["split"])
    device = resolve_device(eval_cfg.get("device", "auto"))
    prov = cfg.get("provenance", {})
    sha, dirty = git_state()
    choices = choices or {}
    common = dict(pos=choices.get("pos") or cfg["pos"]["_target_"].rsplit(".", 1)[-1].lower(),
                  scaling=scaling_name(cfg), train_len=cfg["seq_len"])
    stamp = {"seed": cfg.get("seed"), "git_sha": sha, "ckpt": str(ckpt)}

    def mine(name: str) -> list[dict]:  # rows already written for this checkpoint and scaling
        return [r for r in read_rows(run_dir, name) if r.get("ckpt") == str(ckpt)
                and r.get("scaling") == common["scaling"] and r.get("split", eval_cfg["split"]) == eval_cfg["split"]]

    done = {(r["stride"], r.get("context", "stream"), r["eval_len"], r.get("targets_hash")) for r in mine("extrapolation")}
    have_probe, have_passkey = bool(mine("probe")), bool(mine("passkey"))  # read before any rank writes
    write = is_main()  # every rank scores its share (DDP); rank zero alone writes
    new: dict[str, list[dict]] = {"extrapolation": [], "position_loss": [], "probe": [], "passkey": []}

    def save(row: dict, positions: list[dict]) -> None:
        row.update(common, model=choices.get("model", ""), corpus=prov.get("corpus", ""),
                   corpus_hash=prov.get("corpus_hash", ""), tokenizer_hash=prov.get("tokenizer_hash", ""),
                   dirty=dirty, run_dir=str(run_dir), split=eval_cfg["split"], **stamp)
        positions = [{**common, **p, **stamp, "targets_hash": row.get("targets_hash")} for p in positions]
        if write:
            append_rows(run_dir, positions, "position_loss", POSITION_COLUMNS)
            append_rows(run_dir, [row])  # last: a row on disk means its positions are too
        new["extrapolation"].append(row)
        new["position_loss"] += positions

    context = eval_cfg.get("context", "stream")
    eod_id = data.prepare(cfg)["eod_id"] if context == "document" else None
    for stride in eval_strides(eval_cfg):
        evaluate_lengths(model.to(device), tokens, train_len=cfg["seq_len"], multipliers=list(eval_cfg["multipliers"]),
                         tokens_to_score=eval_cfg["tokens"], batch_tokens=eval_cfg["batch_tokens"], device=device,
                         stride=stride, context=context, eod_id=eod_id, progress=bool(eval_cfg.get("progress", False)),
                         done=done, on_result=save, precision=str(eval_cfg.get("precision", "32")))
    probe = eval_cfg.get("probe")
    if probe and not have_probe:
        new["probe"] = [{**common, **r, **stamp} for r in repeat_segment(
            model, vocab_size=cfg["data"]["vocab_size"], train_len=cfg["seq_len"],
            multipliers=list(probe["multipliers"]), seg_len=probe["seg_len"], trials=probe["trials"], device=device)]
        if write:
            append_rows(run_dir, new["probe"], "probe", PROBE_COLUMNS)
    if run_passkey(eval_cfg, cfg) and not have_passkey:
        pk, task = eval_cfg["passkey"], passkey_task({**cfg, "data": {**cfg["data"], "task": "passkey"}})
        new["passkey"] = [{**common, **r, **stamp} for r in passkey_accuracy(
            model, task, train_len=cfg["seq_len"], multipliers=list(pk["multipliers"]), depths=list(pk["depths"]),
            trials=pk["trials"], device=device)]
        if write:
            append_rows(run_dir, new["passkey"], "passkey", PASSKEY_COLUMNS)
    return new


def write_outputs(run_dir: Path, tables: dict[str, list[dict]]) -> None:
    """Figures from every row in run_dir (old and new), and a printed summary; the rows are already on disk."""
    all_rows = read_rows(run_dir) if is_main() else []
    if not all_rows:
        return
    png = plot_rows(all_rows, run_dir / "extrapolation.png")
    plot_positions(read_rows(run_dir, "position_loss"), run_dir / "position_loss.png")
    print("\n" + format_table(all_rows))
    skipped = len(all_rows) - len(tables["extrapolation"])
    if skipped:
        print(f"({skipped} rows were already in {run_dir / 'extrapolation.jsonl'}; they were not scored again)")
    if tables["probe"]:
        print("\nrepeated-segment probe: copy gain (nats) = NLL(control) - NLL(repeat), by distance")
        for r in tables["probe"]:
            print(f"  {r['pos']:<14} {r['scaling']:<12} d={r['distance']:<6} ({r['multiplier']}x)"
                  f"  {r['copy_gain']:+.3f}")
    passkey_rows = read_rows(run_dir, "passkey")
    if passkey_rows:
        plot_passkey(passkey_rows, run_dir / "passkey.png")
    if tables.get("passkey"):
        print("\npasskey retrieval accuracy, by length (rows: depth of the key)")
        for r in tables["passkey"]:
            print(f"  {r['pos']:<14} {r['scaling']:<12} len={r['eval_len']:<6} depth={r['depth']:<5} "
                  f"{r['accuracy']:.2f}")
    print(f"\nresults: {run_dir / 'extrapolation.csv'} (+ .jsonl), figure: {png}, "
          f"loss per position: {run_dir / 'position_loss.csv'} (+ .png), probe: {run_dir / 'probe.csv'}")


def evaluate_checkpoint(ckpt: str, eval_cfg: dict, run_dir: Path, scalings: list[str] | None = None) -> list[dict]:
    """Score one checkpoint under each scaling (None: as trained); validates everything before scoring, including
    that the tokens to score are those the checkpoint was trained on (scoring_data)."""
    run_dir = Path(run_dir)
    state = read_checkpoint(ckpt)  # fails fast on a missing/foreign checkpoint
    _, cfg = rebuild(state, None, ckpt)
    check_eval(eval_cfg, None, cfg["seq_len"])  # values first, before the corpus is touched
    cfg = scoring_data(state, cfg, eval_cfg["split"], bool(eval_cfg.get("new_corpus", False)))
    check_eval(eval_cfg, len(data.load_tokens(cfg, eval_cfg["split"])), cfg["seq_len"])
    models = [rebuild(state, s, ckpt) for s in (scalings or [None])]  # every scaling validated before scoring
    choices = cfg.get("choices", {})
    tables: dict[str, list[dict]] = {"extrapolation": [], "position_loss": [], "probe": [], "passkey": []}
    for model, mcfg in models:
        mcfg = {**mcfg, "data": cfg["data"], "provenance": cfg["provenance"]}
        for name, rows in score_and_record(model, mcfg, eval_cfg, run_dir, ckpt=ckpt, choices=choices).items():
            tables[name] += rows
    write_outputs(run_dir, tables)
    return tables["extrapolation"]


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    eval_cfg = OmegaConf.to_container(cfg.eval, resolve=True)
    scalings = OmegaConf.to_container(cfg.scalings) if cfg.scalings is not None else None
    if isinstance(scalings, str):
        scalings = [scalings]
    with user_errors():
        evaluate_checkpoint(cfg.ckpt, eval_cfg, Path(cfg.run_dir), scalings)
