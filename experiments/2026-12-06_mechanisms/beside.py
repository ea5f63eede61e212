"""The mechanisms study's rows beside the separation study's (issue 35): one markdown table per measurement, from
the two studies' own aggregates (scripts/aggregate.py's summary.csv, scripts/curves.py's curves.csv), refusing rows
scored on different targets.

    python experiments/2026-12-06_mechanisms/beside.py [--new results/mechanisms_cpu] \
        [--old results/separation_cpu] [--out results/mechanisms_cpu/beside_separation.md]
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

OLD_ROWS = ("alibi", "rope", "none")  # the separation study's rows set beside (NoPE: the base of fox & co.)
LAST_STEP_TOKENS = 1280 * 2048  # the last scoring during training (after step 1279: 2.62 M tokens)


def read(path: Path) -> list[dict]:
    if not path.is_file():
        sys.exit(f"beside: {path} is missing: run scripts/aggregate.py and scripts/curves.py first")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def pm(mean: str, ci: str, digits: int) -> str:
    return f"{float(mean):.{digits}f} ± {float(ci):.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new", type=Path, default=Path("results/mechanisms_cpu"))
    ap.add_argument("--old", type=Path, default=Path("results/separation_cpu"))
    ap.add_argument("--out", type=Path, default=Path("results/mechanisms_cpu/beside_separation.md"))
    args = ap.parse_args()
    old_sum, new_sum = read(args.old / "summary.csv"), read(args.new / "summary.csv")
    old_cur, new_cur = read(args.old / "curves" / "curves.csv"), read(args.new / "curves" / "curves.csv")
    summary = [r for r in old_sum if r["pos"] in OLD_ROWS] + new_sum
    hashes = {r["targets_hash"] for r in summary if r["status"] == "ok"}
    if len(hashes) != 1:
        sys.exit(f"beside: the rows were scored on different targets ({sorted(hashes)}); nothing to set beside")
    curves = [r for r in old_cur if r["label"] in OLD_ROWS] + new_cur
    labels = list(dict.fromkeys([*OLD_ROWS, *(r["label"] for r in new_cur)]))
    lines = ["# The mechanisms beside the separation study (same preset, same targets)", "",
             f"Targets hash {hashes.pop()} in every row (the first 16,384 validation targets; during training the "
             "first 8,192). Rows alibi, rope, none: results/separation_cpu (2026-11-29); the others: this study.", "",
             "## During training, at 2.62 M tokens (step 1279; mean ± 95 % t over the runs, each run's own ratio)", "",
             "| model | study | runs | ppl 1× | ppl 16× | 16×/1× |", "|---|---|---|---|---|---|"]
    for label in labels:
        at = {r["metric"]: r for r in curves if r["label"] == label and int(r["tokens"]) == LAST_STEP_TOKENS}
        if not at:
            continue
        study = "separation" if label in OLD_ROWS else "mechanisms"
        lines.append(f"| {label} | {study} | {at['ratio_16x/1x']['runs']} | "
                     f"{pm(at['extrap/ppl_1x']['mean'], at['extrap/ppl_1x']['ci95'], 1)} | "
                     f"{pm(at['extrap/ppl_16x']['mean'], at['extrap/ppl_16x']['ci95'], 1)} | "
                     f"{pm(at['ratio_16x/1x']['mean'], at['ratio_16x/1x']['ci95'], 3)} |")
    for mode in ("nonoverlapping", "sliding"):
        lines += ["", f"## Final scoring, {mode} (16,384 targets; mean ± 95 % t over 3 seeds; ratio of the means)", "",
                  "| model | 64 (1×) | 128 | 256 | 512 | 1024 (16×) | 16×/1× |", "|---|---|---|---|---|---|---|"]
        for label in labels:
            rows = {float(r["multiplier"]): r for r in summary if r["pos"] == label and r["mode"] == mode
                    and r["scaling"] == "none"}
            if not rows:
                continue
            cells = [pm(rows[m]["ppl_mean"], rows[m]["ppl_ci95"], 1) if m in rows else "–"
                     for m in (1.0, 2.0, 4.0, 8.0, 16.0)]
            ratio = float(rows[16.0]["ppl_mean"]) / float(rows[1.0]["ppl_mean"]) if 1.0 in rows and 16.0 in rows \
                else float("nan")
            lines.append(f"| {label} | {' | '.join(cells)} | {ratio:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"beside: {args.out}")


if __name__ == "__main__":
    main()
