"""Aggregate the extrapolation rows of a sweep: `python scripts/aggregate.py <sweep dir> [--out DIR] [--ckpt NAME]`.

Collects every extrapolation.jsonl under the directory and writes one table, (scheme, scaling, mode, training
length) x eval length, with the mean over seeds and a 95% confidence interval (Student t), as Markdown and CSV,
plus a figure of ppl against eval length (log2 x axis) with one line per scheme and a band for the interval.
Every position_loss.jsonl is averaged over seeds the same way (positions.csv, and positions.png: loss per
position at each curve's longest eval length), and provenance.json lists the git SHAs, corpus and tokenizer
hashes and run directories the rows came from.

Task runs (data=copy, ...; tasks.jsonl) give tasks_summary.{md,csv,png}: per task, scheme, scaling, decoding,
protocol and multiplier (or size set, e.g. 21..40, averaged per run first), exact match and per-token accuracy,
each with its mean over seeds, 95% Student t interval (one value per run: each run's own row carries a Wilson
interval over instances) and maximum over seeds, and the runs counted.

Rows scored from different checkpoints of training (last.ckpt, step200.ckpt: different models) are never merged:
such a tree is refused unless `--ckpt NAME` picks one. A damaged input (a cut .jsonl line, a row missing what the
tables need) or an --out that cannot be written is one `lenx: error:` line naming the file (exit status 2); every
output file is replaced atomically, so files written before a failure stay whole.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path

import yaml

from lenx.errors import LenxError, user_errors
from lenx.results import atomic_write_bytes, atomic_write_text, extension_label, mode_label, model_shape, scheme_label
from lenx.tasks.probe import PROTOCOLS, sizes_of_label

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


def split_models(rows: list[dict]) -> list[dict]:
    """Where a table's rows come from more than one model (preset or shape: `model`, `model_shape`), each row's
    scheme is named with its model (rope [tiny d128-L4-H4]), so that two sizes are never averaged as seeds of one;
    rows of a single model are returned as they are. A row written before rows carried `model_shape` takes it from
    its run's run_config.yaml where that is at hand (so that it is not taken for another model)."""
    cache: dict = {}

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


def split_configs(rows: list[dict]) -> list[dict]:
    """Runs that a table would average as seeds of one scheme (same task, scheme, extension, training length) but
    that were trained differently (a sweep over data.task.curriculum, pos.base, optim.lr, ...: their TRAINED
    settings differ) get the differing settings in their scheme's name (rope [optim.lr=0.001]); runs alike but for
    the seed are left as they are."""
    cache: dict = {}
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


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and 95% CI of ppl over seeds per (pos, scaling, mode, train_len, token set, eval_len); failures
    counted. Rows go through `separate` first."""
    rows, _ = separate(rows)
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(*curve(r), r["eval_len"])].append(r)
    out = []
    for (pos, scaling, mode, train_len, tokens_set, eval_len), rs in sorted(groups.items()):
        ok = [r["ppl"] for r in rs if r["status"] == "ok" and math.isfinite(r["ppl"])]
        mean, half = mean_ci(ok)
        out.append({"pos": pos, "scaling": scaling, "mode": mode, "train_len": train_len, "eval_len": eval_len,
                    "multiplier": eval_len / train_len, "ppl_mean": mean, "ppl_ci95": half, "runs": len(rs),
                    "ok_runs": len(ok), "status": "ok" if ok else rs[0]["status"], "tokens_set": tokens_set,
                    "targets_hash": ",".join(sorted({str(r.get("targets_hash", "")) for r in rs}))})
    return out


def summarise_positions(rows: list[dict]) -> list[dict]:
    """Mean (95% CI) over seeds of the per-position NLL, per curve, eval length and position bin (rows stamped
    with their run and token set go through `separate`, per bin)."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in separate_bins(rows):
        groups[(*curve(r), r["eval_len"], r["position_bin_start"], r["position_bin_end"])].append(r["mean_nll"])
    out = []
    for (pos, scaling, mode, train_len, tokens_set, eval_len, a, b), xs in sorted(groups.items()):
        mean, half = mean_ci(xs)
        out.append({"pos": pos, "scaling": scaling, "mode": mode, "train_len": train_len, "eval_len": eval_len,
                    "position_bin_start": a, "position_bin_end": b, "mean_nll": mean, "nll_ci95": half,
                    "runs": len(xs), "tokens_set": tokens_set})
    return out


