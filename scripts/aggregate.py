"""Aggregate the extrapolation rows of a sweep: `python scripts/aggregate.py <sweep or results dir> [--out DIR]`.

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
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

from lenx.results import extension_label, mode_label, read_tree, scheme_label
from lenx.tasks.probe import PROTOCOLS, sizes_of_label

# two-sided 95% Student t quantiles for n - 1 degrees of freedom (n seeds); large n -> 1.96
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def collect(root: Path, name: str = "extrapolation") -> list[dict]:
    return read_tree(root, name)


def curve(r: dict) -> tuple:
    """What one line of the table / figure is: scheme, scaling, mode, training length and, where one curve's rows
    were scored on different token sets, which set (`tokens_set`, a targets_hash prefix)."""
    return scheme_label(r), extension_label(r), mode_label(r), r["train_len"], r.get("tokens_set", "")


def run_key(r: dict) -> tuple | None:
    """Which trained model a row measures: its run directory's name (from the checkpoint path, so a copied run
    directory or a re-scoring in another output directory is the same run) and its seed; None for rows that do
    not say (older position rows), which are never merged."""
    ckpt, run_dir = r.get("ckpt"), r.get("run_dir")
    if not ckpt and not run_dir:
        return None
    return (Path(ckpt).parent.parent if ckpt else Path(str(run_dir))).name, r.get("seed")


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
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


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
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


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
               "mean_tokens": statistics.fmean(r["mean_tokens"] for r in rs)}
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="a sweep directory (multirun/...) or any folder of run directories")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: the root itself)")
    args = p.parse_args(argv)
    rows, task_rows = collect(args.root), collect(args.root, "tasks")
    if not rows and not task_rows:
        raise SystemExit(f"aggregate: no extrapolation.jsonl or tasks.jsonl under {args.root}")
    out = args.out or args.root
    out.mkdir(parents=True, exist_ok=True)
    if task_rows:
        tasks = summarise_tasks(task_rows)
        (out / "tasks_summary.md").write_text(tasks_markdown(tasks))
        write_csv(out / "tasks_summary.csv", tasks)
        tasks_figure(tasks, out / "tasks_summary.png")
        print(tasks_markdown(tasks))
        print(f"{len(task_rows)} task rows -> {out}/tasks_summary.{{md,csv,png}}")
    if not rows:
        return
    for note in separate(rows)[1]:
        print(f"aggregate: note: {note}")
    summary = summarise(rows)
    (out / "summary.md").write_text(markdown(summary))
    write_csv(out / "summary.csv", summary)
    figure(summary, out / "summary.png")
    positions = summarise_positions(collect(args.root, "position_loss"))
    if positions:
        write_csv(out / "positions.csv", positions)
        position_figure(positions, out / "positions.png")
    (out / "provenance.json").write_text(json.dumps(provenance(rows), indent=1) + "\n")
    print(markdown(summary))
    print(f"{len(rows)} rows from {len({r['run_dir'] for r in rows})} runs -> {out}/summary.{{md,csv,png}}"
          + (", positions.{csv,png}" if positions else "") + ", provenance.json")


if __name__ == "__main__":
    main()
