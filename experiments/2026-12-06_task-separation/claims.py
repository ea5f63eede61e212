"""Each published length claim the task-separation study tests, set beside what it measured:
`python experiments/2026-12-06_task-separation/claims.py results/task_separation_cpu/tasks_summary.csv`.

A claim is a comparison "A generalises to longer inputs than B" on the tasks its paper names (all the study's tasks
where it names none). Per task, multiplier (2x, 4x) and metric (exact match, per-token accuracy) a pair is
`better` or `worse` where the means differ by more than the sum of the two 95% half-widths over seeds (the study's
separation criterion, scripts/aggregate.py's tasks_separations), else `within`; B that cannot score there (a learned
table past its rows: `out_of_range`) counts as `better` for A. A claim is **held** at this scale where A is better
on at least one task and worse on none, **not held** where A is worse on some task, and **not separated** where
every cell is within the intervals; a claim of "at least as well" (NoPE's) is held wherever A is worse nowhere. Writes claims.md beside the summary and prints it.
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

ALL = None  # every task of the study
# (claim, paper, A, B, tasks): A is claimed to generalise to longer inputs than B
CLAIMS = [
    ("randomized positions beat the same encoding trained at 0..L-1", "Ruoss et al. 2023, arXiv:2305.16843",
     "rope+randomized", "rope", ALL),
    ("randomized positions beat the same encoding trained at 0..L-1", "Ruoss et al. 2023, arXiv:2305.16843",
     "learned+randomized", "learned", ALL),
    ("NoPE generalises at least as well as explicit encodings (decoder-only)", ("Kazemnejad et al. 2023, "
                                                                                 "arXiv:2305.19466"), "none", "sinusoidal", ALL),
    ("", "", "none", "rope", ALL),
    ("", "", "none", "alibi", ALL),
    ("", "", "none", "t5", ALL),
    ("the forgetting gate extrapolates where RoPE does not", "Lin et al. 2025 (FoX), arXiv:2503.02130", "fox",
     "rope", ALL),
    ("stick-breaking attention generalises to longer inputs than softmax attention", ("Tan et al. 2025, "
                                                                                       "arXiv:2410.17980"),
     "stickbreaking", "rope", ALL),
    ("CoPE solves counting, selective copy and flip-flop out of distribution where position embeddings fail",
     "Golovneva et al. 2024 (CoPE), arXiv:2405.18719", "cope", "rope", ["counting", "selective_copy", "flip_flop"]),
    ("", "", "cope", "learned", ["counting", "selective_copy", "flip_flop"]),
    ("scalable softmax keeps attention focused at lengths beyond training", ("Nakanishi 2025 (SSMax), "
                                                                                         "arXiv:2501.19399"),
     "rope+ssmax", "rope", ALL),
    ("RoPE layers with a window interleaved with full NoPE layers extrapolate better than RoPE everywhere",
     "Yang et al. 2025 (RNoPE-SWA), arXiv:2501.18795", "rnope_swa", "rope", ALL),
    ("Llama 4's iRoPE (NoPE layers with attention-temperature tuning among chunked RoPE layers) generalises beyond "
     "the training length", "Meta 2025, Llama 4 (no paper; transformers' Llama4TextAttention)", "irope", "rope", ALL),
    ("removing RoPE's lowest frequencies (p-RoPE) gives channels that stay robust over long contexts",
     "Barbero et al. 2025, arXiv:2410.06205", "p_rope", "rope", ALL),
    ("HoPE (only full-period frequencies rotate) extrapolates better than RoPE", "Chen et al. 2025 (HoPE), "
     "arXiv:2410.21216", "hope", "rope", ALL),
    ("DAPE's data-adaptive bias extrapolates better than its static bias (DAPE-Kerple vs Kerple)",
     "Zheng et al. 2024 (DAPE), arXiv:2405.14722", "kerple_log+dape", "kerple_log", ALL),
    ("no published length claim for learned sinks in full attention (gpt-oss); beside RoPE for completeness",
     "OpenAI 2025, gpt-oss (transformers' modeling_gpt_oss.py)", "rope+sinks", "rope", ALL),
]
METRICS = {"accuracy": "exact", "token_accuracy": "per token"}
MULTIPLIERS = (2, 4)


def read(path: Path) -> dict[tuple, dict]:
    rows = {}
    for r in csv.DictReader(path.open()):
        if r["size_set"] or r["scaling"] != "none" or r["decode"] != "teacher":
            continue
        rows[(r["task"], r["pos"], float(r["multiplier"]))] = r
    return rows


def compare(a: dict | None, b: dict | None, metric: str) -> tuple[str, str]:
    """(verdict, the cell's numbers) for A against B at one task, multiplier and metric."""
    if a is None or b is None or a["status"] != "ok":
        return "missing", "–"
    mean_a, half_a = float(a[f"{metric}_mean"]), float(a[f"{metric}_ci95"])
    if b["status"] == "out_of_range":
        return "better", f"{mean_a:.2f} vs out of range"
    if b["status"] != "ok":
        return "missing", "–"
    mean_b, half_b = float(b[f"{metric}_mean"]), float(b[f"{metric}_ci95"])
    half = (0.0 if math.isnan(half_a) else half_a) + (0.0 if math.isnan(half_b) else half_b)
    verdict = "better" if mean_a - mean_b > half else "worse" if mean_b - mean_a > half else "within"
    return verdict, f"{mean_a:.2f}±{half_a:.2f} vs {mean_b:.2f}±{half_b:.2f}"


def matrix(rows: dict[tuple, dict], tasks: list[str], metric: str, mult: int) -> list[str]:
    """Schemes x tasks at one multiplier: mean ± 95% half-width over seeds, the best of each task in bold."""
    schemes = sorted({p for _, p, _ in rows})
    best = {}
    for task in tasks:
        means = [float(rows[(task, p, mult)][f"{metric}_mean"]) for p in schemes
                 if (task, p, mult) in rows and rows[(task, p, mult)]["status"] == "ok"]
        best[task] = max(means) if means else None
    lines = [f"| {METRICS[metric]} at {mult}x | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for p in schemes:
        cells = []
        for task in tasks:
            r = rows.get((task, p, mult))
            if r is None:
                cells.append("")
            elif r["status"] != "ok":
                cells.append(r["status"].replace("_", " "))
            else:
                mean, half = float(r[f"{metric}_mean"]), float(r[f"{metric}_ci95"])
                cell = f"{mean:.2f} ± {half:.2f}"
                cells.append(f"**{cell}**" if mean == best[task] else cell)
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return lines + [""]


def main(path: Path) -> str:
    rows = read(path)
    tasks = list(dict.fromkeys(t for t, _, _ in rows))
    lines = ["# Published length claims at this scale (task-separation study)", "",
             ("Per claim: A against B on each task at 2x and 4x the training size, exact match and per-token "
              "accuracy, mean ± 95% half-width over 3 seeds; **better** / **worse**: apart by more than the sum of "
              "the half-widths. Verdict: held (better somewhere, worse nowhere), not held (worse somewhere), not "
              "separated (within everywhere; for NoPE's claim of \"at least as well\", held)."), ""]
    claim, paper = "", ""
    for text, cite, a, b, only in CLAIMS:
        claim, paper = text or claim, cite or paper
        counts = {"better": [], "worse": [], "within": []}
        cells = []
        for task in only or tasks:
            for m in MULTIPLIERS:
                for metric, name in METRICS.items():
                    verdict, numbers = compare(rows.get((task, a, m)), rows.get((task, b, m)), metric)
                    if verdict in counts:
                        counts[verdict].append(f"{task} {m}x {name}")
                    if verdict in ("better", "worse"):
                        cells.append(f"{task} {m}x {name}: {verdict} ({numbers})")
        better = {c.split()[0] for c in counts["better"]}
        worse = {c.split()[0] for c in counts["worse"]}
        at_least = a == "none"  # Kazemnejad et al.: NoPE at least as good as the explicit encodings
        compared = sum(map(len, counts.values()))
        verdict = "not run" if not compared else "not held" if worse else "held" if better or at_least else \
            "not separated"
        lines += [f"## {a} vs {b}: **{verdict}**", "", f"Claim ({paper}): {claim}.", "",
                  (f"Cells: {len(counts['better'])} better (tasks: {', '.join(sorted(better)) or 'none'}), "
                   f"{len(counts['worse'])} worse (tasks: {', '.join(sorted(worse)) or 'none'}), "
                   f"{len(counts['within'])} within the intervals."), ""]
        lines += [f"- {c}" for c in cells] + [""]
    lines += ["# Every scheme on every task (mean ± 95% half-width over seeds; the best of each task in bold)", ""]
    for mult in MULTIPLIERS:
        for metric in METRICS:
            lines += matrix(rows, tasks, metric, mult)
    text = "\n".join(lines)
    (path.parent / "claims.md").write_text(text)
    return text


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_file():
        raise SystemExit("usage: claims.py results/task_separation_cpu/tasks_summary.csv")
    print(main(Path(sys.argv[1])))
