"""Trust of the summary scripts (aggregate.py, curves.py, compare.py): never a silently wrong summary (a copied
run counted twice, a scheme dropped without a word, two checkpoints merged as one model), and every damaged input
or unwritable output is one `lenx: error:` line naming the file and what to do, exit status 2, no traceback."""

import csv
import errno
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT
from test_curves import write_run as write_scored_run

from lenx import results

sys.path.insert(0, str(ROOT / "scripts"))
import compare
import curves

spec = importlib.util.spec_from_file_location("aggregate_cli", ROOT / "scripts" / "aggregate.py")
aggregate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(aggregate)
SCRIPTS = {"aggregate": aggregate, "curves": curves, "compare": compare}


def cli(script, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / f"{script}.py"), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def read_csv(path):
    return list(csv.DictReader(path.read_text().splitlines()))


def one_line(err: str) -> str:
    """The single `lenx: error:` line of stderr (warnings may precede it), with no traceback."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("lenx: error:")]
    assert len(errors) == 1 and err.strip().endswith(errors[0]), err
    return errors[0]


def refused(script, capsys, *args) -> str:
    """Run a script's main in this process; it must exit 2 with one error line (returned)."""
    with pytest.raises(SystemExit) as e:
        SCRIPTS[script].main([str(a) for a in args])
    assert e.value.code == 2
    return one_line(capsys.readouterr().err)


def row(**kw):
    return {"pos": "rope", "scaling": "none", "mode": "nonoverlapping", "train_len": 64, "eval_len": 64,
            "multiplier": 1, "ppl": 10.0, "status": "ok", "seed": 0, "targets_hash": "t", "corpus_hash": "c",
            "tokenizer_hash": "k", **kw}


def write_rows(path, rows, name="extrapolation"):
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path / f"{name}.jsonl"


# ------------------------------------------------------------------------------------- silent wrong summaries
def test_curves_counts_a_copied_run_once_and_names_both_directories(tmp_path, capsys):
    write_scored_run(tmp_path / "rope_s0", "rope", 0, {9: (100.0, 150.0)})
    write_scored_run(tmp_path / "rope_s1", "rope", 1, {9: (200.0, 250.0)})
    shutil.copytree(tmp_path / "rope_s0", tmp_path / "zz_copy_of_s0")  # same run config, same metrics
    curves.main([str(tmp_path), "--out", str(tmp_path / "out")])
    rows = [r for r in read_csv(tmp_path / "out" / "curves.csv")
            if r["metric"] == "extrap/ppl_1x"]
    assert [(r["runs"], float(r["mean"])) for r in rows] == [("2", 150.0)]  # not 3 runs, mean 133.3
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("curves: warning:") and "same run" in err[0]
    assert str(tmp_path / "rope_s0") in err[0] and str(tmp_path / "zz_copy_of_s0") in err[0]


def test_curves_says_which_scheme_has_no_shared_step_and_errors_when_none_is_left(tmp_path, capsys):
    write_scored_run(tmp_path / "rope_s0", "rope", 0, {9: (100.0, 150.0)})
    write_scored_run(tmp_path / "rope_s1", "rope", 1, {19: (90.0, 120.0)})  # scored at other steps
    write_scored_run(tmp_path / "alibi_s0", "alibi", 0, {9: (50.0, 50.0)})
    curves.main([str(tmp_path), "--out", str(tmp_path / "out")])
    labels = {r["label"] for r in read_csv(tmp_path / "out" / "curves.csv")}
    assert labels == {"alibi"}
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("curves: warning: rope: its 2 runs share no scored step"), err
    assert "rope_s0 steps 9..9" in err[0] and "rope_s1 steps 19..19" in err[0]
    shutil.rmtree(tmp_path / "alibi_s0")
    r = cli("curves", tmp_path, "--out", tmp_path / "out2")
    assert r.returncode == 2 and "rope: its 2 runs share no scored step" in r.stderr
    assert "has a step scored by all of its runs" in one_line(r.stderr) and "eval.every_n_steps" in r.stderr
    assert not (tmp_path / "out2").exists()


def ckpt_rows(run, ckpt, ppl, seed):
    return [row(ppl=ppl, seed=seed, run_dir=str(run), ckpt=f"/train/{run.name}/checkpoints/{ckpt}")]


