"""A task study as one sweep: tasks x schemes x position modes x seeds, from a grid file, with its wall time
estimated (and printed) before any run starts.

    python scripts/task_study.py GRID.yaml [--jobs 2] [--runs DIR] [--estimate] [--only-tasks ...] [--only-schemes ...]

GRID.yaml (experiments/2026-12-06_task-separation/grid.yaml is one):
    seeds: [0, 1, 2]
    common: [model.d_model=64, ...]            # overrides of every run
    tasks: {flip_flop: [data=flip_flop, data.task.train_size=16, trainer.max_steps=1500], ...}
    schemes: {rope: [pos=rope], t5: {default: [pos=t5], copy: [pos=t5, pos.num_buckets=12]}, ...}
    positions: {contiguous: [], randomized: [positions=randomized]}   # optional; default: contiguous only

Each run is train.py with `<common> <task> <scheme> <positions> seed=<s>` in <runs>/<task>/<name>_s<s> (name: the
scheme, `@<positions>` for a mode other than the first); a scheme's seeds on a task run as one Hydra multirun
(`train.py -m ... seed=0,1,2 hydra.sweep.dir=<runs>/<task> hydra.sweep.subdir=<name>_s${seed}`, output in
<runs>/<task>/<name>.study.log), so its start-up is paid once, not once per seed. The estimate, before anything
runs: for each task two short timing runs of its first scheme (`--timing-steps`, twice that many), the difference of
whose training times (train.log's `trained in`) gives the task's time per step and the shorter one's wall time less
its steps the fixed cost (start, scoring), of which the start-up is the time from the process's start to
train.log's first line; for each other scheme one run of the first task, whose training time over the first
scheme's is the scheme's factor; the study's wall time is the sum over its runs of fixed cost + steps x time per
step x factor, less the start-up for each run after the first of its multirun, divided by the jobs
(cycle_navigation, rope, 3 seeds of 800 steps took 43 s as one multirun and 63 s as three processes). Timings are
kept in <runs>/timings.json (a rerun reuses them). Processes go `--jobs` at a time (one thread each unless
--threads); a run whose directory holds `.study_done` (set once it has written tasks.jsonl) is skipped and one cut
short resumes (train.py's resume=auto), so rerunning continues a study. At the end scripts/aggregate.py writes the tables (exact match and per-token
accuracy with seed intervals and the maximum over seeds) to --out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Run:
    task: str
    scheme: str
    mode: str
    seed: int
    overrides: tuple[str, ...]
    steps: int

    def name(self, first_mode: str) -> str:
        """The scheme, with `@<mode>` for a position mode other than the grid's first."""
        return self.scheme if self.mode == first_mode else f"{self.scheme}@{self.mode}"

    def directory(self, runs: Path, first_mode: str) -> Path:
        return runs / self.task / f"{self.name(first_mode)}_s{self.seed}"


def _overrides(node, where: str) -> list[str]:
    if node is None:
        return []
    if not isinstance(node, list) or not all(isinstance(o, str) for o in node):
        raise SystemExit(f"task_study: {where} must be a list of overrides (strings), got {node!r}")
    return list(node)


