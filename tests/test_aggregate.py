"""scripts/aggregate.py: one table over a sweep, mean and 95% CI over seeds, Markdown + CSV + figure."""

import csv
import importlib.util
import json
import math

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("aggregate", ROOT / "scripts" / "aggregate.py")
aggregate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(aggregate)


def write_run(path, pos, seed, ppls, status="ok"):
    path.mkdir(parents=True)
    rows = [{"pos": pos, "scaling": "none", "mode": "nonoverlapping", "train_len": 64, "eval_len": 64 * m,
             "multiplier": m, "ppl": p, "status": status if m > 1 else "ok", "seed": seed, "run_dir": str(path)}
            for m, p in zip([1, 2], ppls)]
    (path / "extrapolation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_mean_ci_over_seeds_and_outputs(tmp_path, capsys):
    write_run(tmp_path / "0", "alibi", 0, [10.0, 9.0])
    write_run(tmp_path / "1", "alibi", 1, [12.0, 11.0])
    write_run(tmp_path / "2", "learned", 0, [20.0, math.nan], status="out_of_range")
    aggregate.main([str(tmp_path)])
    rows = list(csv.DictReader(open(tmp_path / "summary.csv")))
    alibi1 = next(r for r in rows if r["pos"] == "alibi" and r["eval_len"] == "64")
    assert float(alibi1["ppl_mean"]) == 11.0
    assert float(alibi1["ppl_ci95"]) == pytest.approx(12.706 * math.sqrt(2.0) / math.sqrt(2))  # t(1) s / sqrt(n)
    md = (tmp_path / "summary.md").read_text()
    assert "| alibi | none | nonoverlapping | 11.00 ± 12.71 | 10.00 ± 12.71 |" in md
    assert "| learned | none | nonoverlapping | 20.00 | out of range |" in md
    assert (tmp_path / "summary.png").stat().st_size > 1000


def test_empty_directory_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no extrapolation.jsonl"):
        aggregate.main([str(tmp_path)])