def test_aggregate_never_merges_two_checkpoints_of_a_run(tmp_path, capsys):
    """rope_s0's last.ckpt and step10.ckpt scored into its run directory, rope_s1's step10.ckpt via evaluate.py into
    another directory: four models, not two re-scored ones."""
    s0, s1 = tmp_path / "train" / "rope_s0", tmp_path / "train" / "rope_s1"
    write_rows(s0, ckpt_rows(s0, "last.ckpt", 10.0, 0) + ckpt_rows(s0, "step10.ckpt", 30.0, 0))
    write_rows(s1, ckpt_rows(s1, "last.ckpt", 12.0, 1))
    write_rows(tmp_path / "eval" / "x", ckpt_rows(s1, "step10.ckpt", 34.0, 1))
    r = cli("aggregate", tmp_path)
    assert r.returncode == 2
    line = one_line(r.stderr)
    assert "2 different checkpoints (last.ckpt, step10.ckpt)" in line and "--ckpt last.ckpt" in line
    assert not (tmp_path / "summary.csv").exists()
    for pick, runs, mean in [("last.ckpt", "2", 11.0), ("step10", "2", 32.0)]:
        aggregate.main([str(tmp_path), "--ckpt", pick, "--out", str(tmp_path / pick)])
        (s,) = read_csv(tmp_path / pick / "summary.csv")
        assert (s["runs"], float(s["ppl_mean"])) == (runs, mean)
    assert "repeat a run" not in capsys.readouterr().out
    # the same checkpoint re-scored (another output directory) is still one model
    write_rows(tmp_path / "eval" / "again", ckpt_rows(s1, "last.ckpt", 12.0, 1))
    aggregate.main([str(tmp_path), "--ckpt", "last", "--out", str(tmp_path / "again")])
    (s,) = read_csv(tmp_path / "again" / "summary.csv")
    assert (s["runs"], float(s["ppl_mean"])) == ("2", 11.0)
    assert "1 rows repeat a run already counted" in capsys.readouterr().out
    assert "checkpoint named step99" in refused("aggregate", capsys, tmp_path, "--ckpt", "step99")


# -------------------------------------------------------------------------------- damaged inputs: one line each
DAMAGED_JSONL = {  # what a line holds -> what the error says about it
    "cut": ('{"pos": "rope", "mode": "nonover', "line 2: not valid JSON"),
    "not_a_row": ("[1, 2, 3]", "line 2: a JSON list, not a result row"),
    "missing": ('{"pos": "rope"}', "line 2: the row has no mode, "),
    "not_a_number": (json.dumps(row(ppl="12.5")), "line 2: ppl is '12.5', not a number"),
}


@pytest.mark.parametrize("script", ["aggregate", "compare"])
@pytest.mark.parametrize("damage", DAMAGED_JSONL)
def test_a_damaged_jsonl_line_is_one_line_naming_file_and_line(tmp_path, capsys, script, damage):
    text, says = DAMAGED_JSONL[damage]
    f = write_rows(tmp_path / "run", [row()])
    f.write_text(f.read_text() + text + "\n" + json.dumps(row()) + "\n")
    line = refused(script, capsys, tmp_path / "run")
    assert line.startswith(f"lenx: error: {f} {says}") and "repair or delete that line" in line


@pytest.mark.parametrize("name, text, says", [
    ("tasks", '{"task": "copy", "pos": "rope"}', "line 1: the row has no train_size, size, multiplier"),
    ("position_loss", '{"pos": "rope", "mode": "nonoverlapping", "train_len": 64', "line 1: not valid JSON"),
])
def test_damaged_task_and_position_rows_are_one_line(tmp_path, capsys, name, text, says):
    write_rows(tmp_path / "run", [row()])
    (tmp_path / "run" / f"{name}.jsonl").write_text(text + "\n")
    assert refused("aggregate", capsys, tmp_path).startswith(f"lenx: error: {tmp_path / 'run' / name}.jsonl {says}")


def test_not_utf8_and_missing_or_empty_inputs(tmp_path, capsys):
    f = write_rows(tmp_path / "run", [row()])
    f.write_bytes(f.read_bytes()[:10] + b"\xff\xfe\n")
    assert f"{f}: not UTF-8 text" in refused("aggregate", capsys, tmp_path)
    (tmp_path / "empty").mkdir()
    assert "no extrapolation.jsonl or tasks.jsonl rows under" in refused("aggregate", capsys, tmp_path / "empty")
    assert "compare: no extrapolation rows under" in refused("compare", capsys, tmp_path / "empty")
    for script in SCRIPTS:
        assert f"{tmp_path / 'nowhere'} does not exist: name" in refused(script, capsys, tmp_path / "nowhere")
    assert "is a file: name a sweep directory" in refused("curves", capsys, f)
    write_rows(tmp_path / "b", [row()])
    assert "--baseline 2: there are 2 runs" in refused("compare", capsys, tmp_path / "run", tmp_path / "b",
                                                       "--baseline", "2")


def damage_config(run, text):
    (run / "run_config.yaml").write_text(text)


def damage_metrics(run, text):
    (run / "logs" / "metrics.csv").write_text(text)


@pytest.mark.parametrize("damage, text, says", [
    (damage_config, "seq_len: 64\npos: [unclosed\n", "run_config.yaml line 3: not valid YAML"),
    (damage_config, "- a list\n", "run_config.yaml: a YAML list, not a run config"),
    (damage_config, "seq_len: 64\n", "run_config.yaml: no 'batch_size'"),
    (damage_config, "seq_len: 64\nbatch_size: many\npos: {}\n", "run_config.yaml: not a run config train.py wrote"),
    (damage_metrics, "step,extrap/ppl_1x\n9,abc\n", "metrics.csv line 2: extrap/ppl_1x 'abc' at step '9' is not"),
    (damage_metrics, "step,extrap/ppl_1x\n9.5,12\n", "metrics.csv line 2: extrap/ppl_1x '12' at step '9.5'"),
    (damage_metrics, "epoch,extrap/ppl_1x\n0,12\n", "metrics.csv: no step column (header: epoch,extrap/ppl_1x)"),
])
def test_a_damaged_run_is_one_line_for_curves(tmp_path, capsys, damage, text, says):
    write_scored_run(tmp_path / "rope_s0", "rope", 0, {9: (100.0, 150.0)})
    write_scored_run(tmp_path / "rope_s1", "rope", 1, {9: (100.0, 150.0)})
    damage(tmp_path / "rope_s1", text)
    line = refused("curves", capsys, tmp_path)
    assert line.startswith(f"lenx: error: {tmp_path / 'rope_s1'}") and says in line, line
    assert line.endswith("repair it or move that run directory out of the sweep, then rerun")


