"""Issue 19: replace some curves of a committed aggregate with re-measured ones, keeping every other row.

Issue 19 changed defaults that some of the study's rows depend on: dynamic NTK with `factor: null` (now the YaRN
paper's alpha = 1, arXiv:2309.00071), KERPLE's parametrisation (chijames/KERPLE's clamped parameters,
arXiv:2205.09921) and FIRE (init_L = 512 and one FIRE per layer, arXiv:2310.04418). The study's checkpoints are not
kept, so the affected runs were retrained / re-scored with run.sh's own commands (see the README's issue-19
section), and this script puts their seed means in place of the old curves in summary.{csv,md,png} and
positions.{csv,png}, and records their provenance in provenance.json under "issue19".

  python experiments/2026-11-24_alibi-table2-cpu/splice_rows.py RUNS_DIR --out results/alibi_table2_cpu/grid \
      --curves kerple_log/none fire/none
  python experiments/2026-11-24_alibi-table2-cpu/splice_rows.py RUNS_DIR --out results/alibi_table2_cpu/rope_extension \
      --curves rope/dynamic_ntk
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


def splice(old: list[dict], new: list[dict], curves: set[tuple[str, str]]) -> list[dict]:
    """old without the rows of these (pos, scaling) curves, plus new's rows of them, in aggregate's order."""
    keep = [r for r in old if (r["pos"], r["scaling"]) not in curves]
    return sorted(keep + [r for r in new if (r["pos"], r["scaling"]) in curves],
                  key=lambda r: (*aggregate.curve(r), r["eval_len"], r.get("position_bin_start", 0)))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("rescored", type=Path, help="the run directories of the re-measured runs")
    p.add_argument("--out", type=Path, required=True, help="the committed aggregate to update")
    p.add_argument("--curves", nargs="+", required=True, help="pos/scaling of each curve to replace")
    args = p.parse_args(argv)
    curves = {tuple(c.split("/")) for c in args.curves}
    rows = [r for r in aggregate.collect(args.rescored) if (r["pos"], r.get("scaling", "none")) in curves]
    summary = splice(read_csv(args.out / "summary.csv"), aggregate.summarise(rows), curves)
    (args.out / "summary.md").write_text(aggregate.markdown(summary))
    aggregate.write_csv(args.out / "summary.csv", summary)
    aggregate.figure(summary, args.out / "summary.png")
    positions = splice(read_csv(args.out / "positions.csv"),
                       aggregate.summarise_positions(aggregate.collect(args.rescored, "position_loss")), curves)
    aggregate.write_csv(args.out / "positions.csv", positions)
    aggregate.position_figure(positions, args.out / "positions.png")
    prov = json.loads((args.out / "provenance.json").read_text())
    prov.pop("dynamic_ntk_rescored", None)
    prov["issue19"] = {"curves": sorted(args.curves), **aggregate.provenance(rows)}
    (args.out / "provenance.json").write_text(json.dumps(prov, indent=1) + "\n")
    print(aggregate.markdown(summary))


if __name__ == "__main__":
    main()