def load_grid(path: Path) -> dict:
    """The grid file, checked: one line per mistake, before anything runs."""
    grid = yaml.safe_load(path.read_text())
    if not isinstance(grid, dict):
        raise SystemExit(f"task_study: {path} must be a mapping (seeds, common, tasks, schemes, positions)")
    unknown = set(grid) - {"seeds", "common", "tasks", "schemes", "positions"}
    if unknown:
        raise SystemExit(f"task_study: {path}: unknown keys {sorted(unknown)} (seeds, common, tasks, schemes, positions)")
    for key in ("tasks", "schemes"):
        if not isinstance(grid.get(key), dict) or not grid[key]:
            raise SystemExit(f"task_study: {path}: `{key}` must be a non-empty mapping of names to overrides")
    for scheme, node in grid["schemes"].items():
        if isinstance(node, dict) and set(node) - {"default"} - set(grid["tasks"]):
            raise SystemExit(f"task_study: schemes.{scheme} names tasks the grid lacks: "
                             f"{sorted(set(node) - {'default'} - set(grid['tasks']))}")
    seeds = grid.setdefault("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise SystemExit(f"task_study: {path}: seeds must be a list of integers, got {seeds!r}")
    for task, node in grid["tasks"].items():
        over = _overrides(node, f"tasks.{task}")
        if not any(o.startswith("trainer.max_steps=") for o in over):
            raise SystemExit(f"task_study: tasks.{task} must set trainer.max_steps (the estimate reads it)")
    return grid


def scheme_overrides(node, scheme: str, task: str) -> list[str]:
    """A scheme's overrides for a task: a list, or {default: [...], <task>: [...]}."""
    if isinstance(node, dict):
        if "default" not in node:
            raise SystemExit(f"task_study: schemes.{scheme} as a mapping needs a `default` list")
        return _overrides(node.get(task, node["default"]), f"schemes.{scheme}.{task}")
    return _overrides(node, f"schemes.{scheme}")


def plan_runs(grid: dict, tasks: list[str] | None = None, schemes: list[str] | None = None) -> list[Run]:
    """Every run of the grid (or of the named tasks and schemes), in task order, then scheme, mode and seed."""
    modes = grid.get("positions") or {"contiguous": []}
    tasks = tasks or list(grid["tasks"])
    schemes = schemes or list(grid["schemes"])
    for name, known, what in ((tasks, grid["tasks"], "task"), (schemes, grid["schemes"], "scheme")):
        missing = [n for n in name if n not in known]
        if missing:
            raise SystemExit(f"task_study: unknown {what}s {missing}; the grid has {list(known)}")
    runs = []
    for task, scheme, (mode, mode_over), seed in itertools.product(tasks, schemes, modes.items(), grid["seeds"]):
        task_over = _overrides(grid["tasks"][task], f"tasks.{task}")
        steps = int(next(o for o in reversed(task_over) if o.startswith("trainer.max_steps=")).split("=", 1)[1])
        over = (*_overrides(grid.get("common"), "common"), *task_over,
                *scheme_overrides(grid["schemes"][scheme], scheme, task), *_overrides(mode_over, f"positions.{mode}"),
                f"seed={seed}")
        runs.append(Run(task, scheme, mode, seed, over, steps))
    return runs


def estimate_seconds(runs: list[Run], per_task: dict[str, tuple[float, ...]], factor: dict[str, float],
                     jobs: int) -> float:
    """The study's wall time: per run fixed + steps x per-step x the scheme's factor, over `jobs` parallel jobs; a
    unit's runs after its first (its other seeds, `units`: one process) without the start-up the process pays once.
    per_task: task -> (fixed seconds, seconds per step[, start-up seconds]) of the first scheme; factor: scheme ->
    its per-step time over the first scheme's."""
    total = 0.0
    for unit in units(runs):
        for k, r in enumerate(unit):
            fixed, per_step, *startup = per_task[r.task]
            total += fixed - (startup[0] if k and startup else 0.0) + r.steps * per_step * factor.get(r.scheme, 1.0)
    return total / max(1, jobs)


def timed(overrides: list[str], out: Path, env: dict) -> tuple[float, float, float]:
    """(wall seconds, training seconds, start-up seconds) of a train.py run with these overrides (in `out`,
    replaced): training as train.py logs it (`trained in ...s`: the fit alone, without start-up and scoring); the
    start-up from the process's start to train.log's first line (imports, Hydra's composition)."""
    subprocess.run(["rm", "-rf", str(out)], check=True)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "train.py", *overrides, f"hydra.run.dir={out}"], cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"task_study: timing run failed ({' '.join(overrides)}):\n{proc.stderr[-2000:]}")
    wall = time.time() - t0
    text = (out / "train.log").read_text()
    found = re.search(r"trained in ([0-9.]+)s", text)
    if not found:
        raise SystemExit(f"task_study: timing run in {out} logged no training time (train.log)")
    first = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\]", text)
    startup = (time.mktime(time.strptime(first.group(1), "%Y-%m-%d %H:%M:%S")) + int(first.group(2)) / 1000 - t0
               if first else 0.0)
    return wall, float(found.group(1)), min(max(startup, 0.0), wall)


