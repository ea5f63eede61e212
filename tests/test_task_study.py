"""scripts/task_study.py (issue 36): a task study's grid as runs, its checks, and the wall-time estimate printed
before any run starts (a real timing and estimate on a two-run grid, slow)."""

import importlib.util
import subprocess
import sys

import pytest
from conftest import ROOT

spec = importlib.util.spec_from_file_location("task_study", ROOT / "scripts" / "task_study.py")
task_study = importlib.util.module_from_spec(spec)
sys.modules["task_study"] = task_study  # (its dataclass looks its module up)
spec.loader.exec_module(task_study)

GRID = """
seeds: [0, 1]
common: [model.d_model=16]
tasks:
  copy: [data=copy, trainer.max_steps=30]
  parity: [data=parity, trainer.max_steps=60]
schemes:
  rope: [pos=rope]
  t5: {default: [pos=t5], copy: [pos=t5, pos.num_buckets=8]}
positions:
  contiguous: []
  randomized: [positions=randomized]
"""


def grid_file(tmp_path, text=GRID):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


def test_the_grid_is_every_task_scheme_mode_and_seed_with_its_own_overrides(tmp_path):
    grid = task_study.load_grid(grid_file(tmp_path))
    runs = task_study.plan_runs(grid)
    assert len(runs) == 2 * 2 * 2 * 2
    t5_copy = next(r for r in runs if r.task == "copy" and r.scheme == "t5")
    assert t5_copy.overrides == ("model.d_model=16", "data=copy", "trainer.max_steps=30", "pos=t5",
                                 "pos.num_buckets=8", "seed=0")
    t5_parity = [r for r in runs if r.task == "parity" and r.scheme == "t5" and r.mode == "randomized"][-1]
    assert t5_parity.overrides[-3:] == ("pos=t5", "positions=randomized", "seed=1") and t5_parity.steps == 60
    dirs = {r.directory(tmp_path, "contiguous").relative_to(tmp_path).as_posix() for r in runs}
    assert "copy/rope_s0" in dirs and "parity/t5@randomized_s1" in dirs and len(dirs) == len(runs)
    assert len(task_study.plan_runs(grid, ["parity"], ["rope"])) == 4


def test_the_estimate_sums_each_run_over_the_jobs(tmp_path):
    runs = task_study.plan_runs(task_study.load_grid(grid_file(tmp_path)))
    per_task = {"copy": (10.0, 0.1), "parity": (20.0, 0.2)}  # fixed s, s a step
    factor = {"rope": 1.0, "t5": 2.0}
    # copy: 4 runs per scheme (2 modes x 2 seeds) of 30 steps; parity: 60 steps
    want = 4 * (10 + 30 * 0.1) + 4 * (10 + 30 * 0.1 * 2) + 4 * (20 + 60 * 0.2) + 4 * (20 + 60 * 0.2 * 2)
    assert task_study.estimate_seconds(runs, per_task, factor, jobs=2) == pytest.approx(want / 2)


def test_the_estimate_pays_a_start_up_once_per_multirun(tmp_path):
    runs = task_study.plan_runs(task_study.load_grid(grid_file(tmp_path)))
    plain = {"copy": (10.0, 0.1), "parity": (20.0, 0.2)}
    with_startup = {"copy": (10.0, 0.1, 6.0), "parity": (20.0, 0.2, 5.0)}
    factor = {"rope": 1.0, "t5": 2.0}
    # 2 schemes x 2 modes per task: 4 multiruns of 2 seeds each, each saving one start-up
    saved = 4 * 6.0 + 4 * 5.0
    assert len(task_study.units(runs)) == 8 and all(len(u) == 2 for u in task_study.units(runs))
    assert task_study.estimate_seconds(runs, with_startup, factor, jobs=2) == pytest.approx(
        task_study.estimate_seconds(runs, plain, factor, jobs=2) - saved / 2)


@pytest.mark.parametrize("text, msg", [
    ("tasks: {copy: [data=copy]}\nschemes: {rope: [pos=rope]}", "must set trainer.max_steps"),
    ("tasks: {copy: [data=copy, trainer.max_steps=3]}\nschemes: {}", "`schemes` must be a non-empty mapping"),
    ("tasks: {copy: [data=copy, trainer.max_steps=3]}\nschemes: {rope: pos=rope}", "schemes.rope must be a list"),
    ("tasks: {copy: [data=copy, trainer.max_steps=3]}\nschemes: {t5: {sort: [pos=t5], default: []}}",
     "names tasks the grid lacks"),
    ("task: {}\n", "unknown keys"),
])
def test_a_bad_grid_is_one_line(tmp_path, text, msg):
    with pytest.raises(SystemExit, match=msg):
        task_study.plan_runs(task_study.load_grid(grid_file(tmp_path, text)))