def test_damaged_inputs_through_the_command_lines(tmp_path):
    f = write_rows(tmp_path / "a", [row()])
    f.write_text(f.read_text()[:-9])  # the last line cut by a full disk or a killed copy
    for script in ("aggregate", "compare"):
        r = cli(script, tmp_path / "a")
        assert r.returncode == 2 and one_line(r.stderr).startswith(f"lenx: error: {f} line 1: not valid JSON")
    write_scored_run(tmp_path / "s", "rope", 0, {9: (100.0, 150.0)})
    damage_config(tmp_path / "s", "pos: {a: [\n")
    r = cli("curves", tmp_path / "s")
    assert r.returncode == 2 and "run_config.yaml line 2: not valid YAML" in one_line(r.stderr)


# ------------------------------------------------------------------------------------------------ outputs
def scored_tree(tmp_path):
    write_scored_run(tmp_path / "runs" / "rope_s0", "rope", 0, {9: (100.0, 150.0)})
    write_rows(tmp_path / "runs" / "rope_s0", [row()])
    return tmp_path / "runs"


@pytest.mark.parametrize("script", ["aggregate", "curves"])
def test_out_that_is_a_file_is_one_line_and_an_existing_directory_is_written_into(tmp_path, capsys, script):
    runs = scored_tree(tmp_path)
    (tmp_path / "afile").write_text("keep me")
    line = refused(script, capsys, runs, "--out", tmp_path / "afile")
    assert f"--out {tmp_path / 'afile'} is a file, not a directory" in line
    assert (tmp_path / "afile").read_text() == "keep me"
    assert "part of that path is a file" in refused(script, capsys, runs, "--out", tmp_path / "afile" / "sub")
    (tmp_path / "outdir").mkdir()
    (tmp_path / "outdir" / "notes.txt").write_text("mine")
    SCRIPTS[script].main([str(runs), "--out", str(tmp_path / "outdir")])
    assert (tmp_path / "outdir" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "outdir" / ("summary.md" if script == "aggregate" else "curves.md")).exists()


def test_compare_out_that_is_a_directory_is_one_line(tmp_path, capsys):
    write_rows(tmp_path / "a", [row()])
    write_rows(tmp_path / "b", [row(pos="alibi")])
    (tmp_path / "d").mkdir()
    assert f"--out {tmp_path / 'd'} is a directory: name a file" in refused(
        "compare", capsys, tmp_path / "a", tmp_path / "b", "--out", tmp_path / "d")


@pytest.mark.parametrize("failure", ["disk_full", "read_only"])
@pytest.mark.parametrize("script, first", [("aggregate", "summary.md"), ("curves", "curves.csv")])
def test_full_disk_or_unwritable_out_is_one_line_and_earlier_files_stay_whole(tmp_path, capsys, monkeypatch,
                                                                           script, first, failure):
    runs = scored_tree(tmp_path)
    SCRIPTS[script].main([str(runs), "--out", str(tmp_path / "out")])
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    capsys.readouterr()
    if failure == "disk_full":
        monkeypatch.setattr(results.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
        says = "No space"
    else:
        def mkstemp(dir, **kw):
            raise PermissionError(errno.EACCES, "Permission denied", str(dir))
        monkeypatch.setattr(results.tempfile, "mkstemp", mkstemp)
        says = "Permission denied"
    line = refused(script, capsys, runs, "--out", tmp_path / "out")
    assert line.startswith("lenx: error: cannot write") and says in line and "intact" in line
    after = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert after == before  # every earlier file whole, no temporary file left


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0500 directory")
def test_read_only_out_directory_is_one_line(tmp_path):
    runs = scored_tree(tmp_path)
    (tmp_path / "ro").mkdir(mode=0o500)
    r = cli("aggregate", runs, "--out", tmp_path / "ro")
    assert r.returncode == 2 and "Permission denied" in one_line(r.stderr)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_compare_out_on_a_full_device_is_one_line_after_the_table(tmp_path):
    write_rows(tmp_path / "a", [row()])
    write_rows(tmp_path / "b", [row(pos="alibi", ppl=11.0)])
    r = cli("compare", tmp_path / "a", tmp_path / "b", "--out", "/dev/full")
    assert r.returncode == 2 and "(+10.0%)" in r.stdout  # the table was printed before the write failed
    assert one_line(r.stderr).startswith("lenx: error: cannot write /dev/full: No space left on device")
