"""The rows a sweep's tables are made of, read and kept apart, and the tables written: for scripts/aggregate.py,
task_tables.py, curves.py and compare.py. Reading: every <name>.jsonl under a directory, each row checked against
what the tables need (`NEEDS`: a damaged line is one error naming its file and line); rows of different training
checkpoints refused unless one is picked; runs of different models (`split_models`: preset and shape) or trained
differently (`split_configs`: their run configs) named apart so that they are never averaged as seeds of one; a
run counted once per cell and token sets never mixed (`separate`). Writing: CSV and PNG files replaced atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path

import yaml

from lenx.errors import LenxError
from lenx.results import (
    atomic_write_bytes,
    atomic_write_text,
    extension_label,
    mode_label,
    model_shape,
    scheme_label,
)

# two-sided 95% Student t quantiles for n - 1 degrees of freedom (n seeds); large n -> 1.96
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


NUMBER, TEXT = (int, float), str


# What the summaries read from each table's rows without a default (other keys are read with .get): a row without
# one, or with a value of another type, is refused with its file and line instead of failing deep inside.
NEEDS = {
    "extrapolation": {"pos": TEXT, "mode": TEXT, "train_len": NUMBER, "eval_len": NUMBER, "ppl": NUMBER,
                      "status": TEXT},
    "position_loss": {"pos": TEXT, "mode": TEXT, "train_len": NUMBER, "eval_len": NUMBER,
                      "position_bin_start": NUMBER, "position_bin_end": NUMBER, "mean_nll": NUMBER},
    "tasks": {"task": TEXT, "pos": TEXT, "train_size": NUMBER, "size": NUMBER, "multiplier": NUMBER,
              "accuracy": NUMBER, "token_accuracy": NUMBER, "status": TEXT},
}


FIX_LINE = "repair or delete that line (or move the file out of the tree), then rerun"


def read_text(path: Path, fix: str) -> str:
    """A file's text; one that cannot be read or is not UTF-8 is a LenxError naming it and saying `fix`."""
    try:
        return Path(path).read_text()
    except UnicodeDecodeError as e:
        raise LenxError(f"{path}: not UTF-8 text (byte {e.start}), the file is damaged; {fix}") from None
    except OSError as e:
        raise LenxError(f"{path}: cannot read it ({e.strerror or e}); {fix}") from None


