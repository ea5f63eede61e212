"""Line up runs on the same scored tokens: `python scripts/compare.py RUN [RUN ...] [--baseline 0] [--out FILE]`.

Each RUN is a run directory (train.py or evaluate.py output) or any folder holding extrapolation.jsonl files.
Rows are matched by (mode, stride fraction, context, split, eval_len); a comparison is refused when the rows
being compared did not score the same target tokens (their targets_hash differs, or the corpus / tokenizer hash
does), because a ppl difference would then mix the models with the text. Prints one table per mode: ppl per
run and eval length, and the change relative to the baseline run in percent, with each row's bootstrap interval.
Where both rows carry their per-unit NLL sums (`units_nll`, `units_tokens`: the same blocks of the same tokens),
the change gets a 95% paired bootstrap interval: the same resampled units for both runs, so the text's own
difficulty cancels and only the difference between the models is left (two rows' own intervals overlap far more
than their difference is uncertain). Cells whose row warns of too few resampling units are marked `!`.
A damaged input (a cut .jsonl line, a row without mode / eval_len / ppl), a RUN that does not exist or holds no
rows, or an --out that cannot be written is one `lenx: error:` line (exit status 2).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from tables_io import NUMBER, TEXT, read_results

from lenx.errors import LenxError, user_errors
from lenx.extrapolation import block_run, bootstrap_indices
from lenx.results import atomic_write_text, extension_label, mode_label, scheme_label

NEEDS = {"pos": TEXT, "mode": TEXT, "eval_len": NUMBER, "ppl": NUMBER}  # what the table reads without a default


def paired_change(row: dict, base: dict, n_boot: int = 1000, seed: int = 0) -> tuple[float, float] | None:
    """95% paired-bootstrap interval of the ppl change row / base - 1 (in %), or None when the rows do not carry
    matching per-unit sums. Units are resampled in runs of neighbouring units, as the rows' own intervals."""
    a, b = row.get("units_nll"), base.get("units_nll")
    if not a or not b or len(a) != len(b) or row.get("units_tokens") != base.get("units_tokens"):
        return None
    sum_a, sum_b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    cnt = np.maximum(np.asarray(row["units_tokens"], dtype=np.float64), 0)
    run = int(row.get("units_run", block_run(len(sum_a))))
    idx = bootstrap_indices(len(sum_a), run, n_boot, seed)  # the same draws for both runs: paired
    n = np.maximum(cnt[idx].sum(1), 1)
    delta = (sum_a[idx].sum(1) - sum_b[idx].sum(1)) / n  # loss difference, nats per token
    lo, hi = np.percentile(delta, [2.5, 97.5])
    return 100 * math.expm1(lo), 100 * math.expm1(hi)


def load(path: Path) -> list[dict]:
    rows = read_results(path, "extrapolation", NEEDS)
    if not rows:
        raise LenxError(f"compare: no extrapolation rows under {path}: name a run directory (train.py or "
                        "evaluate.py output) or a folder holding extrapolation.jsonl files")
    return rows


def write_out(path: Path, text: str) -> None:
    """The table at --out: a regular file is replaced atomically; a device or pipe (/dev/stdout) is written to;
    a directory is a LenxError."""
    if path.is_dir():
        raise LenxError(f"--out {path} is a directory: name a file to write the table to (e.g. {path}/compare.txt)")
    if path.exists() and not path.is_file():
        try:
            with open(path, "w") as f:
                f.write(text)
        except OSError as e:  # a full device's write() error names no file
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    else:
        atomic_write_text(path, text)


def run_label(rows: list[dict], fallback: str) -> str:
    keys = sorted({(scheme_label(r), extension_label(r), r.get("seed")) for r in rows})
    if len(keys) == 1:
        pos, scaling, seed = keys[0]
        return f"{pos}{'' if scaling == 'none' else '+' + scaling} s{seed}"
    return fallback


def match_key(r: dict) -> tuple:
    return (mode_label(r), r["eval_len"], r.get("split", ""), round(r.get("stride", r["eval_len"]) / r["eval_len"], 6))