def measure(grid: dict, runs: list[Run], runs_dir: Path, steps: int, env: dict) -> tuple[dict, dict]:
    """Timings (cached in runs_dir/timings.json): per task (fixed, per step) of the grid's first scheme, from the
    training times of two runs of `steps` and 2 x `steps` steps (their difference: the first steps' warm-up cancels)
    and the shorter run's wall time; per scheme its factor on the first task (a run of 2 x `steps` steps)."""
    cache_file = runs_dir / "timings.json"
    cache = json.loads(cache_file.read_text()) if cache_file.exists() else {"tasks": {}, "schemes": {}}
    first_scheme, first_task = runs[0].scheme, runs[0].task
    seed0 = [r for r in runs if r.seed == runs[0].seed and r.mode == runs[0].mode]

    def with_steps(run: Run, n: int) -> list[str]:
        return [o for o in run.overrides if not o.startswith(("trainer.max_steps=", "eval.every_n_steps="))] + \
            [f"trainer.max_steps={n}", "eval.every_n_steps=null"]

    scratch = runs_dir / ".timing"
    for run in [r for r in seed0 if r.scheme == first_scheme]:
        if run.task not in cache["tasks"]:
            (wall, a, startup), (_, b, _) = (timed(with_steps(run, n), scratch / f"{run.task}_{n}", env)
                                             for n in (steps, 2 * steps))
            per_step = max(b - a, 1e-3 * steps) / steps
            fixed = max(wall - steps * per_step, 0.0)
            cache["tasks"][run.task] = [fixed, per_step, b, min(startup, fixed)]
            print(f"task_study: {run.task}: {per_step * 1000:.0f} ms a step, {fixed:.0f} s fixed ({startup:.0f} s of "
                  "it start-up)", flush=True)
            cache_file.write_text(json.dumps(cache, indent=1))  # kept as measured: a failure later loses none
    for run in [r for r in seed0 if r.task == first_task and r.scheme != first_scheme]:
        if run.scheme not in cache["schemes"]:
            _, t, _ = timed(with_steps(run, 2 * steps), scratch / f"{run.scheme}", env)
            # over the first scheme's training time of as many steps on the first task (its timing run)
            cache["schemes"][run.scheme] = t / cache["tasks"][first_task][2]
            print(f"task_study: {run.scheme}: {cache['schemes'][run.scheme]:.2f}x {first_scheme}'s time a step",
                  flush=True)
            cache_file.write_text(json.dumps(cache, indent=1))
    cache_file.write_text(json.dumps(cache, indent=1))
    subprocess.run(["rm", "-rf", str(scratch)], check=True)
    return {k: (v[0], v[1], *v[3:4]) for k, v in cache["tasks"].items()}, cache["schemes"]


def units(runs: list[Run]) -> list[list[Run]]:
    """The runs grouped by task, scheme and position mode (their seeds), in the runs' order: one process each."""
    groups: dict[tuple, list[Run]] = {}
    for r in runs:
        groups.setdefault((r.task, r.scheme, r.mode), []).append(r)
    return list(groups.values())


def unit_command(unit: list[Run], runs_dir: Path, first_mode: str) -> list[str]:
    """One Hydra multirun over a unit's seeds (its runs' overrides but the seed are the same), each seed's job in
    the directory `Run.directory` names: train.py runs them one after another in one process, so the start-up
    (imports, set-up, exit: ~10 s of a ~40 s run, measured as in the module docstring) is paid once per unit, as
    Hydra's basic launcher runs a sweep. The seed is each run's last override (`plan_runs`)."""
    return [sys.executable, "train.py", "-m", *unit[0].overrides[:-1], f"seed={','.join(str(r.seed) for r in unit)}",
            f"hydra.sweep.dir={runs_dir / unit[0].task}", f"hydra.sweep.subdir='{unit[0].name(first_mode)}_s${{seed}}'"]


