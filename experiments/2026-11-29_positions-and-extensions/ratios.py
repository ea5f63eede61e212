"""Per-seed comparisons for the positions x extensions study: `python ratios.py <runs dir> <out.md>`
(`--positions-only`: a runs dir without re-scored extensions, as run_pose_offset.sh writes).

Seeds differ more than the methods do at this scale (one seed's 1x ppl is 20% above the others'), so the study
compares within a seed: for every (scheme, method) its 16x / 1x ppl ratio, and its ppl at each length relative to
the reference of the same seed (positions=contiguous for the position modes; extension none for the extensions),
as a mean over seeds with a 95% Student-t half-width. Reads the rows with lenx.results.read_tree.
"""

from __future__ import annotations

import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from lenx.results import extension_label, read_tree, scheme_label

T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}


def mean_ci(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return f"{m:.3f} (1 seed)"
    return f"{m:.3f} ± {T95.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs)):.3f}"


def table(rows: list[dict], key, reference) -> list[str]:
    """key(row) -> (scheme, method); reference(scheme, method) -> the (scheme, method) it is compared with."""
    ppl: dict[tuple, dict[int, float]] = defaultdict(dict)  # (scheme, method, seed) -> {multiplier: ppl}
    for r in rows:
        if r.get("mode") == "nonoverlapping" and r["status"] == "ok":
            ppl[(*key(r), r["seed"])][r["multiplier"]] = r["ppl"]
    mults = sorted({m for v in ppl.values() for m in v})
    out = ["| scheme | method | seeds | 16x / 1x ppl | " + " | ".join(f"{m}x vs reference" for m in mults) + " |",
           "|---|---|---|---|" + "---|" * len(mults)]
    for scheme, method in sorted({k[:2] for k in ppl}):
        seeds = sorted(s for (p, me, s) in ppl if (p, me) == (scheme, method))
        ratio = [ppl[(scheme, method, s)][max(mults)] / ppl[(scheme, method, s)][1] for s in seeds
                 if {1, max(mults)} <= set(ppl[(scheme, method, s)])]
        ref = reference(scheme, method)
        cells = []
        for m in mults:
            rel = [ppl[(scheme, method, s)][m] / ppl[(*ref, s)][m] for s in seeds
                   if m in ppl[(scheme, method, s)] and m in ppl.get((*ref, s), {})]
            cells.append("—" if (scheme, method) == ref else mean_ci(rel))
        out.append(f"| {scheme} | {method} | {len(seeds)} | {mean_ci(ratio)} | " + " | ".join(cells) + " |")
    return out


def main(runs: Path, out: Path, positions_only: bool = False) -> None:
    train = read_tree(runs / "train")
    positions = table(train, lambda r: (r["pos"], r.get("positions", "contiguous")),
                      lambda scheme, method: (scheme, "contiguous"))
    text = "## Position modes (ppl relative to the same seed's contiguous run)\n\n" + "\n".join(positions) + "\n"
    if not positions_only:  # run.sh's study also re-scored checkpoints under the extensions
        ext = read_tree(runs / "extensions")
        extensions = table(ext, lambda r: (scheme_label(r), extension_label(r)), lambda scheme, method: (scheme, "none"))
        text += "\n## Extensions (ppl relative to the same checkpoint without one)\n\n" + "\n".join(extensions) + "\n"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), positions_only="--positions-only" in sys.argv[3:])
