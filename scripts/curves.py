"""Curves while training, over seeds: `python scripts/curves.py <sweep dir> [--out DIR] [--ratio 16/1]`.

Reads what `eval.every_n_steps` logged in each run's logs/metrics.csv (`extrap/ppl_<m>x` for language models,
`task/acc_<m>x` for task runs) and writes, per scheme (as aggregate.py names it: pos+mode, scaling),
the mean over seeds with a 95% Student t interval at every scored step:
- curves.csv: label, metric, step, tokens (training tokens seen: (step + 1) x batch_size x seq_len; empty for
  task runs), mean, ci95, runs;
- curves.md: the same at (up to) eight evenly spaced steps, one table per metric;
- curves.png: each metric against training tokens (or steps), one panel per metric, a band for the interval.
`--ratio 16/1` adds the metric `ratio_16x/1x`: each run's ppl at 16x divided by its own ppl at 1x at the same
step (a within-run ratio, then averaged), the extrapolation gap as training proceeds. A step counts only where
every run of the scheme has a value (a run cut short ends its scheme's curve there, and the count says so); a
scheme whose runs share no scored step is left out with a warning. A run directory copied under another name
(the same run config and seed: the same run id) counts once, with a warning naming both directories. A damaged
run_config.yaml or metrics.csv, or an --out that cannot be written, is one `lenx: error:` line (exit status 2).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import yaml
from tables_io import _plt, check_root, mean_ci, out_dir, read_text, save_png, write_csv

from lenx.errors import LenxError, user_errors
from lenx.results import (
    atomic_write_text,
    attn_label,
    extension_label,
    positions_name,
    scaling_name,
    scheme_label,
)
from lenx.runid import run_id

METRIC = re.compile(r"^(extrap/ppl|task/acc)_(\d+)x$")


def metric_order(metric: str) -> tuple:
    """The ratio first, then each metric family by its multiplier (1x, 2x, ..., 16x, not 16x before 2x)."""
    m = METRIC.match(metric)
    return (0, metric, 0) if m is None else (1, m.group(1), int(m.group(2)))


def run_label(cfg: dict) -> str:
    choices = cfg.get("choices") or {}
    # the scheme with the attention modifiers it trained with (rope+ssmax), as result rows name it (results.stamp)
    row = {"pos": choices.get("pos", "?") + attn_label(cfg), "positions": positions_name(cfg),
           "scaling": scaling_name(cfg)}
    scaling = extension_label(row)
    label = scheme_label(row)
    label = label if scaling == "none" else f"{label} {scaling}"
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    if data.get("task"):  # a task run: one curve per task (runs of two tasks never average together)
        return f"{data.get('name') or choices.get('data', '?')}: {label}"
    return label


Series = dict[str, dict[int, float]]  # metric -> {step: value}
FIX_RUN = "repair it or move that run directory out of the sweep, then rerun"


class Run(NamedTuple):
    label: str
    series: Series
    per_step: int | None  # training tokens per optimizer step; None for a task run
    run_dir: Path
    ident: str  # runid.run_id of its config: the same for a copy of the run directory


def read_config(path: Path) -> dict:
    """A run_config.yaml as a mapping; invalid YAML or anything else is one LenxError naming the file."""
    try:
        cfg = yaml.safe_load(read_text(path, FIX_RUN))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise LenxError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or e}); {FIX_RUN}") from None
    if not isinstance(cfg, dict):
        raise LenxError(f"{path}: a YAML {type(cfg).__name__}, not a run config (a mapping); {FIX_RUN}")
    return cfg


def read_metrics(path: Path, ratio: tuple[int, int] | None) -> Series:
    """{metric: {step: value}} of a logs/metrics.csv; a missing step column or a value that is not a number is
    one LenxError naming the file and line."""
    series: Series = defaultdict(dict)
    reader = csv.DictReader(io.StringIO(read_text(path, FIX_RUN), newline=""))
    try:
        scored = [k for k in reader.fieldnames or [] if METRIC.match(k or "")]
        if scored and "step" not in reader.fieldnames:
            raise LenxError(f"{path}: no step column (header: {','.join(reader.fieldnames)}); {FIX_RUN}")
        for row in reader:
            for key in scored:
                value = row.get(key)
                if value in ("", None):
                    continue
                try:
                    series[key][int(row["step"])] = float(value)
                except (TypeError, ValueError):
                    raise LenxError(f"{path} line {reader.line_num}: {key} {value!r} at step {row['step']!r} is "
                                    f"not a number; {FIX_RUN}") from None
    except csv.Error as e:
        raise LenxError(f"{path} line {reader.line_num}: {e}; {FIX_RUN}") from None
    if ratio:
        hi, lo = series.get(f"extrap/ppl_{ratio[0]}x", {}), series.get(f"extrap/ppl_{ratio[1]}x", {})
        series[f"ratio_{ratio[0]}x/{ratio[1]}x"] = {s: hi[s] / lo[s] for s in hi if lo.get(s)}
    return dict(series)


def read_run(run_dir: Path, ratio: tuple[int, int] | None) -> Run:
    """A run's label, {metric: {step: value}}, training tokens per optimizer step (None for a task run) and id."""
    path = run_dir / "run_config.yaml"
    cfg = read_config(path)
    try:
        task = (cfg.get("data") or {}).get("task")
        per_step = None if task else int(cfg["batch_size"]) * int(cfg["seq_len"])
        label, ident = run_label(cfg), run_id(cfg)
    except KeyError as e:
        raise LenxError(f"{path}: no {e.args[0]!r}, not a run config train.py wrote; {FIX_RUN}") from None
    except (TypeError, AttributeError, ValueError) as e:
        raise LenxError(f"{path}: not a run config train.py wrote ({e}); {FIX_RUN}") from None
    return Run(label, read_metrics(run_dir / "logs" / "metrics.csv", ratio), per_step, run_dir, ident)