def separate_bins(rows: list[dict]) -> list[dict]:
    """`separate` applied to each position bin on its own (a run has one row per bin and length)."""
    by_bin: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        by_bin[(r["position_bin_start"], r["position_bin_end"])].append(r)
    return [r for rs in by_bin.values() for r in separate(rs)[0]]


def markdown(summary: list[dict]) -> str:
    lengths = sorted({s["eval_len"] for s in summary})
    keys = list(dict.fromkeys(curve(s) for s in summary))
    lines = ["| pos | scaling | mode | train_len | " + " | ".join(str(L) for L in lengths) + " |",
             "|---|---|---|---|" + "---|" * len(lengths)]
    # a curve split by token set shows the set after its mode
    for key in keys:
        cells = []
        for L in lengths:
            s = next((s for s in summary if curve(s) == key and s["eval_len"] == L), None)
            if s is None:
                cells.append("")
            elif s["ok_runs"] == 0:
                cells.append(s["status"].replace("_", " "))
            else:
                cells.append(f"{s['ppl_mean']:.2f}" + (f" ± {s['ppl_ci95']:.2f}" if s["ok_runs"] > 1 else ""))
        mode = key[2] + (f" (tokens {key[4]})" if key[4] else "")
        lines.append(f"| {key[0]} | {key[1]} | {mode} | {key[3]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def label(key: tuple, several_lengths: bool) -> str:
    pos, scaling, mode, train_len, tokens_set = key
    out = pos if scaling == "none" else f"{pos}+{scaling}"
    out += f" L={train_len}" if several_lengths else ""
    out += f" tokens {tokens_set}" if tokens_set else ""
    return out if mode == "nonoverlapping" else f"{out} ({mode})"


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


def figure(summary: list[dict], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    several = len({s["train_len"] for s in summary}) > 1
    schemes = list(dict.fromkeys((k[0], k[1], k[3]) for k in map(curve, summary)))  # one colour per scheme
    colours = plt.get_cmap("tab10" if len(schemes) <= 10 else "tab20")
    for key in dict.fromkeys(curve(s) for s in summary):
        pts = sorted((s["eval_len"], s["ppl_mean"], s["ppl_ci95"]) for s in summary
                     if curve(s) == key and s["ok_runs"])
        if not pts:
            continue
        x, y, h = zip(*pts)
        colour = colours(schemes.index((key[0], key[1], key[3])))
        ax.plot(x, y, marker="o", ms=4, label=label(key, several), color=colour,
                ls="-" if key[2] == "nonoverlapping" else "--")  # modes: solid / dashed
        ax.fill_between(x, [a - b for a, b in zip(y, h)], [a + b for a, b in zip(y, h)], alpha=0.07, color=colour)
    for L in sorted({s["train_len"] for s in summary}):
        ax.axvline(L, color="grey", lw=0.8, ls=":")
    ax.set(xscale="log", yscale="log", xlabel="evaluation length (tokens)", ylabel="perplexity (mean, 95% CI)")
    ax.set_xscale("log", base=2)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    save_png(plt, fig, path, 130)


def position_figure(positions: list[dict], path: Path) -> None:
    """One panel per mode: mean NLL against position (bin start, log2 axis) at each curve's longest eval length."""
    plt = _plt()
    modes = sorted({p["mode"] for p in positions}, key=lambda m: m != "nonoverlapping")
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4.5), squeeze=False)
    several = len({p["train_len"] for p in positions}) > 1
    schemes = list(dict.fromkeys((k[0], k[1], k[3]) for k in map(curve, positions)))  # one colour per scheme
    colours = plt.get_cmap("tab10" if len(schemes) <= 10 else "tab20")
    for ax, mode in zip(axes[0], modes):
        for key in dict.fromkeys(curve(p) for p in positions if p["mode"] == mode):
            longest = max(p["eval_len"] for p in positions if curve(p) == key)
            pts = sorted((max(p["position_bin_start"], 0.5), p["mean_nll"]) for p in positions
                         if curve(p) == key and p["eval_len"] == longest)
            colour = colours(schemes.index((key[0], key[1], key[3])))
            ax.plot(*zip(*pts), marker=".", color=colour, label=f"{label(key, several)} T={longest}")
        for L in sorted({p["train_len"] for p in positions}):
            ax.axvline(L, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log", base=2)
        ax.set(xlabel="position inside the window (bin start; 0 drawn at 0.5)", ylabel="mean NLL (nats)",
               title=f"loss per position, {mode} (dotted: training length)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    save_png(plt, fig, path, 130)


def provenance(rows: list[dict]) -> dict:
    def distinct(k):
        return sorted({str(r.get(k, "")) for r in rows})

    return {"git_sha": distinct("git_sha"), "dirty": distinct("dirty"), "corpus": distinct("corpus"),
            "corpus_hash": distinct("corpus_hash"), "tokenizer_hash": distinct("tokenizer_hash"),
            "model": distinct("model"), "runs": len({r.get("run_dir") for r in rows}), "rows": len(rows)}


def _task_cell(r: dict) -> tuple:
    """What one cell of a task table averages over seeds: task, scheme, scaling, decoding (naming evaluation
    positions other than 0..T-1: teacher@randomized), protocol, training size, and the multiplier or size."""
    decode = r.get("decode", "teacher")
    if r.get("eval_positions", "contiguous") != "contiguous":
        decode = f"{decode}@{r['eval_positions']}"
    return (r["task"], scheme_label(r), extension_label(r), decode, r.get("protocol") or "", r["train_size"],
            r.get("size_set") or "", r["size"] if r.get("size_set") else r["multiplier"])


def set_rows(by_run: dict[tuple, dict]) -> list[dict]:
    """Per run, the mean over a size set of exact match and per-token accuracy (one row, size = the set's label):
    Kazemnejad et al.'s test accuracy (the same count per size) and Ruoss et al.'s score (each length's per-token
    accuracy, averaged over lengths). A run missing a size, or with one not ok, gets no mean (its status says why)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for (cell, run), r in by_run.items():
        if cell[6]:
            groups[(cell[:7], run)].append(r)
    out = []
    for (cell, run), rs in groups.items():
        want = sizes_of_label(cell[6])
        ok = [r for r in rs if r["status"] == "ok" and math.isfinite(r["accuracy"])]
        row = {**rs[0], "size": cell[6], "multiplier": cell[6], "size_set": cell[6],
               "mean_tokens": statistics.fmean(r.get("mean_tokens", math.nan) for r in rs)}
        if sorted(r["size"] for r in ok) == want:
            row.update(accuracy=statistics.fmean(r["accuracy"] for r in ok),
                       token_accuracy=statistics.fmean(r["token_accuracy"] for r in ok), status="ok")
        else:
            bad = [r for r in rs if r not in ok]
            row.update(accuracy=math.nan, token_accuracy=math.nan,
                       status=bad[0]["status"] if bad else f"incomplete ({len(ok)} of {len(want)} sizes)")
        out.append(((*cell, cell[6]), run, row))
    return out


def seed_stats(xs: list[float]) -> tuple[float, float, float]:
    """Mean, 95% Student t half-width (NaN for one run: no interval over seeds) and maximum over runs: Delétang et
    al. 2023 (arXiv:2207.02098) and Ruoss et al. 2023 (arXiv:2305.16843) report the best of their seeds."""
    mean, half = mean_ci(xs)
    return mean, half if len(xs) > 1 else math.nan, max(xs) if xs else math.nan


def summarise_tasks(rows: list[dict]) -> list[dict]:
    """Per (task, pos, scaling, decode, protocol, train_size, multiplier or size): exact match and per-token
    accuracy, each as mean, 95% t interval and maximum over seeds; decode names evaluation positions other than
    0..T-1 (teacher@randomized). A run counts once per cell (the latest of its rows); rows without a result
    (too_large, out_of_range) are counted but not averaged. Rows of a size set (size_set, e.g. 21..40) give a
    row per size and one for the set (`multiplier` = `size` = the set's label), whose per-run value is the run's
    mean over the set's sizes (set_rows) before any statistic over seeds."""
    cells: dict[tuple, dict] = defaultdict(dict)
    by_run: dict[tuple, dict] = {}
    for r in rows:
        cell, run = _task_cell(r), run_key(r) or id(r)
        cells[cell][run] = by_run[(cell, run)] = r
    for cell, run, r in set_rows(by_run):
        cells[cell][run] = r
    out = []
    for (task, pos, scaling, decode, protocol, train_size, size_set, _), by in sorted(cells.items(),
                                                                                      key=lambda kv: str(kv[0])):
        rs = list(by.values())
        ok = [r for r in rs if r["status"] == "ok" and math.isfinite(r["accuracy"])]
        acc, acc_half, acc_max = seed_stats([r["accuracy"] for r in ok])
        tok, tok_half, tok_max = seed_stats([r["token_accuracy"] for r in ok])
        out.append({"task": task, "pos": pos, "scaling": scaling, "decode": decode, "protocol": protocol,
                    "train_size": train_size, "multiplier": rs[0]["multiplier"], "size": rs[0]["size"],
                    "size_set": size_set, "mean_tokens": statistics.fmean(
                        [r["mean_tokens"] for r in rs if isinstance(r.get("mean_tokens"), (int, float))] or [math.nan]),
                    "accuracy_mean": acc, "accuracy_ci95": acc_half, "accuracy_max": acc_max,
                    "token_accuracy_mean": tok, "token_accuracy_ci95": tok_half, "token_accuracy_max": tok_max,
                    "runs": len(rs), "ok_runs": len(ok), "status": "ok" if ok else rs[0]["status"]})
    return out


def _shown(r: dict) -> bool:
    """In the Markdown tables: multipliers and size-set means; a set's single sizes are in the CSV only."""
    return not r["size_set"] or r["multiplier"] == r["size_set"]


def _column(r: dict) -> str:
    return f"{r['multiplier']}x" if not r["size_set"] else f"sizes {r['size_set']} (mean)"


def _stat_cell(r: dict | None, metric: str) -> str:
    if r is None:
        return ""
    if not r["ok_runs"]:
        return r["status"].replace("_", " ")
    mean, half, best = r[f"{metric}_mean"], r[f"{metric}_ci95"], r[f"{metric}_max"]
    if r["ok_runs"] == 1:
        return f"{mean:.2f} (1)"
    return f"{mean:.2f} ± {half:.2f}, max {best:.2f} ({r['ok_runs']})"


TASK_METRICS = {"accuracy": "exact match", "token_accuracy": "per-token accuracy"}


def tasks_markdown(summary: list[dict]) -> str:
    """Per task, two tables (exact match, per-token accuracy): rows (pos, scaling, decode, protocol), columns the
    multipliers then each size set's mean, cells `mean ± 95% t half-width, max over seeds (runs)`."""
    lines = []
    for task in dict.fromkeys(r["task"] for r in summary):
        rs = [r for r in summary if r["task"] == task and _shown(r)]
        cols = list(dict.fromkeys([_column(r) for r in sorted((r for r in rs if not r["size_set"]),
                                                              key=lambda r: r["multiplier"])]
                                  + [_column(r) for r in rs if r["size_set"]]))
        keys = list(dict.fromkeys((r["pos"], r["scaling"], r["decode"], r["protocol"], r["train_size"]) for r in rs))
        sizes = sorted({r["train_size"] for r in rs})
        for metric, name in TASK_METRICS.items():
            lines += [f"### {task}: {name} (mean ± 95% t interval over seeds, max over seeds, runs; train size "
                      f"{', '.join(map(str, sizes))})", "",
                      "| pos | scaling | decode | protocol | " + " | ".join(cols) + " |",
                      "|---|---|---|---|" + "---|" * len(cols)]
            for key in keys:
                by_col = {_column(r): r for r in rs if (r["pos"], r["scaling"], r["decode"], r["protocol"],
                                                         r["train_size"]) == key}
                cells = [_stat_cell(by_col.get(c), metric) for c in cols]
                proto = key[3] or "–"
                if key[3]:
                    proto += f" (N={key[4]}; paper: {TASK_METRICS[PROTOCOLS[key[3]]]})"
                lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {proto} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def task_separations(summary: list[dict]) -> list[dict]:
    """Every pair of schemes (rows of one task, decode and protocol) whose seed means differ by more than the sum
    of their 95% half-widths, per metric and multiplier beyond 1x: the criterion by which a task separates two
    schemes (issue 36). Cells need an interval (two or more runs); the gap is better's mean minus worse's."""
    out = []
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in summary:
        if not r["size_set"] and r["multiplier"] != 1 and r["ok_runs"] > 1:
            cells[(r["task"], r["decode"], r["protocol"], r["train_size"], r["multiplier"])].append(r)
    for (task, decode, protocol, train_size, mult), rs in cells.items():
        for metric, name in TASK_METRICS.items():
            for a, b in itertools.combinations(rs, 2):
                hi, lo = (a, b) if a[f"{metric}_mean"] >= b[f"{metric}_mean"] else (b, a)
                gap, halves = hi[f"{metric}_mean"] - lo[f"{metric}_mean"], hi[f"{metric}_ci95"] + lo[f"{metric}_ci95"]
                if gap > halves:
                    out.append({"task": task, "decode": decode, "protocol": protocol, "train_size": train_size,
                                "multiplier": mult, "metric": name, "better": label_of(hi), "worse": label_of(lo),
                                "better_mean": hi[f"{metric}_mean"], "worse_mean": lo[f"{metric}_mean"], "gap": gap,
                                "half_widths": halves})
    return sorted(out, key=lambda r: (r["task"], r["metric"], r["multiplier"], -(r["gap"] - r["half_widths"])))


def label_of(r: dict) -> str:
    return r["pos"] if r["scaling"] == "none" else f"{r['pos']} ({r['scaling']})"


def separations_markdown(seps: list[dict], summary: list[dict]) -> str:
    """Per task, metric and multiplier: how many pairs of schemes are apart beyond their intervals, and the
    widest (by gap less the half-widths); first, how many tasks separate any pair at 2x or 4x."""
    tasks = list(dict.fromkeys(r["task"] for r in summary))
    at = {r["task"] for r in seps if r["multiplier"] in (2, 4)}
    lines = ["# Separations: pairs of schemes apart by more than the sum of their 95% half-widths over seeds", "",
             f"Tasks with a separation at 2x or 4x (exact match or per-token accuracy): **{len(at)} of {len(tasks)}**"
             + (f" ({', '.join(t for t in tasks if t in at)})" if at else ""), "",
             "| task | metric | multiplier | pairs apart | widest (better > worse: means, gap - half-widths) |",
             "|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in seps:
        groups[(r["task"], r["metric"], r["multiplier"])].append(r)
    for (task, metric, mult), rs in groups.items():
        top = "; ".join(f"{r['better']} > {r['worse']} ({r['better_mean']:.2f} vs {r['worse_mean']:.2f}, "
                        f"+{r['gap'] - r['half_widths']:.2f})" for r in rs[:3])
        lines.append(f"| {task} | {metric} | {mult}x | {len(rs)} | {top} |")
    return "\n".join(lines) + "\n"


def tasks_figure(summary: list[dict], path: Path) -> None:
    """Exact match against the size multiplier, one panel per task, one line (with its interval) per scheme
    (a size set's mean is a table column, not a point)."""
    plt = _plt()
    summary = [r for r in summary if not isinstance(r["multiplier"], str)]
    names = list(dict.fromkeys(r["task"] for r in summary))
    if not names:
        return
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, task in zip(axes[0], names):
        rs = [r for r in summary if r["task"] == task]
        for key in dict.fromkeys((r["pos"], r["scaling"], r["decode"], r["protocol"]) for r in rs):
            pts = sorted((r["multiplier"], r["accuracy_mean"], r["accuracy_ci95"]) for r in rs
                         if (r["pos"], r["scaling"], r["decode"], r["protocol"]) == key)
            xs, ys, hs = zip(*pts)
            line, = ax.plot(xs, ys, marker="o", label=" ".join([key[0]] + [k for k in key[1:]
                                                                            if k not in ("none", "teacher", "")]))
            hs = [0.0 if math.isnan(h) else h for h in hs]
            ax.fill_between(xs, [y - h for y, h in zip(ys, hs)], [y + h for y, h in zip(ys, hs)],
                            color=line.get_color(), alpha=0.15, lw=0)
        ax.set_xscale("log", base=2)
        ax.set(title=task, xlabel="size / training size", ylabel="exact match", ylim=(-0.05, 1.05))
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    save_png(plt, fig, path, 120)


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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="a sweep directory (multirun/...) or any folder of run directories")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: the root itself)")
    p.add_argument("--ckpt", default=None, metavar="NAME",
                   help="only rows scored from checkpoint files of this name (last.ckpt, step200.ckpt); a tree "
                        "holding rows of several of a run's checkpoints is refused without it")
    args = p.parse_args(argv)
    with user_errors():
        aggregate(args.root, args.out, args.ckpt)


def aggregate(root: Path, out: Path | None, ckpt: str | None) -> None:
    root = check_root(root, "a sweep directory (multirun/...), a run directory or an extrapolation.jsonl")
    tables = {name: split_configs(split_models(one_checkpoint(collect(root, name), ckpt, root, name)))
              for name in NEEDS}
    rows, task_rows = tables["extrapolation"], tables["tasks"]
    if not rows and not task_rows:
        picked = f" scored from a checkpoint named {ckpt}" if ckpt else ""
        raise LenxError(f"no extrapolation.jsonl or tasks.jsonl rows{picked} under {root}: name a sweep directory "
                        "(multirun/...) or a run directory that train.py or evaluate.py wrote")
    out = out_dir(out or (root if root.is_dir() else root.parent))
    if task_rows:
        tasks = summarise_tasks(task_rows)
        atomic_write_text(out / "tasks_summary.md", tasks_markdown(tasks))
        write_csv(out / "tasks_summary.csv", tasks)
        tasks_figure(tasks, out / "tasks_summary.png")
        if any(r["ok_runs"] > 1 for r in tasks):  # seeds to make intervals of: which schemes they separate
            seps = task_separations(tasks)
            atomic_write_text(out / "tasks_separations.md", separations_markdown(seps, tasks))
            if seps:
                write_csv(out / "tasks_separations.csv", seps)
        print(tasks_markdown(tasks))
        print(f"{len(task_rows)} task rows -> {out}/tasks_summary.{{md,csv,png}}")
    if not rows:
        return
    for note in separate(rows)[1]:
        print(f"aggregate: note: {note}")
    summary = summarise(rows)
    atomic_write_text(out / "summary.md", markdown(summary))
    write_csv(out / "summary.csv", summary)
    figure(summary, out / "summary.png")
    positions = summarise_positions(tables["position_loss"])
    if positions:
        write_csv(out / "positions.csv", positions)
        position_figure(positions, out / "positions.png")
    atomic_write_text(out / "provenance.json", json.dumps(provenance(rows), indent=1) + "\n")
    print(markdown(summary))
    print(f"{len(rows)} rows from {len({r.get('run_dir') for r in rows})} runs -> {out}/summary.{{md,csv,png}}"
          + (", positions.{csv,png}" if positions else "") + ", provenance.json")


if __name__ == "__main__":
    main()