def line_up(runs: dict[str, list[dict]]) -> tuple[dict, list[str]]:
    """{(mode, eval_len, split, stride fraction): {run: row}} over the keys every run has, and the problems
    (different scored tokens) found."""
    table: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for name, rows in runs.items():
        for r in rows:
            table[match_key(r)].setdefault(name, r)  # first row per key and run (reruns append)
    problems = []
    for key, by_run in table.items():
        for field in ("targets_hash", "corpus_hash", "tokenizer_hash"):
            seen = {name: r.get(field) for name, r in by_run.items()}
            if None in seen.values() or "" in seen.values():
                problems.append(f"{key[0]} eval_len={key[1]}: some rows have no {field}; cannot verify they "
                                f"scored the same tokens")
            elif len(set(seen.values())) > 1:
                problems.append(f"{key[0]} eval_len={key[1]}: {field} differs ({seen}): not the same scored tokens")
    shared = {k: v for k, v in table.items() if len(v) == len(runs)}
    return shared, problems


def render(shared: dict, names: list[str], baseline: str) -> str:
    out = []
    for mode in dict.fromkeys(k[0] for k in sorted(shared, key=lambda k: (k[0], k[1]))):
        lengths = sorted({k[1] for k in shared if k[0] == mode})
        out.append(f"\n{mode}: ppl [95% bootstrap CI]; (change vs {baseline} [95% paired bootstrap CI])")
        out.append(f"{'run':<28}" + "".join(f"{L:>40}" for L in lengths))
        for name in names:
            cells = []
            for L in lengths:
                key = next(k for k in shared if k[0] == mode and k[1] == L)
                r, b = shared[key][name], shared[key][baseline]
                if r.get("status", "ok") != "ok" or not math.isfinite(r["ppl"]):
                    cells.append(r.get("status", "nan"))
                    continue
                cell = f"{r['ppl']:.2f} [{r.get('ppl_ci_low', math.nan):.1f},{r.get('ppl_ci_high', math.nan):.1f}]"
                cell += "!" if r.get("ci_warning") else ""
                if name != baseline and b.get("status", "ok") == "ok":
                    cell += f" ({100 * (r['ppl'] / b['ppl'] - 1):+.1f}%"
                    paired = paired_change(r, b)
                    cell += ")" if paired is None else f" [{paired[0]:+.1f},{paired[1]:+.1f}])"
                cells.append(cell)
            out.append(f"{name:<28}" + "".join(f"{c:>40}" for c in cells))
        if any(shared[k][n].get("ci_warning") for k in shared if k[0] == mode for n in names):
            out.append("!: fewer than 20 resampling units; that interval covers less than 95%")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--baseline", type=int, default=0, help="index of the run the others are compared to")
    p.add_argument("--allow-different-tokens", action="store_true",
                   help="print the table even when the runs scored different tokens (the problems are listed)")
    p.add_argument("--out", type=Path, help="also write the table to this file")
    args = p.parse_args(argv)
    with user_errors():
        return compare(args)


def compare(args: argparse.Namespace) -> str:
    if not -len(args.runs) <= args.baseline < len(args.runs):
        raise LenxError(f"--baseline {args.baseline}: there are {len(args.runs)} runs; pass an index from 0 to "
                        f"{len(args.runs) - 1}")
    runs: dict[str, list[dict]] = {}
    for path in args.runs:
        rows = load(path)
        name = run_label(rows, path.name)
        runs[name if name not in runs else f"{name} ({path})"] = rows
    names = list(runs)
    shared, problems = line_up(runs)
    if problems and not args.allow_different_tokens:
        raise SystemExit("compare: refusing to compare runs that did not score the same tokens:\n  "
                         + "\n  ".join(problems) + "\n(re-score them with the same eval settings and corpus, or "
                         "pass --allow-different-tokens)")
    if not shared:
        raise LenxError("compare: the runs share no (mode, stride, context, split, eval_len) row: score them with "
                        "the same eval settings")
    text = render(shared, names, names[args.baseline])
    if problems:
        text = "WARNING: " + "\n WARNING: ".join(problems) + "\n" + text
    print(text)
    if args.out:
        write_out(args.out, text + "\n")
    return text


if __name__ == "__main__":
    sys.exit(main() and 0)
