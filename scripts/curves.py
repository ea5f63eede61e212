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
every run of the scheme has a value (a run cut short ends its scheme's curve there, and the count says so).
"""

from __future__ import annotations

import argparse
import csv
import math
import re
from collections import defaultdict
from pathlib import Path

import yaml
from aggregate import _plt, mean_ci, write_csv

from lenx.results import extension_label, positions_name, scaling_name, scheme_label

METRIC = re.compile(r"^(extrap/ppl|task/acc)_(\d+)x$")


def metric_order(metric: str) -> tuple:
    """The ratio first, then each metric family by its multiplier (1x, 2x, ..., 16x, not 16x before 2x)."""
    m = METRIC.match(metric)
    return (0, metric, 0) if m is None else (1, m.group(1), int(m.group(2)))


def run_label(cfg: dict) -> str:
    choices = cfg.get("choices") or {}
    row = {"pos": choices.get("pos", "?"), "positions": positions_name(cfg), "scaling": scaling_name(cfg)}
    scaling = extension_label(row)
    label = scheme_label(row)
    return label if scaling == "none" else f"{label} {scaling}"


Series = dict[str, dict[int, float]]  # metric -> {step: value}


def read_run(run_dir: Path, ratio: tuple[int, int] | None) -> tuple[str, Series, int | None]:
    """A run's label, {metric: {step: value}} and training tokens per optimizer step (None for a task run)."""
    cfg = yaml.safe_load((run_dir / "run_config.yaml").read_text())
    series: Series = defaultdict(dict)
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value not in ("", None) and METRIC.match(key or ""):
                    series[key][int(row["step"])] = float(value)
    if ratio:
        hi, lo = series.get(f"extrap/ppl_{ratio[0]}x", {}), series.get(f"extrap/ppl_{ratio[1]}x", {})
        series[f"ratio_{ratio[0]}x/{ratio[1]}x"] = {s: hi[s] / lo[s] for s in hi if s in lo}
    per_step = None if (cfg.get("data") or {}).get("task") else int(cfg["batch_size"]) * int(cfg["seq_len"])
    return run_label(cfg), dict(series), per_step


def summarise(runs: list[tuple[str, dict, int | None]]) -> list[dict]:
    grouped: dict[tuple[str, str], list[dict[int, float]]] = defaultdict(list)
    per_step = {}
    for label, series, tokens in runs:
        per_step[label] = tokens
        for metric, values in series.items():
            grouped[label, metric].append(values)
    out = []
    for (label, metric), values in sorted(grouped.items()):
        steps = sorted(set.intersection(*(set(v) for v in values)))
        for step in steps:
            mean, half = mean_ci([v[step] for v in values])
            tokens = "" if per_step[label] is None else (step + 1) * per_step[label]
            out.append({"label": label, "metric": metric, "step": step, "tokens": tokens, "mean": mean,
                        "ci95": half, "runs": len(values)})
    return out


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
            cells = [f"{by[label, s]['mean']:.3f} ± {by[label, s]['ci95']:.3f}" if (label, s) in by else ""
                     for s in shown]
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
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="a sweep directory, or any folder of run directories")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: <root>/curves)")
    p.add_argument("--ratio", default=None, help="HI/LO: also each run's ppl_HIx / ppl_LOx (e.g. 16/1)")
    args = p.parse_args(argv)
    ratio = None
    if args.ratio:
        if not re.fullmatch(r"\d+/\d+", args.ratio):
            raise SystemExit(f"curves: --ratio must be HI/LO multipliers like 16/1, got {args.ratio!r}")
        ratio = tuple(int(x) for x in args.ratio.split("/"))
    dirs = sorted(m.parent.parent for m in args.root.rglob("logs/metrics.csv")
                  if (m.parent.parent / "run_config.yaml").is_file())
    runs = [r for r in (read_run(d, ratio) for d in dirs) if r[1]]
    if not runs:
        raise SystemExit(f"curves: no run under {args.root} logged scores during training "
                         "(eval.every_n_steps)")
    summary = summarise(runs)
    out = args.out or args.root / "curves"
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "curves.csv", summary)
    (out / "curves.md").write_text(markdown(summary))
    figure(summary, out / "curves.png")
    print(markdown(summary))
    print(f"{len(runs)} runs -> {out}/curves.{{csv,md,png}}")


if __name__ == "__main__":
    main()