def execute(runs: list[Run], runs_dir: Path, first_mode: str, jobs: int, env: dict) -> None:
    """The runs not yet done, `jobs` units (a scheme's seeds on a task: `unit_command`) at a time; a run is done
    (`.study_done`) once it has written its scores (tasks.jsonl), whatever became of the unit's later seeds."""
    todo = [r for r in runs if not (r.directory(runs_dir, first_mode) / ".study_done").exists()]
    queue, running = units(todo), {}
    print(f"task_study: {len(todo)} of {len(runs)} runs to go in {runs_dir}, {len(queue)} processes", flush=True)
    while queue or running:
        while queue and len(running) < jobs:
            unit = queue.pop(0)
            cmd = unit_command(unit, runs_dir, first_mode)
            log_path = runs_dir / unit[0].task / f"{unit[0].name(first_mode)}.study.log"  # the unit's output
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(log_path, "a")  # noqa: SIM115  (open while the unit runs: closed when it ends)
            log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            running[proc] = (unit, log, time.time())
        time.sleep(0.2)  # (a run takes ~30 s: a 2 s poll left the core idle ~1 s a run, 2-3 % of a study)
        for proc in [p for p in running if p.poll() is not None]:
            unit, log, t0 = running.pop(proc)
            log.write(f"# rc {proc.returncode} after {time.time() - t0:.0f} s\n")
            log.close()
            for run in unit:
                out = run.directory(runs_dir, first_mode)
                done = (out / "tasks.jsonl").is_file()
                if done:
                    (out / ".study_done").touch()
                print(f"task_study: {out.relative_to(runs_dir)} {'done' if done else 'not done'} (its process: rc "
                      f"{proc.returncode} after {time.time() - t0:.0f} s for {len(unit)} runs)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("grid", type=Path)
    ap.add_argument("--runs", default="multirun/task_study")
    ap.add_argument("--out", default=None, help="where aggregate.py writes the tables (default: no aggregation)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    ap.add_argument("--timing-steps", type=int, default=100)
    ap.add_argument("--estimate", action="store_true", help="measure and print the estimate, run nothing")
    ap.add_argument("--only-tasks", nargs="*", default=None)
    ap.add_argument("--only-schemes", nargs="*", default=None)
    args = ap.parse_args()
    grid = load_grid(args.grid)
    runs = plan_runs(grid, args.only_tasks, args.only_schemes)
    runs_dir = (ROOT / args.runs).resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    threads = args.threads or max(1, (os.cpu_count() or 2) // args.jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT / "src"))
    per_task, factor = measure(grid, runs, runs_dir, args.timing_steps, env)
    todo = [r for r in runs if not (r.directory(runs_dir, runs[0].mode) / ".study_done").exists()]
    seconds = estimate_seconds(todo, per_task, factor, args.jobs)
    print(f"task_study: {len(runs)} runs ({len(grid['tasks'] if args.only_tasks is None else args.only_tasks)} tasks"
          f" x {len(args.only_schemes or grid['schemes'])} schemes x {len(grid.get('positions') or [0])} position "
          f"modes x {len(grid['seeds'])} seeds), {len(todo)} to go: estimated {seconds / 60:.0f} min wall with "
          f"{args.jobs} jobs of {threads} thread(s)", flush=True)
    if args.estimate:
        return
    start = time.time()
    execute(runs, runs_dir, runs[0].mode, args.jobs, env)
    wall = time.time() - start
    line = f"wall time: {wall / 60:.0f} min ({wall:.0f} s; estimated {seconds / 60:.0f}) on {os.cpu_count()} " \
           f"CPU cores, {args.jobs} jobs\n"
    with open(runs_dir / "wall_time.txt", "a") as f:
        f.write(line)
    print(line, end="")
    if args.out:
        subprocess.run([sys.executable, "scripts/aggregate.py", str(runs_dir), "--out", args.out], cwd=ROOT,
                       env=env, check=True)


if __name__ == "__main__":
    main()
