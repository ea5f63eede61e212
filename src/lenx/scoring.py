"""Scoring as a library: every measurement is a Probe, chosen by `_target_` under `eval.probes.<name>`.

A probe is one class: `run(model, run)` yields result rows, and `<name>` (the config key) is the stem of its files,
`<run_dir>/<name>.csv` and `.jsonl`. lenx stamps every row with the provenance columns (results.stamp) and writes
it as soon as it is yielded, so an interrupted probe that skips what `run.done(name)` holds resumes where it
stopped. A row may name another table with the key TABLE (the perplexity probe's per-position rows go to
`position_loss`); such rows are written before the next row of the probe's own table, so a row on disk means its
companions are too. `eval.probes.<name>=null` disables a probe; one defined outside lenx plugs in the same way:
`python evaluate.py ckpt=... +eval.probes.mine._target_=mymodule.MyProbe`.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterable, Mapping
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from lenx import data
from lenx.attention import ATTENTION
from lenx.dist import is_main
from lenx.errors import ConfigError, check_int, instantiate_node
from lenx.hardware import eval_autocast, resolve_device
from lenx.results import append_rows, provenance_columns, read_rows, scaling_name, stamp

log = logging.getLogger(__name__)
TABLE = "_table"  # a row's key naming the table it belongs to, when not its probe's own


class Run:
    """What a probe may read about the model being scored: its resolved config, the evaluation settings, the
    scored corpus and tokenizer (those it was trained with), and the rows already written."""

    def __init__(self, cfg: dict, eval_cfg: dict, run_dir: Path, *, ckpt: str = "", choices: dict | None = None):
        self.cfg, self.eval, self.run_dir, self.ckpt = cfg, eval_cfg, Path(run_dir), str(ckpt)
        self.choices = choices or {}
        self.train_len: int = cfg["seq_len"]
        self.multipliers: list[int] = list(eval_cfg["multipliers"])
        self.device = resolve_device(eval_cfg.get("device", "auto"))
        self.scaling = scaling_name(cfg)
        self.extension = cfg.get("extension") or "none"

    def tokens(self, split: str | None = None) -> np.ndarray:
        """The corpus stream of `split` (default: eval.split) as a 1-D array of token ids."""
        return data.load_tokens(self.cfg, split or self.eval["split"])

    @cached_property
    def tokenizer(self):
        return data.load_tokenizer(self.cfg)

    @cached_property
    def eod_id(self) -> int:
        return data.entry(self.cfg)["eod_id"]

    def done(self, table: str) -> list[dict]:
        """Rows of `table` already in run_dir for this checkpoint, scaling, extension and split (read before any
        writing)."""
        return [r for r in read_rows(self.run_dir, table) if r.get("ckpt") == self.ckpt
                and r.get("scaling") == self.scaling and (r.get("extension") or "none") == self.extension
                and r.get("split", self.eval["split"]) == self.eval["split"]]


class Probe(abc.ABC):
    """One measurement. Subclasses take their parameters as keyword arguments (checked in __init__, so a bad value
    is refused before any scoring) and implement `run`; `columns` orders each table's CSV (the provenance columns
    and any others follow); `report` prints a summary and draws figures from the rows on disk."""

    name: str = ""  # set from the config key
    columns: dict[str, list[str]] = {}

    def check(self, eval_cfg: dict, n_tokens: int | None, train_len: int) -> None:
        """Refuse, before any training or scoring, the eval.* settings this probe reads and cannot run with (on a
        split of n_tokens tokens, when given; train_len: the model's training length). Called by check_eval."""

    @abc.abstractmethod
    def run(self, model: torch.nn.Module, run: Run) -> Iterable[dict]:
        """Yield result rows (plain dicts); skip what run.done(...) already holds."""

    def report(self, run: Run, new: dict[str, list[dict]]) -> str:
        rows = new.get(self.name, [])
        return f"{self.name}: {len(rows)} new rows -> {run.run_dir / self.name}.csv" if rows else ""

    def lines_report(self, run: Run, new: dict[str, list[dict]], title: str, line, plot=None) -> str:
        """`plot(rows, path)` drawn from every row on disk (to <name>.png), and `title` with one `line(row)` per
        new row; empty when this run added none."""
        if plot is not None and (on_disk := read_rows(run.run_dir, self.name)):
            plot(on_disk, run.run_dir / f"{self.name}.png")
        rows = new.get(self.name, [])
        return "\n".join([title] + [line(r) for r in rows]) if rows else ""


def build_probes(eval_cfg: dict) -> list[Probe]:
    """The probes of eval.probes, instantiated (each validates its parameters); a bad entry is one ConfigError."""
    probes = []
    for name, pcfg in (eval_cfg.get("probes") or {}).items():
        if pcfg is None:
            continue
        if not isinstance(pcfg, Mapping) or "_target_" not in pcfg:
            raise ConfigError(f"eval.probes.{name} must have a _target_ (a Probe class) or be null")
        try:
            probe = instantiate_node(pcfg, f"eval.probes.{name}", _convert_="all")
        except ConfigError as e:  # the probe's own message, or Hydra's for a key the probe does not take
            msg = str(e)
            raise ConfigError(msg if msg.startswith("eval.probes.") else f"eval.probes.{name}: {msg}") from None
        if not isinstance(probe, Probe):
            raise ConfigError(f"eval.probes.{name}: {pcfg['_target_']} is not a lenx.scoring.Probe")
        probe.name = name
        probes.append(probe)
    return probes


def probes_for(probes: list[Probe], *, task, what: str) -> list[Probe]:
    """The probes that apply to a model trained on a task (`task`, a lenx.tasks.Task: task probes only, each
    checked against the task; it has no corpus) or on a corpus (`task` None: probes that read one), `what` naming
    the model in messages. A probe that does not apply but was asked for with `run: true` is refused (before any
    work); the others are named in one log line, never dropped silently."""
    keep = [p for p in probes if bool(getattr(p, "task_probe", False)) == (task is not None)]
    for p in keep:
        if task is not None and hasattr(p, "check_task"):
            p.check_task(task)
    skipped = [p for p in probes if p not in keep]
    for p in skipped:
        if getattr(p, "when", None) is True:
            raise ConfigError(f"eval.probes.{p.name}.run=true, but {what} "
                              f"{'has no corpus for it to read' if task is not None else 'was not trained on a task'}: "
                              f"set eval.probes.{p.name}.run=auto (or eval.probes.{p.name}=null)")
    # run: auto / false mean "only where it applies": skipping them is what was asked
    if named := [p.name for p in skipped if getattr(p, "when", None) not in ("auto", False)]:
        log.info("lenx: %s: probes %s do not apply (%s) and are not run", what, ", ".join(named),
                 "they read a corpus" if task is not None else "they score tasks")
    return keep


def check_attention(value, key: str) -> str:
    """`attention` (lenx.attention.ATTENTION): sdpa (the plan's fastest exact path), flex (FlexAttention for
    biases of the distance) or reference (the float-mask paths the fast ones replaced)."""
    if value not in ATTENTION:
        raise ConfigError(f"{key} must be sdpa, flex or reference, got {value!r}")
    return value


def check_multipliers(multipliers, key: str = "eval.multipliers") -> None:
    """A non-empty list of positive integers; one error naming `key` (the config key the list came from)."""
    if not isinstance(multipliers, (list, tuple)):
        raise ConfigError(f"{key} must be a list of positive integers, e.g. [1,2,4], got {multipliers!r}")
    bad = [m for m in multipliers if not isinstance(m, int) or isinstance(m, bool) or m <= 0]
    if bad or not multipliers:
        raise ConfigError(f"{key} must be positive integers, got {list(multipliers)}")


def check_eval(eval_cfg: dict, n_tokens: int | None, train_len: int) -> list[Probe]:
    """Refuse, before any training or scoring, eval settings that cannot work (on a split of n_tokens, when
    given): the settings every probe reads here, then each probe's own (`Probe.check`); returns the probes."""
    if eval_cfg.get("split") not in data.SPLITS:
        raise ConfigError(f"eval.split must be one of {list(data.SPLITS)}, got {eval_cfg.get('split')!r}")
    check_multipliers(eval_cfg.get("multipliers"))
    eval_autocast(str(eval_cfg.get("precision", "32")), torch.device("cpu"))  # validates the value
    resolve_device(eval_cfg.get("device", "auto"))  # a device this machine has
    check_attention(eval_cfg.get("attention", "sdpa"), "eval.attention")
    if eval_cfg.get("positions", "contiguous") not in ("contiguous", "train"):
        raise ConfigError(f"eval.positions must be contiguous or train, got {eval_cfg.get('positions')!r}")
    check_int(eval_cfg["tokens"], "eval.tokens")
    check_int(eval_cfg["batch_tokens"], "eval.batch_tokens")
    if not isinstance(eval_cfg.get("new_corpus", False), bool):
        raise ConfigError(f"eval.new_corpus must be true or false, got {eval_cfg['new_corpus']!r}")
    if eval_cfg.get("every_n_steps") is not None:  # scoring during training (lenx.during)
        check_int(eval_cfg["every_n_steps"], "eval.every_n_steps")
        during = eval_cfg.get("during") or {}
        check_multipliers(during.get("multipliers") or [], "eval.during.multipliers")
        check_int(during.get("tokens"), "eval.during.tokens")
    probes = build_probes(eval_cfg)
    for probe in probes:
        probe.check(eval_cfg, n_tokens, train_len)
    return probes


def eval_strides(eval_cfg: dict) -> list:
    """The stride of each requested mode: nonoverlapping -> None (= eval_len), sliding -> eval.stride."""
    modes = eval_cfg.get("mode", "nonoverlapping")
    modes = [modes] if isinstance(modes, str) else list(modes)
    unknown = sorted(set(modes) - {"nonoverlapping", "sliding"})
    if unknown:
        raise ConfigError(f"unknown eval.mode {unknown}; expected nonoverlapping and/or sliding")
    return [None if m == "nonoverlapping" else eval_cfg["stride"] for m in modes]


def score(model: torch.nn.Module, run: Run, probes: list[Probe]) -> dict[str, list[dict]]:
    """Run every probe on `model`, stamping and writing each row as it comes (rank zero writes; under DDP every
    rank runs the probes, which share their work through all-reduces). Returns the new rows by table."""
    new: dict[str, list[dict]] = {}
    marks = stamp(run.cfg, run_dir=run.run_dir, ckpt=run.ckpt, split=run.eval["split"], choices=run.choices)
    model = model.to(run.device)
    if hasattr(model, "attention"):  # a lenx Decoder: eval.attention (sdpa, or flex for distance biases)
        model.attention = run.eval.get("attention", "sdpa")
    for probe in probes:
        pending: list[tuple[str, dict]] = []
        for row in probe.run(model, run):
            table = row.pop(TABLE, probe.name)
            row = {**row, **marks}
            new.setdefault(table, []).append(row)
            pending.append((table, row))
            if table == probe.name:
                flush(run, probe, pending)
                pending = []
        flush(run, probe, pending)
    return new


def flush(run: Run, probe: Probe, pending: list[tuple[str, dict]]) -> None:
    """Write pending rows table by table, the probe's own table last."""
    if not is_main() or not pending:
        return
    tables = sorted({t for t, _ in pending}, key=lambda t: t == probe.name)
    for t in tables:
        append_rows(run.run_dir, [r for tt, r in pending if tt == t], t,
                    probe.columns.get(t) or provenance_columns())


def report(run: Run, probes: list[Probe], new: dict[str, list[dict]]) -> None:
    """Each probe's printed summary and figures (from every row on disk), on rank zero."""
    if not is_main():
        return
    for probe in probes:
        text = probe.report(run, new)
        if text:
            print("\n" + text)
