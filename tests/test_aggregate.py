"""scripts/aggregate.py: one table over a sweep, mean and 95% CI over seeds, Markdown + CSV + figure."""

import csv
import importlib.util
import json
import math
import sys

import pytest
import yaml
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))  # aggregate.py reads through its siblings (tables_io, task_tables)
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
    assert "| alibi | none | nonoverlapping | 64 | 11.00 ± 12.71 | 10.00 ± 12.71 |" in md
    assert "| learned | none | nonoverlapping | 64 | 20.00 | out of range |" in md
    assert (tmp_path / "summary.png").stat().st_size > 1000
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["runs"] == 3 and prov["rows"] == 6


def test_positions_are_averaged_over_seeds_per_bin(tmp_path):
    for seed, nll in [(0, 2.0), (1, 4.0)]:
        write_run(tmp_path / str(seed), "rope", seed, [10.0, 9.0])
        rows = [{"pos": "rope", "scaling": "none", "mode": "nonoverlapping", "train_len": 64, "eval_len": 128,
                 "position_bin_start": a, "position_bin_end": b, "mean_nll": nll + a / 64, "tokens": 10}
                for a, b in [(0, 1), (1, 64), (64, 128)]]
        (tmp_path / str(seed) / "position_loss.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    aggregate.main([str(tmp_path)])
    pos = list(csv.DictReader(open(tmp_path / "positions.csv")))
    assert [(int(r["position_bin_start"]), float(r["mean_nll"]), int(r["runs"])) for r in pos] == [
        (0, 3.0, 2), (1, 3.0 + 1 / 64, 2), (64, 4.0, 2)]
    assert float(pos[0]["nll_ci95"]) == pytest.approx(12.706 * math.sqrt(2.0) / math.sqrt(2))
    assert (tmp_path / "positions.png").stat().st_size > 1000


def test_empty_directory_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        aggregate.main([str(tmp_path)])
    assert e.value.code == 2 and "lenx: error: no extrapolation.jsonl" in capsys.readouterr().err


def test_a_copied_run_counts_once_and_different_tokens_are_never_averaged(tmp_path, capsys):
    def rows(run, seed, ppl, targets):
        return [{"pos": "rope", "scaling": "none", "mode": "nonoverlapping", "train_len": 64, "eval_len": 64,
                 "multiplier": 1, "ppl": ppl, "status": "ok", "seed": seed, "targets_hash": targets,
                 "run_dir": str(tmp_path / run), "ckpt": f"/somewhere/{run.split('/')[-1]}/checkpoints/last.ckpt"}]

    for d, rs in {"a/rope_s0": rows("a/rope_s0", 0, 10.0, "t1"),
                  "copy/rope_s0": rows("copy/rope_s0", 0, 10.0, "t1"),  # a copied run directory
                  "b/rope_s1": rows("b/rope_s1", 1, 12.0, "t1") + rows("b/rope_s1", 1, 50.0, "t2")}.items():
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "extrapolation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    aggregate.main([str(tmp_path)])
    out = capsys.readouterr().out
    summary = {r["tokens_set"]: r for r in csv.DictReader(open(tmp_path / "summary.csv"))}
    assert set(summary) == {"t1", "t2"}  # one curve per token set
    assert int(summary["t1"]["runs"]) == 2 and float(summary["t1"]["ppl_mean"]) == 11.0  # seeds 0 and 1, once each
    assert int(summary["t2"]["runs"]) == 1 and float(summary["t2"]["ppl_mean"]) == 50.0
    assert "2 different token sets" in out and "1 rows repeat a run already counted" in out
    assert "| rope | none | nonoverlapping (tokens t1) | 64 | 11.00 ± 12.71 |" in out


def write_task_run(path, pos, seed, accs, status="ok", **extra):
    path.mkdir(parents=True)
    rows = [{**extra, "task": "copy", "pos": pos, "scaling": "none", "decode": "teacher", "train_size": 8, "size": 8 * m,
             "multiplier": m, "mean_tokens": 18.0 * m, "accuracy": a, "token_accuracy": a, "instances": 100,
             "status": status if m > 1 else "ok", "seed": seed, "run_dir": str(path),
             "ckpt": str(path / "checkpoints" / "last.ckpt")} for m, a in zip([1, 2], accs)]
    (path / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_task_accuracy_mean_ci_over_seeds(tmp_path):
    write_task_run(tmp_path / "a0", "alibi", 0, [1.0, 0.5])
    write_task_run(tmp_path / "a1", "alibi", 1, [0.8, 0.3])
    write_task_run(tmp_path / "l0", "learned", 0, [0.9, math.nan], status="out_of_range")
    aggregate.main([str(tmp_path)])  # a task-only sweep: no extrapolation rows, no error
    rows = list(csv.DictReader((tmp_path / "tasks_summary.csv").read_text().splitlines()))
    alibi2 = next(r for r in rows if r["pos"] == "alibi" and r["multiplier"] == "2")
    assert float(alibi2["accuracy_mean"]) == pytest.approx(0.4) and alibi2["runs"] == "2"
    assert float(alibi2["accuracy_ci95"]) == pytest.approx(12.706 * math.sqrt(0.02) / math.sqrt(2))
    assert float(alibi2["accuracy_max"]) == 0.5 and float(alibi2["token_accuracy_max"]) == 0.5
    md = (tmp_path / "tasks_summary.md").read_text()
    assert "### copy: exact match" in md and "### copy: per-token accuracy" in md
    assert "| alibi | none | teacher | – | 0.90 ± 1.27, max 1.00 (2) | 0.40 ± 1.27, max 0.50 (2) |" in md
    assert "| learned | none | teacher | – | 0.90 (1) | out of range |" in md  # one run: no interval over seeds
    assert (tmp_path / "tasks_summary.png").stat().st_size > 1000


def test_two_sizes_of_one_preset_are_never_averaged_as_seeds(tmp_path):
    """The same preset resized by overrides (model.d_model=128) is another model: its rows get their own cells."""
    write_task_run(tmp_path / "small0", "rope", 0, [0.2, 0.0], model="tiny", model_shape="d64-L2-H2")
    write_task_run(tmp_path / "small1", "rope", 1, [0.4, 0.0], model="tiny", model_shape="d64-L2-H2")
    write_task_run(tmp_path / "big0", "rope", 0, [1.0, 0.5], model="tiny", model_shape="d128-L4-H4")
    aggregate.main([str(tmp_path)])
    rows = {(r["pos"], r["multiplier"]): r for r in csv.DictReader((tmp_path / "tasks_summary.csv").open())}
    small, big = rows[("rope [tiny d64-L2-H2]", "1")], rows[("rope [tiny d128-L4-H4]", "1")]
    assert (small["runs"], float(small["accuracy_mean"])) == ("2", pytest.approx(0.3))
    assert (big["runs"], float(big["accuracy_mean"])) == ("1", 1.0)
    assert not any(pos == "rope" for pos, _ in rows)


def test_a_row_without_its_shape_takes_it_from_its_run_config(tmp_path):
    """Rows written before rows carried model_shape, beside rows that carry it: the same model where the run
    config says so (one cell, plain name), another where it does not."""
    write_task_run(tmp_path / "old0", "rope", 0, [0.2, 0.0], model="tiny")  # no model_shape
    write_task_run(tmp_path / "new1", "rope", 1, [0.4, 0.0], model="tiny", model_shape="d64-L2-H2")
    shape = {"model": {"d_model": 64, "n_layers": 2, "n_heads": 2}}
    for run in ("old0", "new1"):
        (tmp_path / run / "run_config.yaml").write_text(yaml.safe_dump(shape))
    aggregate.main([str(tmp_path)])
    rows = {(r["pos"], r["multiplier"]): r for r in csv.DictReader((tmp_path / "tasks_summary.csv").open())}
    assert (rows[("rope", "1")]["runs"], float(rows[("rope", "1")]["accuracy_mean"])) == ("2", pytest.approx(0.3))
    (tmp_path / "moved").mkdir()  # a run directory moved since its rows were written: its config where they are
    (tmp_path / "old0").rename(tmp_path / "moved" / "old0")
    aggregate.main([str(tmp_path)])
    rows = {(r["pos"], r["multiplier"]): r for r in csv.DictReader((tmp_path / "tasks_summary.csv").open())}
    assert rows[("rope", "1")]["runs"] == "2"
    (tmp_path / "moved" / "old0" / "run_config.yaml").write_text(yaml.safe_dump({"model": {**shape["model"], "d_model": 128}}))
    aggregate.main([str(tmp_path)])
    names = {r["pos"] for r in csv.DictReader((tmp_path / "tasks_summary.csv").open())}
    assert names == {"rope [tiny d128-L2-H2]", "rope [tiny d64-L2-H2]"}


def test_runs_trained_differently_are_never_averaged_as_seeds(tmp_path):
    """A sweep over a training setting (here the curriculum) is two models per scheme: named by the setting that
    differs; seeds (and where they were written) are not a difference."""
    def run(name, seed, curriculum, accs):
        write_task_run(tmp_path / name, "rope", seed, accs)
        task = {"_target_": "lenx.tasks.Copy", "train_size": 8, **({"curriculum": curriculum} if curriculum else {})}
        (tmp_path / name / "run_config.yaml").write_text(yaml.safe_dump(
            {"seed": seed, "run_dir": str(tmp_path / name), "data": {"task": task}, "model": {"d_model": 64},
             "logger": {"save_dir": str(tmp_path / name)}, "trainer": {"max_steps": 100, "devices": 1}}))

    run("plain0", 0, None, [0.2, 0.0])
    run("plain1", 1, None, [0.4, 0.0])
    run("cur0", 0, 0.5, [0.9, 0.1])
    aggregate.main([str(tmp_path)])
    rows = {(r["pos"], r["multiplier"]): r for r in csv.DictReader((tmp_path / "tasks_summary.csv").open())}
    plain, cur = rows[("rope [data.task.curriculum=unset]", "1")], rows[("rope [data.task.curriculum=0.5]", "1")]
    assert (plain["runs"], float(plain["accuracy_mean"])) == ("2", pytest.approx(0.3))
    assert (cur["runs"], float(cur["accuracy_mean"])) == ("1", 0.9)
    for name in ("cur0",):  # the same setting on both sides: one model, its seeds averaged as before
        (tmp_path / name).rename(tmp_path.parent / f"{tmp_path.name}_{name}")
    aggregate.main([str(tmp_path)])
    assert [r["runs"] for r in csv.DictReader((tmp_path / "tasks_summary.csv").open())
            if r["pos"] == "rope" and r["multiplier"] == "1"] == ["2"]


def test_separations_are_pairs_apart_beyond_the_sum_of_their_half_widths(tmp_path):
    """At 2x: rope's seeds 0.9, 1.0, 0.8 and alibi's 0.1, 0.2, 0.0 are apart (gap 0.8 > 2 x 0.248); fire's 0.5, 0.9,
    0.1 overlap both; a single-run scheme has no interval and is never called apart."""
    for pos, accs in {"rope": [0.9, 1.0, 0.8], "alibi": [0.1, 0.2, 0.0], "fire": [0.5, 0.9, 0.1]}.items():
        for seed, a in enumerate(accs):
            write_task_run(tmp_path / f"{pos}{seed}", pos, seed, [1.0, a])
    write_task_run(tmp_path / "t50", "t5", 0, [1.0, 0.0])
    aggregate.main([str(tmp_path)])
    rows = list(csv.DictReader((tmp_path / "tasks_separations.csv").open()))
    half = 4.303 * 0.1 / math.sqrt(3)  # the same spread (sd 0.1) for rope and alibi
    assert [(r["metric"], r["better"], r["worse"], r["multiplier"]) for r in rows] == [
        ("exact match", "rope", "alibi", "2"), ("per-token accuracy", "rope", "alibi", "2")]
    assert float(rows[0]["gap"]) == pytest.approx(0.8) and float(rows[0]["half_widths"]) == pytest.approx(2 * half)
    md = (tmp_path / "tasks_separations.md").read_text()
    assert "**1 of 1** (copy)" in md and "| copy | exact match | 2x | 1 | rope > alibi (0.90 vs 0.10, +0.30) |" in md


def test_a_run_is_stamped_with_its_shape_beside_its_preset():
    from lenx.results import model_shape
    assert model_shape({"d_model": 128, "n_layers": 4, "n_heads": 4, "mlp": "gelu"}) == "d128-L4-H4"
    assert model_shape({}) == ""  # an exported HF model's rows: no lenx shape


def test_task_tables_against_a_hand_computation(tmp_path):
    """Exact match and per-token accuracy, each with mean, 95% t half-width and max over seeds, at 1x and over a
    size set (Kazemnejad et al.'s (N, 2N] with N = 2: sizes 3, 4), whose per-run value is the run's mean over the
    set; a run missing a size of the set counts in that size's cell but not in the set's mean."""
    per_run = {  # seed: {size: (exact match, per-token accuracy)}
        0: {2: (1.0, 1.0), 3: (1.0, 1.0), 4: (0.5, 0.75)},
        1: {2: (0.5, 0.9), 3: (0.5, 0.5), 4: (0.0, 0.25)},
        2: {2: (1.0, 1.0), 3: (1.0, 1.0), 4: (1.0, 1.0)},
        3: {2: (1.0, 1.0), 3: (0.0, 0.0)},  # interrupted before size 4
    }
    for seed, by_size in per_run.items():
        path = tmp_path / f"rope_s{seed}"
        path.mkdir()
        rows = [{"task": "copy", "pos": "rope", "scaling": "none", "decode": "greedy", "protocol": "kazemnejad",
                 "train_size": 2, "size": n, "multiplier": n / 2 if n > 2 else 1, "size_set": "3..4" if n > 2 else "",
                 "mean_tokens": 2.0 * n + 3, "accuracy": a, "token_accuracy": t, "status": "ok", "seed": seed,
                 "run_dir": str(path), "ckpt": str(path / "checkpoints" / "last.ckpt")}
                for n, (a, t) in by_size.items()]
        (path / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    aggregate.main([str(tmp_path)])
    summary = list(csv.DictReader((tmp_path / "tasks_summary.csv").read_text().splitlines()))
    cell = {r["multiplier"]: r for r in summary}

    def by_hand(xs):  # mean, t(n-1) s / sqrt(n), max
        n = len(xs)
        mean = sum(xs) / n
        s = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
        return mean, {3: 4.303, 4: 3.182}[n] * s / math.sqrt(n), max(xs)

    # 1x: four runs
    for col, metric in [(0, "accuracy"), (1, "token_accuracy")]:
        got = tuple(float(cell["1"][f"{metric}{k}"]) for k in ("_mean", "_ci95", "_max"))
        assert got == pytest.approx(by_hand([per_run[s][2][col] for s in range(4)]))
    # the set 3..4: runs 0-2 averaged over sizes 3 and 4 first; run 3 has no size 4
    set_acc = [(1.0 + 0.5) / 2, (0.5 + 0.0) / 2, (1.0 + 1.0) / 2]
    set_tok = [(1.0 + 0.75) / 2, (0.5 + 0.25) / 2, (1.0 + 1.0) / 2]
    s = cell["3..4"]
    assert (s["size"], s["size_set"], s["runs"], s["ok_runs"]) == ("3..4", "3..4", "4", "3")
    assert tuple(float(s[f"accuracy{k}"]) for k in ("_mean", "_ci95", "_max")) == pytest.approx(by_hand(set_acc))
    assert tuple(float(s[f"token_accuracy{k}"]) for k in ("_mean", "_ci95", "_max")) == pytest.approx(by_hand(set_tok))
    assert by_hand(set_acc) == pytest.approx((2 / 3, 0.94875, 1.0), abs=1e-4)  # the numbers themselves
    size3 = next(r for r in summary if r["size_set"] == "3..4" and r["size"] == "3")  # per size: all four runs
    assert size3["ok_runs"] == "4" and float(size3["accuracy_mean"]) == pytest.approx(2.5 / 4)
    md = (tmp_path / "tasks_summary.md").read_text()
    lead = "| rope | none | greedy | kazemnejad (N=2; paper: exact match) |"
    assert "| pos | scaling | decode | protocol | 1x | sizes 3..4 (mean) |" in md
    assert f"{lead} 0.88 ± 0.40, max 1.00 (4) | 0.67 ± 0.95, max 1.00 (3) |" in md  # exact match
    assert f"{lead} 0.97 ± 0.08, max 1.00 (4) | 0.75 ± 0.82, max 1.00 (3) |" in md  # per token
    assert "| 3 |" not in md  # a set's single sizes: CSV only