def test_timings_are_measured_once_and_cached(tmp_path, monkeypatch):
    """measure: a task's per step from two runs' training times, its fixed cost and start-up from the shorter run;
    a scheme's factor over the first scheme's training time on the first task; all kept in timings.json."""
    calls = []

    def fake_timed(overrides, out, env):  # (wall, training, start-up) as train.py's log gives them
        steps = int(next(o for o in overrides if o.startswith("trainer.max_steps=")).split("=")[1])
        per_step = {"pos=rope": 0.1, "pos=t5": 0.3}[next(o for o in overrides if o.startswith("pos="))]
        calls.append(out.name)
        return 12.0 + steps * per_step, 1.0 + steps * per_step, 5.0

    monkeypatch.setattr(task_study, "timed", fake_timed)
    runs = task_study.plan_runs(task_study.load_grid(grid_file(tmp_path)))
    per_task, factor = task_study.measure({}, runs, tmp_path, 10, {})
    assert per_task["copy"] == pytest.approx((12.0, 0.1, 5.0)) == per_task["parity"]
    assert factor["t5"] == pytest.approx((1 + 20 * 0.3) / (1 + 20 * 0.1))
    n = len(calls)
    assert task_study.measure({}, runs, tmp_path, 10, {}) == (per_task, factor) and len(calls) == n  # cached


@pytest.mark.slow
def test_the_estimate_is_printed_before_any_run(tmp_path):
    """--estimate times the grid's tasks and schemes with short runs, prints the study's estimate and runs nothing."""
    text = ("seeds: [0, 1, 2]\ncommon: [experiment=smoke, data.task.train_size=4, eval.probes.tasks.instances=10]\n"
            "tasks: {copy: [data=copy, trainer.max_steps=100]}\nschemes: {rope: [pos=rope], alibi: [pos=alibi]}\n")
    runs = tmp_path / "runs"
    out = subprocess.run([sys.executable, "scripts/task_study.py", str(grid_file(tmp_path, text)), "--runs",
                          str(runs), "--estimate", "--timing-steps", "4", "--jobs", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "6 runs (1 tasks x 2 schemes x 1 position modes x 3 seeds), 6 to go: estimated" in out.stdout
    assert (runs / "timings.json").exists() and not (runs / "copy").exists()


def test_a_unit_is_one_process_over_its_seeds(tmp_path):
    """A scheme's seeds on a task (in one position mode) are one Hydra multirun, each seed's job in the run's own
    directory; the command keeps every override but the seed."""
    runs = task_study.plan_runs(task_study.load_grid(grid_file(tmp_path)))
    units = task_study.units(runs)
    assert len(units) == 2 * 2 * 2 and all(len(u) == 2 for u in units)  # tasks x schemes x modes, 2 seeds each
    unit = next(u for u in units if (u[0].task, u[0].scheme, u[0].mode) == ("copy", "t5", "randomized"))
    cmd = task_study.unit_command(unit, tmp_path / "runs", "contiguous")
    assert cmd[1:3] == ["train.py", "-m"] and "seed=0,1" in cmd and not any(c in ("seed=0", "seed=1") for c in cmd)
    assert "pos.num_buckets=8" in cmd and "positions=randomized" in cmd
    assert f"hydra.sweep.dir={tmp_path / 'runs' / 'copy'}" in cmd
    assert "hydra.sweep.subdir='t5@randomized_s${seed}'" in cmd


@pytest.mark.slow
def test_a_study_runs_its_units_marks_each_run_and_resumes(tmp_path):
    """A real study of one task, one scheme, two seeds: one process writes both runs where Run.directory says, each
    marked done; with one run's scores removed, a rerun runs that seed alone."""
    text = ("seeds: [0, 1]\ncommon: [experiment=smoke, data.task.train_size=4, eval.probes.tasks.instances=5, "
            "'eval.probes.tasks.multipliers=[1]']\ntasks: {copy: [data=copy, trainer.max_steps=4]}\n"
            "schemes: {rope: [pos=rope]}\n")
    runs = tmp_path / "runs"

    def study():
        out = subprocess.run([sys.executable, "scripts/task_study.py", str(grid_file(tmp_path, text)), "--runs",
                              str(runs), "--timing-steps", "2", "--jobs", "1"], cwd=ROOT, capture_output=True,
                             text=True, timeout=900, check=False)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        return out.stdout

    printed = study()
    assert "2 of 2 runs to go" in printed and "1 processes" in printed
    for seed in (0, 1):
        assert (runs / "copy" / f"rope_s{seed}" / "tasks.jsonl").is_file()
        assert (runs / "copy" / f"rope_s{seed}" / ".study_done").exists()
    log = (runs / "copy" / "rope.study.log").read_text()
    assert log.count("train.py -m") == 1 and "seed=0,1" in log
    (runs / "copy" / "rope_s1" / ".study_done").unlink()
    (runs / "copy" / "rope_s1" / "tasks.jsonl").unlink()
    assert "1 of 2 runs to go" in study()
    cmds = [x for x in (runs / "copy" / "rope.study.log").read_text().splitlines() if x.startswith("# ") and "-m" in x]
    assert len(cmds) == 2 and " seed=1 " in cmds[-1]
    assert (runs / "copy" / "rope_s1" / ".study_done").exists()