def scored(run: Run) -> int:
    return sum(map(len, run.series.values()))


def distinct(runs: list[Run]) -> tuple[list[Run], list[str]]:
    """Each run once: run directories with the same run config and seed (a copy under another name) are one run,
    the one with the most scored values; and a warning per copy naming both directories."""
    kept: dict[str, Run] = {}
    notes = []
    for run in runs:
        first = kept.get(run.ident)
        if first is None:
            kept[run.ident] = run
            continue
        notes.append(f"{run.run_dir} and {first.run_dir} are the same run (same run config and seed, run id "
                     f"{run.ident}: a copied directory?): counted once")
        if scored(run) > scored(first):
            kept[run.ident] = run
    return list(kept.values()), notes


def steps_text(values: dict[int, float]) -> str:
    return f"steps {min(values)}..{max(values)}" if values else "no steps"


def summarise(runs: list[Run]) -> tuple[list[dict], list[str]]:
    """The rows of curves.csv, and a warning per scheme left out of a metric because its runs share no scored
    step."""
    grouped: dict[tuple[str, str], list[tuple[Path, dict[int, float]]]] = defaultdict(list)
    per_step = {}
    for run in runs:
        per_step[run.label] = run.per_step
        for metric, values in run.series.items():
            grouped[run.label, metric].append((run.run_dir, values))
    out, unshared = [], defaultdict(list)
    for (label, metric), values in sorted(grouped.items()):
        steps = sorted(set.intersection(*(set(v) for _, v in values)))
        if not steps:
            unshared[label].append((metric, values))
        for step in steps:
            mean, half = mean_ci([v[step] for _, v in values])
            tokens = "" if per_step[label] is None else (step + 1) * per_step[label]
            out.append({"label": label, "metric": metric, "step": step, "tokens": tokens, "mean": mean,
                        "ci95": half, "runs": len(values)})
    notes = []
    for label, lost in unshared.items():
        metric, values = lost[0]
        where = ", ".join(f"{d.name} {steps_text(v)}" for d, v in values[:4]) + (", ..." if len(values) > 4 else "")
        notes.append(f"{label}: its {len(values)} runs share no scored step of {', '.join(m for m, _ in lost)} "
                     f"({metric}: {where}); left out")
    return out, notes


def tokens_text(n: int) -> str:
    return f"{n / 1e6:.3g} M tok" if n >= 1e6 else f"{n / 1e3:.3g} k tok"


