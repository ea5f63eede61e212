"""Issue 19: re-score the study's post-hoc dynamic NTK rows after `factor: null` became the YaRN paper's alpha = 1.

Dynamic NTK (arXiv:2309.00071 sec. 3.3) with factor null used to put s = L / L0 into HF's slope as well (base term
s^2 - s + 1); now it is alpha = 1 (base term s, equal to `ntk` with factor null at every length). Only those rows
changed. The study's RoPE checkpoints are not kept, so the three RoPE runs of the grid were retrained with run.sh's
step-1 command restricted to pos=rope (their `none` rows reproduce the committed means to 0.02 ppl), and re-scored
with run.sh's step-2 command for scalings none, ntk and dynamic_ntk. This script replaces the dynamic_ntk rows of
results/alibi_table2_cpu/rope_extension/{summary,positions}.{csv,md,png} with the new ones and records where they
came from in provenance.json; every other row is kept as committed.

  python experiments/2026-11-24_alibi-table2-cpu/rescore_dynamic_ntk.py RESCORED_DIR [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("aggregate", ROOT / "scripts" / "aggregate.py")
aggregate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(aggregate)

NUMERIC = {"train_len": int, "eval_len": int, "multiplier": float, "ppl_mean": float, "ppl_ci95": float, "runs": int,
           "ok_runs": int, "position_bin_start": int, "position_bin_end": int, "mean_nll": float, "nll_ci95": float}


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return [{k: NUMERIC[k](v) if k in NUMERIC else v for k, v in r.items()} for r in csv.DictReader(f)]


def splice(old: list[dict], new: list[dict]) -> list[dict]:
    """old without its dynamic_ntk rows, plus new's dynamic_ntk rows, in aggregate's order."""
    keep = [r for r in old if r["scaling"] != "dynamic_ntk"]
    return sorted(keep + [r for r in new if r["scaling"] == "dynamic_ntk"],
                  key=lambda r: (*aggregate.curve(r), r["eval_len"], r.get("position_bin_start", 0)))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rescored", type=Path, help="the evaluate.py run directories of the re-scored checkpoints")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "alibi_table2_cpu" / "rope_extension")
    args = p.parse_args(argv)
    rows = aggregate.collect(args.rescored)
    summary = splice(read_csv(args.out / "summary.csv"), aggregate.summarise(rows))
    (args.out / "summary.md").write_text(aggregate.markdown(summary))
    aggregate.write_csv(args.out / "summary.csv", summary)
    aggregate.figure(summary, args.out / "summary.png")
    positions = splice(read_csv(args.out / "positions.csv"),
                       aggregate.summarise_positions(aggregate.collect(args.rescored, "position_loss")))
    aggregate.write_csv(args.out / "positions.csv", positions)
    aggregate.position_figure(positions, args.out / "positions.png")
    prov = json.loads((args.out / "provenance.json").read_text())
    prov["dynamic_ntk_rescored"] = {"issue": 19, **aggregate.provenance(
        [r for r in rows if r.get("scaling") == "dynamic_ntk"])}
    (args.out / "provenance.json").write_text(json.dumps(prov, indent=1) + "\n")
    print(aggregate.markdown(summary))


if __name__ == "__main__":
    main()