def read_jsonl(path: Path, needs: dict[str, type | tuple]) -> list[dict]:
    """The rows of one .jsonl file, each a JSON object holding the keys of `needs` with values of their types (NaN
    is a number); a cut or damaged line is one LenxError naming the file and line."""
    rows = []
    for n, line in enumerate(read_text(path, "repair it or move it out of the tree, then rerun").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as e:
            why = f"{e.msg}, column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
            raise LenxError(f"{path} line {n}: not valid JSON ({why}), a cut or damaged line; {FIX_LINE}") from None
        if not isinstance(row, dict):
            raise LenxError(f"{path} line {n}: a JSON {type(row).__name__}, not a result row (an object); {FIX_LINE}")
        missing = [k for k in needs if k not in row]
        if missing:
            raise LenxError(f"{path} line {n}: the row has no {', '.join(missing)} (which lenx writes in every "
                            f"{table_of(path)} row); {FIX_LINE}")
        for key, kind in needs.items():
            if isinstance(row[key], bool) or not isinstance(row[key], kind):
                raise LenxError(f"{path} line {n}: {key} is {row[key]!r}, not "
                                f"{'a number' if kind is NUMBER else 'text'}; {FIX_LINE}")
        rows.append(row)
    return rows


def check_root(root: Path, what: str) -> Path:
    """`root` as given, or a LenxError when there is nothing there."""
    if not Path(root).exists():
        raise LenxError(f"{root} does not exist: name {what}")
    return Path(root)


def table_of(path: Path) -> str:
    """Which table a .jsonl file holds: its stem where that names one, else extrapolation (a file of rescored rows)."""
    return path.stem if path.stem in NEEDS else "extrapolation"


def read_results(root: Path, name: str = "extrapolation", needs: dict | None = None) -> list[dict]:
    """Every row of the <name>.jsonl files under `root` (or of `root` itself, a .jsonl file of that table), in path
    order, each checked against `needs` (default: NEEDS[name]): the reader of aggregate.py, curves.py, compare.py."""
    root = check_root(root, "a sweep or run directory, or a .jsonl file of results")
    if root.is_file():
        files = [root] if table_of(root) == name else []
    else:
        files = sorted(p for p in root.rglob(f"{name}.jsonl") if p.is_file())
    needs = NEEDS.get(name, {}) if needs is None else needs
    return [r for f in files for r in read_jsonl(f, needs)]


def collect(root: Path, name: str = "extrapolation") -> list[dict]:
    """read_results, each row with `_dir`: the directory its file was read from (where its run_config.yaml is
    when the run directory has moved since it was written: the row's ckpt and run_dir name the old place)."""
    root = check_root(root, "a sweep or run directory, or a .jsonl file of results")
    files = [root] if root.is_file() else sorted(p for p in root.rglob(f"{name}.jsonl") if p.is_file())
    return [{**r, "_dir": str(f.parent)} for f in files for r in read_results(f, name)]


LENX_CKPT = re.compile(r"(last|step\d+)\.ckpt")  # the checkpoints train.py writes: last, and ckpt_keep_every's


def checkpoint_name(r: dict) -> str:
    """The file name of the checkpoint a row was scored from (last.ckpt, step200.ckpt); "" where it does not say."""
    return Path(str(r.get("ckpt") or "")).name


def one_checkpoint(rows: list[dict], want: str | None, root: Path, table: str) -> list[dict]:
    """The rows of one point of training. With `want` (--ckpt), those scored from a checkpoint file of that name
    (or stem); without, rows from several of train.py's checkpoints (last.ckpt and step200.ckpt of a run: two
    training steps, two models) are refused, never merged as re-scorings of one model or averaged as seeds."""
    if want:
        return [r for r in rows if checkpoint_name(r) in (want, f"{want}.ckpt")]
    names = sorted({n for n in map(checkpoint_name, rows) if LENX_CKPT.fullmatch(n)})
    if len(names) > 1:
        raise LenxError(f"{root}: the {table} rows were scored from {len(names)} different checkpoints "
                        f"({', '.join(names)}): different training steps are different models, never averaged; "
                        f"pass --ckpt {names[0]} (or another of them) to summarise one of them")
    return rows


def curve(r: dict) -> tuple:
    """What one line of the table / figure is: scheme, scaling, mode, training length and, where one curve's rows
    were scored on different token sets, which set (`tokens_set`, a targets_hash prefix)."""
    return scheme_label(r), extension_label(r), mode_label(r), r["train_len"], r.get("tokens_set", "")


def split_models(rows: list[dict], cache: dict | None = None) -> list[dict]:
    """Where a table's rows come from more than one model (preset or shape: `model`, `model_shape`), each row's
    scheme is named with its model (rope [tiny d128-L4-H4]), so that two sizes are never averaged as seeds of one;
    rows of a single model are returned as they are. A row written before rows carried `model_shape` takes it from
    its run's run_config.yaml where that is at hand (so that it is not taken for another model). `cache`: run
    directory -> its training settings (trained_config's), shared with split_configs so each file is read once."""
    cache = {} if cache is None else cache

    def shape(r: dict) -> str:
        if r.get("model_shape"):
            return r["model_shape"]
        conf = trained_config(r, cache) or {}
        return model_shape({k.split(".", 1)[1]: v for k, v in conf.items() if k.startswith("model.")})

    rows = [{**r, "model_shape": shape(r)} for r in rows]
    models = {(r.get("model", ""), r["model_shape"]) for r in rows}
    if len(models) < 2:
        return rows
    return [{**r, "pos": f"{r['pos']} [{' '.join(filter(None, (r.get('model', ''), r['model_shape'])))}]"}
            for r in rows]


# What trains a model (run_config.yaml): runs of one cell that differ here are different models, never seeds of one
TRAINED = ("model", "pos", "positions", "attn", "data", "optim", "batch_size", "seq_len", "init_from", "compile",
           "trainer.max_steps", "trainer.precision", "trainer.gradient_clip_val", "trainer.accumulate_grad_batches",
           "provenance.corpus_hash", "provenance.tokenizer_hash")


def flat(node, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict) and node:
        return {k: v for key, sub in node.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: str(node)}


def trained_config(r: dict, cache: dict) -> dict[str, str] | None:
    """The training settings (TRAINED, flattened) of the run a row measures, from its run_config.yaml (the training
    run's: beside the checkpoint); None where the file is missing or unreadable (a copied results file)."""
    places = [Path(r["ckpt"]).parent.parent if r.get("ckpt") else None, r.get("run_dir"), r.get("_dir")]
    run = next((Path(p) for p in places if p and (Path(p) / "run_config.yaml").is_file()), None)
    if run is None:
        return None
    if run not in cache:
        try:
            cfg = yaml.safe_load((run / "run_config.yaml").read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            cfg = None
        cache[run] = None if not isinstance(cfg, dict) else {
            k: v for k, v in flat(cfg).items() if any(k == t or k.startswith(t + ".") for t in TRAINED)}
    return cache[run]


def split_configs(rows: list[dict], cache: dict | None = None) -> list[dict]:
    """Runs that a table would average as seeds of one scheme (same task, scheme, extension, training length) but
    that were trained differently (a sweep over data.task.curriculum, pos.base, optim.lr, ...: their TRAINED
    settings differ) get the differing settings in their scheme's name (rope [optim.lr=0.001]); runs alike but for
    the seed are left as they are."""
    cache = {} if cache is None else cache
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        groups[(r.get("task"), scheme_label(r), extension_label(r), r.get("train_len"))].append(i)
    out = list(rows)
    for idxs in groups.values():
        confs = [trained_config(rows[i], cache) for i in idxs]
        known = [c for c in confs if c is not None]
        if len({tuple(sorted(c.items())) for c in known}) < 2:
            continue
        keys = sorted(k for k in {k for c in known for k in c} if len({c.get(k) for c in known}) > 1)
        for i, c in zip(idxs, confs):
            tag = ", ".join(f"{k}={c.get(k, 'unset')}" for k in keys) if c is not None else "run config unknown"
            out[i] = {**rows[i], "pos": f"{rows[i]['pos']} [{tag}]"}
    return out


def run_key(r: dict) -> tuple | None:
    """Which trained model a row measures: its run directory's name (from the checkpoint path, so a copied run
    directory or a re-scoring in another output directory is the same run), its seed and its checkpoint file (a
    run's last.ckpt and step200.ckpt are two models); None for rows that do not say (older position rows), which
    are never merged."""
    ckpt, run_dir = r.get("ckpt"), r.get("run_dir")
    if not ckpt and not run_dir:
        return None
    return (Path(ckpt).parent.parent if ckpt else Path(str(run_dir))).name, r.get("seed"), checkpoint_name(r)


def mean_ci(xs: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(xs) if xs else math.nan
    half = T95.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0
    return mean, half


def separate(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Rows ready to average, and what was done to them: a curve scored on several token sets (targets_hash) is
    split into one curve per set (numbers measured on different tokens are never averaged together), and a run
    that appears more than once in a cell (same run and seed: a copied directory, a re-scoring) counts once."""
    notes, out, seen = [], [], {}
    hashes: dict[tuple, set] = defaultdict(set)
    for r in rows:
        hashes[curve(r)].add(r.get("targets_hash", ""))
    for key, hs in hashes.items():
        if len(hs) > 1:
            notes.append(f"{'/'.join(map(str, key[:4]))}: scored on {len(hs)} different token sets (targets_hash "
                         f"{', '.join(sorted(h[:8] for h in hs))}); reported as separate curves, never averaged")
    dupes = 0
    for r in rows:
        h = r.get("targets_hash", "")
        r = {**r, "tokens_set": h[:8] if len(hashes[curve(r)]) > 1 else ""}
        cell = (*curve(r), r["eval_len"], run_key(r))
        if cell[-1] is not None and cell in seen:
            dupes += 1
            continue
        seen[cell] = r
        out.append(r)
    if dupes:
        notes.append(f"{dupes} rows repeat a run already counted in their cell (same run directory name and seed: "
                     "a copied run directory or a re-scoring); each run counts once")
    return out, notes


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(plt, fig, path: Path, dpi: int) -> None:
    """The figure as a PNG at `path`, replaced atomically (a full disk leaves the previous file whole)."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write_csv(path: Path, rows: list[dict]) -> None:
    """rows as CSV at `path`, replaced atomically."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def out_dir(path: Path) -> Path:
    """--out as a directory to write into: created, or one that exists (its other files stay); a file there, or
    under a file, is a LenxError."""
    what = "name a directory to write the summary files into (it may exist already)"
    if path.exists() and not path.is_dir():
        raise LenxError(f"--out {path} is a file, not a directory: {what}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise LenxError(f"--out {path}: part of that path is a file, not a directory: {what}") from None
    return path