def markdown(summary: list[dict], columns: int = 8) -> str:
    text = []
    for metric in sorted({r["metric"] for r in summary}, key=metric_order):
        rows = [r for r in summary if r["metric"] == metric]
        steps = sorted({r["step"] for r in rows})
        picks = range(min(columns, len(steps)))
        shown = sorted({steps[round(i * (len(steps) - 1) / max(1, columns - 1))] for i in picks})
        by = {(r["label"], r["step"]): r for r in rows}
        x = {r["step"]: r["tokens"] for r in rows}
        head = [tokens_text(x[s]) if x[s] != "" else f"step {s + 1}" for s in shown]
        text += [f"### {metric} (mean ± 95% CI over runs)", "",
                 "| scheme | runs | " + " | ".join(head) + " |", "|---|---|" + "---|" * len(shown)]
        for label in sorted({r["label"] for r in rows}):
            cells = [("" if (label, s) not in by else f"{by[label, s]['mean']:.3f}" if by[label, s]["runs"] < 2
                      else f"{by[label, s]['mean']:.3f} ± {by[label, s]['ci95']:.3f}") for s in shown]  # (one run: no interval)
            runs = max(r["runs"] for r in rows if r["label"] == label)
            text.append(f"| {label} | {runs} | " + " | ".join(cells) + " |")
        text.append("")
    return "\n".join(text)


def figure(summary: list[dict], path: Path) -> None:
    plt = _plt()
    metrics = sorted({r["metric"] for r in summary}, key=metric_order)
    cols = min(3, len(metrics))
    rows_n = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5 * cols, 3.6 * rows_n), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for label in sorted({r["label"] for r in summary}):
            rows = [r for r in summary if r["metric"] == metric and r["label"] == label]
            if not rows:
                continue
            xs = [r["tokens"] if r["tokens"] != "" else r["step"] + 1 for r in rows]
            mean = [r["mean"] for r in rows]
            ax.plot(xs, mean, marker=".", label=f"{label} (n={rows[0]['runs']})")
            ax.fill_between(xs, [m - r["ci95"] for m, r in zip(mean, rows)],
                            [m + r["ci95"] for m, r in zip(mean, rows)], alpha=0.15)
        ax.set_title(metric)
        ax.set_xlabel("training tokens" if summary[0]["tokens"] != "" else "step")
        if metric.startswith("extrap/ppl"):
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    save_png(plt, fig, path, 120)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="a sweep directory, or any folder of run directories")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: <root>/curves)")
    p.add_argument("--ratio", default=None, help="HI/LO: also each run's ppl_HIx / ppl_LOx (e.g. 16/1)")
    args = p.parse_args(argv)
    with user_errors():
        curves(args.root, args.out, args.ratio)


def curves(root: Path, out: Path | None, ratio_text: str | None) -> None:
    ratio = None
    if ratio_text:
        if not re.fullmatch(r"\d+/\d+", ratio_text):
            raise LenxError(f"curves: --ratio must be HI/LO multipliers like 16/1, got {ratio_text!r}")
        ratio = tuple(int(x) for x in ratio_text.split("/"))
    if not check_root(root, "a sweep directory, or any folder of run directories").is_dir():
        raise LenxError(f"{root} is a file: name a sweep directory, or any folder of run directories")
    dirs = sorted(m.parent.parent for m in root.rglob("logs/metrics.csv")
                  if (m.parent.parent / "run_config.yaml").is_file())
    runs, notes = distinct([r for r in (read_run(d, ratio) for d in dirs) if r.series])
    if not runs:
        raise LenxError(f"curves: no run under {root} logged scores during training "
                        "(train with eval.every_n_steps=N to log them)")
    summary, unshared = summarise(runs)
    for note in notes + unshared:
        print(f"curves: warning: {note}", file=sys.stderr)
    if not summary:
        raise LenxError(f"curves: no scheme under {root} has a step scored by all of its runs (warnings above): "
                        "train them with the same eval.every_n_steps, or summarise runs that share steps "
                        "(curves.py on a folder holding only those)")
    out = out_dir(out or root / "curves")
    write_csv(out / "curves.csv", summary)
    atomic_write_text(out / "curves.md", markdown(summary))
    figure(summary, out / "curves.png")
    print(markdown(summary))
    print(f"{len(runs)} runs -> {out}/curves.{{csv,md,png}}")


if __name__ == "__main__":
    main()
