"""The task tables of a sweep (tasks.jsonl rows; scripts/aggregate.py writes them): per task, scheme, scaling,
decoding, protocol and multiplier (or size set, averaged per run first), exact match and per-token accuracy, each
with its mean over seeds, 95% Student t interval and maximum over seeds (`summarise_tasks`, `tasks_markdown`,
`tasks_figure`), and the pairs of schemes whose means differ by more than the sum of their half-widths
(`task_separations`).
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import defaultdict
from pathlib import Path

from tables_io import _plt, mean_ci, run_key, save_png

from lenx.results import (
    extension_label,
    scheme_label,
)
from lenx.tasks.probe import PROTOCOLS, sizes_of_label


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
