"""Two-process DDP on CPU (gloo): the same rows as one process, and sharded scoring that equals single-process."""

import json

import pytest
import torch
from conftest import ROOT  # noqa: F401  (cli runs from the repository root)
from test_end_to_end import cli

from lenx.results import COLUMNS

COMMON = ["data.vocab_size=300", "data.valid_fraction=0.2", "data.test_fraction=0.2", "eval.multipliers=[1,2,4]",
          "eval.mode=[nonoverlapping,sliding]", "eval.stride=0.5", "eval.tokens=1024", "eval.batch_tokens=64",
          "eval.probes.probe=null", "eval.progress=false"]


@pytest.mark.slow
def test_two_process_ddp_trains_and_scores_like_one_process(tmp_path, tree):
    env = {"LENX_CACHE": str(tmp_path / "cache")}
    run_dir = tmp_path / "ddp"
    r = cli("train.py", "experiment=smoke", "pos=alibi", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
            "trainer.max_steps=4", "trainer.enable_progress_bar=false", f"data.path={tree}", *COMMON,
            f"hydra.run.dir={run_dir}", env_extra=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run_dir / "train_ddp_process_1.log").is_file()  # a second process ran, in the same run dir
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "ddp", "src"]  # no stray run directories
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    rows = [json.loads(x) for x in (run_dir / "extrapolation.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(set(COLUMNS) <= set(row) for row in rows)  # written once, by rank zero
    # the same checkpoint scored by one process: the all-reduced token-weighted sums give the same numbers
    r = cli("evaluate.py", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", *[c for c in COMMON if "data." not in c],
            f"hydra.run.dir={tmp_path / 'single'}", env_extra=env)
    assert r.returncode == 0, r.stderr[-3000:]
    single = [json.loads(x) for x in (tmp_path / "single" / "extrapolation.jsonl").read_text().splitlines()]
    for a, b in zip(rows, single, strict=True):
        assert (a["mode"], a["eval_len"], a["tokens"], a["targets_hash"]) == (
            b["mode"], b["eval_len"], b["tokens"], b["targets_hash"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-9, abs=0)
        assert (a["ppl_ci_low"], a["ppl_ci_high"]) == pytest.approx((b["ppl_ci_low"], b["ppl_ci_high"]), rel=1e-9)
    print("\nDDP (2 processes) vs 1 process, ppl:")
    for a, b in zip(rows, single):
        print(f"  {a['mode']:<15} {a['eval_len']:>4}  {a['ppl']:.6f}  {b['ppl']:.6f}")


@pytest.mark.slow
def test_multirun_with_relaunching_ddp_is_refused(tmp_path, tree):
    r = cli("train.py", "-m", "experiment=smoke", "pos=alibi,rope", "trainer=ddp", "trainer.accelerator=cpu",
            f"data.path={tree}", *COMMON, f"hydra.sweep.dir={tmp_path / 'sweep'}",
            env_extra={"LENX_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 2 and "cannot use trainer.strategy=ddp" in r.stderr
    assert not list((tmp_path / "sweep").rglob("last.ckpt"))
