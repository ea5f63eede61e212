"""Study (issue 35): the 2024-26 mechanisms at the separation study's preset (experiments/2026-11-29_separation).

Every run is the separation study's run (experiment=alibi_table2_cpu: tiny model, L = 64, 1280 steps x 32 windows =
2.62 M tokens, fp32, scored during training every 80 steps at 1x-16x on 8192 targets, then at the end
nonoverlapping and sliding on 16384 targets) with one scheme or mechanism in place of the position scheme.

    python experiments/2026-12-06_mechanisms/run.py [--jobs 2] [--runs multirun/mechanisms_cpu] [--only NAME ...]

Runs go two at a time (one thread each) from a queue (JOBS below): a run whose directory holds `.study_done` is
skipped, one cut short resumes from its last.ckpt (train.py's resume=auto), so rerunning the script continues a
study. A runner claims a run (`.study_claim`, created exclusively) before it starts it, so that two runners can
share one queue (a second started with --jobs 1 --threads 1 when the first has a free core); after a crash,
delete the stale claims of the runs that did not finish. Each run's code is the commit its `tree` names (a frozen `git worktree` at LENX_TREE_<name>, default this
checkout), so the rows record a clean SHA. Wall time per run: in each run's `study.log`; the total in
`<runs>/wall_time.txt`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# name -> the overrides that make it (beside the preset's); seeds 0, 1, 2 of each
JOBS = {
    "rope+ssmax": ["pos=rope", "attn.ssmax=true"],
    "fox": ["pos=fox"],
    "stickbreaking": ["pos=stickbreaking"],
    "rnope_swa": ["pos=rnope_swa"],
}
SEEDS = (0, 1, 2)
PRESET = ["experiment=alibi_table2_cpu", "trainer.max_steps=1280", "trainer.val_check_interval=1280",
          "eval.every_n_steps=80", "eval.during.multipliers=[1,2,4,8,16]", "eval.during.tokens=8192",
          "eval.probes.probe=null"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--runs", default="multirun/mechanisms_cpu")
    ap.add_argument("--only", nargs="*", default=None, help="names of JOBS to run (default: all)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per run (default: the cores / --jobs); with two runners sharing the "
                         "machine give each --threads 1, or the runs' threads outnumber the cores (spin-waits)")
    args = ap.parse_args()
    runs = (ROOT / args.runs).resolve()
    runs.mkdir(parents=True, exist_ok=True)
    names = args.only or list(JOBS)
    unknown = [n for n in names if n not in JOBS]
    if unknown:
        sys.exit(f"run.py: unknown names {unknown}; known: {list(JOBS)}")
    queue = [(n, s) for n in names for s in SEEDS if not (runs / f"{n}_s{s}" / ".study_done").exists()]
    threads = args.threads or max(1, (os.cpu_count() or 2) // args.jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    start, running = time.time(), {}
    print(f"run.py: {len(queue)} runs to go in {runs}", flush=True)
    while queue or running:
        while queue and len(running) < args.jobs:
            name, seed = queue.pop(0)
            out = runs / f"{name}_s{seed}"
            out.mkdir(parents=True, exist_ok=True)
            if (out / ".study_done").exists():  # done by another runner since this one started
                continue
            try:  # another runner's run
                os.close(os.open(out / ".study_claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue
            tree = Path(os.environ.get(f"LENX_TREE_{name.replace('+', '_')}", ROOT))
            cmd = [sys.executable, "train.py", *PRESET, *JOBS[name], f"seed={seed}", f"hydra.run.dir={out}"]
            log = open(out / "study.log", "a")
            log.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} in {tree}: {' '.join(cmd)}\n")
            log.flush()
            running[subprocess.Popen(cmd, cwd=tree, env=dict(env, PYTHONPATH=str(tree / "src")), stdout=log, stderr=subprocess.STDOUT)] = \
                (out, log, time.time())
        time.sleep(5)
        for proc in [p for p in running if p.poll() is not None]:
            out, log, t0 = running.pop(proc)
            log.write(f"# rc {proc.returncode} after {time.time() - t0:.0f} s\n")
            log.close()
            if proc.returncode == 0:
                (out / ".study_done").touch()
            (out / ".study_claim").unlink(missing_ok=True)
            print(f"run.py: {out.name} rc {proc.returncode} after {(time.time() - t0) / 60:.1f} min", flush=True)
    line = f"wall time of this invocation: {(time.time() - start) / 60:.0f} min on {os.cpu_count()} CPU cores, " \
           f"{args.jobs} jobs\n"
    with open(runs / "wall_time.txt", "a") as f:
        f.write(line)
    print(line, end="")


if __name__ == "__main__":
    main()
