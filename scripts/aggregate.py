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
import json
import math
from collections import defaultdict
from pathlib import Path

from tables_io import (
    NEEDS,
    _plt,
    check_root,
    collect,
    curve,
    mean_ci,
    one_checkpoint,
    out_dir,
    save_png,
    separate,
    split_configs,
    split_models,
    write_csv,
)
from task_tables import separations_markdown, summarise_tasks, task_separations, tasks_figure, tasks_markdown

from lenx.errors import LenxError, user_errors
from lenx.results import (
    atomic_write_text,
)


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
    configs: dict = {}  # each run's training settings, read once for both splits
    tables = {name: split_configs(split_models(one_checkpoint(collect(root, name), ckpt, root, name), configs),
                                  configs) for name in NEEDS}
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
