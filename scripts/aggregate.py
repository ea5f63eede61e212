"""Aggregate the extrapolation rows of a sweep: `python scripts/aggregate.py <sweep or results dir> [--out DIR]`.

Collects every extrapolation.jsonl under the directory and writes one table, scheme x eval length, with the mean
over seeds and a 95% confidence interval (Student t), as Markdown and CSV, plus a figure of ppl against eval
length (log2 x axis) with one line per scheme and a band for the interval.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path

# two-sided 95% Student t quantiles for n - 1 degrees of freedom (n seeds); large n -> 1.96
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def collect(root: Path) -> list[dict]:
    rows = []
    for path in sorted(root.rglob("extrapolation.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and 95% CI of ppl over seeds per (pos, scaling, mode, train_len, eval_len); failures counted."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["pos"], r.get("scaling", "none"), r["mode"], r["train_len"], r["eval_len"])].append(r)
    out = []
    for (pos, scaling, mode, train_len, eval_len), rs in sorted(groups.items()):
        ok = [r["ppl"] for r in rs if r["status"] == "ok" and math.isfinite(r["ppl"])]
        mean = statistics.fmean(ok) if ok else math.nan
        half = T95.get(len(ok) - 1, 1.96) * statistics.stdev(ok) / math.sqrt(len(ok)) if len(ok) > 1 else 0.0
        out.append({"pos": pos, "scaling": scaling, "mode": mode, "train_len": train_len, "eval_len": eval_len,
                    "multiplier": eval_len // train_len, "ppl_mean": mean, "ppl_ci95": half, "runs": len(rs),
                    "ok_runs": len(ok), "status": "ok" if ok else rs[0]["status"]})
    return out


def markdown(summary: list[dict]) -> str:
    lengths = sorted({s["eval_len"] for s in summary})
    keys = list(dict.fromkeys((s["pos"], s["scaling"], s["mode"]) for s in summary))
    lines = ["| pos | scaling | mode | " + " | ".join(str(L) for L in lengths) + " |",
             "|---|---|---|" + "---|" * len(lengths)]
    for key in keys:
        cells = []
        for L in lengths:
            s = next((s for s in summary if (s["pos"], s["scaling"], s["mode"]) == key and s["eval_len"] == L), None)
            if s is None:
                cells.append("")
            elif s["ok_runs"] == 0:
                cells.append(s["status"].replace("_", " "))
            else:
                cells.append(f"{s['ppl_mean']:.2f}" + (f" ± {s['ppl_ci95']:.2f}" if s["ok_runs"] > 1 else ""))
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def figure(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in dict.fromkeys((s["pos"], s["scaling"], s["mode"]) for s in summary):
        pts = sorted((s["eval_len"], s["ppl_mean"], s["ppl_ci95"]) for s in summary
                     if (s["pos"], s["scaling"], s["mode"]) == key and s["ok_runs"])
        if not pts:
            continue
        x, y, h = zip(*pts)
        label = key[0] if key[1] == "none" else f"{key[0]}+{key[1]}"
        line, = ax.plot(x, y, marker="o", label=label if key[2] == "nonoverlapping" else f"{label} ({key[2]})")
        ax.fill_between(x, [a - b for a, b in zip(y, h)], [a + b for a, b in zip(y, h)], alpha=0.2,
                        color=line.get_color())
    for L in sorted({s["train_len"] for s in summary}):
        ax.axvline(L, color="grey", lw=0.8, ls=":")
    ax.set(xscale="log", yscale="log", xlabel="evaluation length (tokens)", ylabel="perplexity (mean, 95% CI)")
    ax.set_xscale("log", base=2)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="a sweep directory (multirun/...) or any folder of run directories")
    p.add_argument("--out", type=Path, default=None, help="where to write (default: the root itself)")
    args = p.parse_args(argv)
    rows = collect(args.root)
    if not rows:
        raise SystemExit(f"aggregate: no extrapolation.jsonl under {args.root}")
    out = args.out or args.root
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    (out / "summary.md").write_text(markdown(summary))
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0]))
        w.writeheader()
        w.writerows(summary)
    figure(summary, out / "summary.png")
    print(markdown(summary))
    print(f"{len(rows)} rows from {len({r['run_dir'] for r in rows})} runs -> {out}/summary.{{md,csv,png}}")


if __name__ == "__main__":
    main()
