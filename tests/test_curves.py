"""scripts/curves.py: what eval.every_n_steps logged, averaged over seeds per scheme, against tokens."""

import csv
import math
import statistics
import sys

import pytest
import yaml
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import curves


def write_run(path, pos, seed, points, positions=None, attn=None):
    """A run directory as train.py leaves it: run_config.yaml and logs/metrics.csv with the scores of
    eval.every_n_steps (points: {step: (ppl_1x, ppl_16x)}) between training-loss rows."""
    (path / "logs").mkdir(parents=True)
    cfg = {"seq_len": 64, "batch_size": 32, "seed": seed, "data": {"name": "stdlib"},
           "pos": {"_target_": "x"}, "choices": {"pos": pos}, **({"attn": attn} if attn else {})}
    if positions:
        cfg["positions"] = {"_target_": f"lenx.positions.{positions}"}
    (path / "run_config.yaml").write_text(yaml.safe_dump(cfg))
    with open(path / "logs" / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["epoch", "extrap/ppl_16x", "extrap/ppl_1x", "step", "train/loss"])
        w.writeheader()
        for step, (p1, p16) in sorted(points.items()):
            w.writerow({"epoch": "", "extrap/ppl_1x": p1, "extrap/ppl_16x": p16, "step": step})
            w.writerow({"epoch": 0, "step": step, "train/loss": 5.0})


def test_within_run_ratio_mean_and_interval_over_seeds(tmp_path):
    write_run(tmp_path / "rope_s0", "rope", 0, {9: (100.0, 150.0), 19: (80.0, 160.0)})
    write_run(tmp_path / "rope_s1", "rope", 1, {9: (200.0, 220.0), 19: (90.0, 135.0)})
    write_run(tmp_path / "rope_s2", "rope", 2, {9: (120.0, 120.0)})  # cut short after its first score
    write_run(tmp_path / "alibi_s0", "alibi", 0, {9: (50.0, 50.0), 19: (40.0, 38.0)}, positions="Randomized")
    curves.main([str(tmp_path), "--out", str(tmp_path / "out"), "--ratio", "16/1"])
    with open(tmp_path / "out" / "curves.csv") as f:
        rows = list(csv.DictReader(f))
    ratio = {(r["label"], int(r["step"])): r for r in rows if r["metric"] == "ratio_16x/1x"}
    first = ratio["rope", 9]
    per_run = [1.5, 1.1, 1.0]  # each run's own ratio, then the mean (not the ratio of the mean ppls)
    assert float(first["mean"]) == pytest.approx(statistics.fmean(per_run))
    assert float(first["ci95"]) == pytest.approx(4.303 * statistics.stdev(per_run) / math.sqrt(3))
    assert first["runs"] == "3" and int(first["tokens"]) == 10 * 32 * 64  # (step + 1) x batch x seq_len
    assert ("rope", 19) not in ratio  # not every rope run reached step 19: the curve ends where the runs do
    assert float(ratio["alibi+randomized", 19]["mean"]) == pytest.approx(0.95)
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0
    md = (tmp_path / "out" / "curves.md").read_text()
    assert "### ratio_16x/1x" in md and "| rope | 3 | 1.200 ± " in md


def test_refuses_a_tree_without_scores_and_a_bad_ratio(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    for args, match in [([], "logged scores during training"), (["--ratio", "16x"], "HI/LO")]:
        with pytest.raises(SystemExit) as e:
            curves.main([str(tmp_path), *args])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("lenx: error: curves:") and match in err


def test_a_model_with_attention_modifiers_is_its_own_curve(tmp_path):
    """rope+ssmax is not rope: its runs form their own curve, named as result rows name it."""
    write_run(tmp_path / "rope_s0", "rope", 0, {9: (100.0, 150.0)})
    write_run(tmp_path / "ssmax_s0", "rope", 0, {9: (100.0, 110.0)}, attn={"ssmax": True, "sinks": False})
    curves.main([str(tmp_path), "--out", str(tmp_path / "out"), "--ratio", "16/1"])
    with open(tmp_path / "out" / "curves.csv") as f:
        ratio = {r["label"]: float(r["mean"]) for r in csv.DictReader(f) if r["metric"] == "ratio_16x/1x"}
    assert ratio == {"rope": pytest.approx(1.5), "rope+ssmax": pytest.approx(1.1)}


def test_task_runs_of_two_tasks_are_two_curves(tmp_path):
    """A sweep over tasks (calibration): each task's runs form their own curve, named by the task."""
    for task, acc in (("copy", 0.9), ("parity", 0.5)):
        path = tmp_path / f"{task}_s0"
        (path / "logs").mkdir(parents=True)
        cfg = {"seed": 0, "data": {"name": task, "task": {"_target_": "x"}}, "pos": {"_target_": "x"},
               "choices": {"pos": "rope", "data": task}}
        (path / "run_config.yaml").write_text(yaml.safe_dump(cfg))
        (path / "logs" / "metrics.csv").write_text(f"epoch,step,task/acc_1x,train/loss\n,9,{acc},\n0,9,,1.0\n")
    curves.main([str(tmp_path), "--out", str(tmp_path / "out")])
    with open(tmp_path / "out" / "curves.csv") as f:
        acc = {r["label"]: float(r["mean"]) for r in csv.DictReader(f) if r["metric"] == "task/acc_1x"}
    assert acc == {"copy: rope": pytest.approx(0.9), "parity: rope": pytest.approx(0.5)}
