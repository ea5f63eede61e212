"""Trust: a checkpoint never runs code, a result never claims provenance it did not use, the cache proves itself,
and bad values are one line before any work."""

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, compose_train

from lenx import data
from lenx.checkpoint import load_model, read_checkpoint, safe_pos_config, scaling_config
from lenx.errors import CheckpointError, ConfigError, CorpusError, user_errors
from lenx.evaluate import evaluate_checkpoint
from lenx.preflight import RunLock, check_job
from lenx.scoring import check_eval
from lenx.train import run

SMOKE = ["experiment=smoke", "data.vocab_size=300", "data.valid_fraction=0.2", "data.test_fraction=0.2",
         "trainer.enable_progress_bar=false", "eval.multipliers=[1,2]", "eval.probes.probe=null"]
EVAL = {"multipliers": [1, 2], "mode": "nonoverlapping", "stride": 0.5, "split": "validation", "tokens": 256,
        "batch_tokens": 1024, "device": "cpu", "probes": {"extrapolation": {"_target_": "lenx.extrapolation.Perplexity"}}, "progress": False}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def compose(tmp_path, tree, *overrides, run_dir="run"):
    return compose_train([*SMOKE, f"data.path={tree}", *overrides], tmp_path / run_dir)


def cli(script, *args, env=None):
    env = {**os.environ, "WANDB_MODE": "disabled", **(env or {})}
    return subprocess.run([sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def trained(tmp_path, tree, cache):
    """A smoke-trained rope checkpoint (the corpus tree can then be changed by the test)."""
    run(compose(tmp_path, tree, "pos=rope"))
    return tmp_path / "run" / "checkpoints" / "last.ckpt"


def poisoned(ckpt: Path, out: Path, edit) -> Path:
    state = torch.load(ckpt, weights_only=True)
    edit(state["hyper_parameters"]["cfg"])
    torch.save(state, out)
    return out


# ------------------------------------------------------------------------------------------------------ security
def payloads(marker: Path):
    write = {"_target_": "pathlib.Path.write_text", "self": str(marker), "data": "pwned"}
    return {
        "top-level _target_": lambda c: c.__setitem__("pos", {"_target_": "os.system",
                                                               "_args_": [f"touch {marker}"]}),
        "scaling _target_": lambda c: c["pos"].__setitem__("scaling", write),
        "nested node": lambda c: c["pos"].__setitem__("base", write),
        "unknown key": lambda c: c["pos"].__setitem__("evil", write),
        "_partial_ flipped": lambda c: c["pos"].__setitem__("_partial_", False),
        "interpolation": lambda c: c["pos"].__setitem__("base", "${oc.env:HOME}"),
    }


def test_checkpoint_payloads_are_refused_and_nothing_runs(trained, tmp_path):
    marker = tmp_path / "marker"
    for name, edit in payloads(marker).items():
        bad = poisoned(trained, tmp_path / "bad.ckpt", edit)
        with pytest.raises(CheckpointError, match="refusing|not a parameter|not one of lenx's schemes") as e:
            load_model(bad)
        assert "\n" not in str(e.value), name
        with pytest.raises(CheckpointError):
            evaluate_checkpoint(str(bad), EVAL, tmp_path / "e")
        assert not marker.exists(), name  # nothing the file named was imported or called
    model, cfg = load_model(trained)  # the genuine checkpoint still loads
    assert cfg["pos"]["_target_"] == "lenx.pos.rope.RoPE"


def test_checkpoint_payload_through_the_cli_is_one_line(trained, tmp_path, cache):
    marker = tmp_path / "marker"
    bad = poisoned(trained, tmp_path / "bad.ckpt", payloads(marker)["top-level _target_"])
    r = cli("evaluate.py", f"ckpt={bad}", f"hydra.run.dir={tmp_path / 'e'}", env={"LENX_CACHE": str(cache)})
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("lenx: error:") and "os.system" in r.stderr and not marker.exists()


def test_safe_pos_config_keeps_stored_parameters_and_lenx_targets():
    cfg = safe_pos_config({"_target_": "lenx.pos.rope.RoPE", "_partial_": True, "base": 500, "rotary_fraction": 0.5,
                           "scaling": {"method": "yarn", "factor": 4.0}}, "rope_partial")
    assert cfg["base"] == 500 and cfg["rotary_fraction"] == 0.5
    assert cfg["scaling"] == {**scaling_config("yarn"), "factor": 4.0}  # lenx's keys, the stored factor
    assert cfg["scaling"]["_target_"] == "lenx.pos.rope_scaling.YaRN"  # (a pre-class `method` names the class)
    new = safe_pos_config({**cfg, "scaling": {**scaling_config("pi"), "factor": 2.0}}, "rope_partial")
    assert new["scaling"] == {**scaling_config("pi"), "factor": 2.0}  # today's checkpoints: `_target_` names it


def test_a_learned_table_stored_with_the_pre_class_interpolate_scaling_rebuilds():
    stored = {"_target_": "lenx.pos.absolute.Learned", "_partial_": True, "max_positions": None}
    for method, flag in (("interpolate", True), ("none", False)):
        cfg = safe_pos_config({**stored, "scaling": {"method": method, "original_len": None}}, "learned")
        assert "scaling" not in cfg and cfg["interpolate"] is flag


def test_a_key_a_scaling_does_not_take_is_refused_before_any_work(tmp_path, tree, cache):
    with pytest.raises(ConfigError, match="unexpected keyword argument 'fator'"):
        run(compose(tmp_path, tree, "pos=rope", "pos/scaling=pi", "+pos.scaling.fator=2"))
    assert not (tmp_path / "run" / "checkpoints").exists() and not (cache / "index").exists()


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "pos/scaling/yarn", "yarn.yaml", "nope"])
def test_scalings_are_names_never_paths(name):
    with pytest.raises(ConfigError, match="unknown scaling"):
        scaling_config(name)


def test_hydra_core_is_pinned():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "hydra-core==1.3.2" not in deps and any(d.startswith("hydra-core==") for d in deps)


# ---------------------------------------------------------------------------------------------------- provenance
def edit_every_module(tree):
    """Every split of the corpus changes after training (the non-UTF-8 fixture file is left alone)."""
    for f in sorted((tree / "pkg").glob("*.py")):
        if f.name != "latin1.py":
            f.write_text(f.read_text() + "\n# edited after training\n")


def test_changed_corpus_is_refused_with_both_hashes_and_new_corpus_uses_the_checkpoints_tokenizer(
        trained, tmp_path, tree, monkeypatch):
    state = torch.load(trained, weights_only=True)
    recorded = state["hyper_parameters"]["cfg"]["provenance"]
    assert state["lenx_tokenizer"].encode() == (Path(recorded["dir"]) / "tokenizer.json").read_bytes()
    edit_every_module(tree)
    monkeypatch.setattr(data, "train_tokenizer", lambda *a, **k: pytest.fail("a new BPE was trained"))
    with pytest.raises(CorpusError, match=rf"corpus_hash {recorded['corpus_hash'][:12]} at training, [0-9a-f]{{12}} "
                                          "now.*eval.new_corpus=true"):
        evaluate_checkpoint(str(trained), EVAL, tmp_path / "e")
    rows = evaluate_checkpoint(str(trained), {**EVAL, "new_corpus": True}, tmp_path / "e")
    assert rows and all(r["tokenizer_hash"] == recorded["tokenizer_hash"] for r in rows)  # the trained tokenizer
    assert all(r["corpus_hash"] != recorded["corpus_hash"] for r in rows)  # and the hashes actually scored


def test_a_rerun_of_a_finished_run_on_a_changed_corpus_is_refused(trained, tmp_path, tree):
    edit_every_module(tree)
    with pytest.raises(CorpusError, match="differ from those this checkpoint was trained with"):
        run(compose(tmp_path, tree, "pos=rope"))


def test_rescoring_an_unchanged_corpus_reuses_the_cache(trained, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "tokenize_stream", lambda *a, **k: pytest.fail("re-tokenised"))
    rows = evaluate_checkpoint(str(trained), EVAL, tmp_path / "e")
    prov = torch.load(trained, weights_only=True)["hyper_parameters"]["cfg"]["provenance"]
    assert {r["corpus_hash"] for r in rows} == {prov["corpus_hash"]}


def dcfg(tree):
    return {"data": {"name": "stdlib", "path": str(tree), "valid_fraction": 0.2, "test_fraction": 0.2,
                     "vocab_size": 300, "min_frequency": 2, "cache_dir": None}}


def damage_cases():
    def cut_half(p, prov):
        f = Path(prov["dir"]) / "train.bin"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    def zero_bytes(p, prov):
        f = Path(prov["dir"]) / "validation.bin"
        b = bytearray(f.read_bytes())
        b[10:40] = bytes(30)
        f.write_bytes(bytes(b))

    def delete_bin(p, prov):
        (Path(prov["dir"]) / "test.bin").unlink()

    def odd_size(p, prov):
        f = Path(prov["dir"]) / "validation.bin"
        f.write_bytes(f.read_bytes() + b"\0")

    def cut_index(p, prov):
        p.write_text(p.read_text()[:40])

    return {"cut in half": cut_half, "zeroed bytes": zero_bytes, "deleted .bin": delete_bin, "odd size": odd_size,
            "cut index": cut_index}


@pytest.mark.parametrize("case", list(damage_cases()))
def test_a_damaged_cache_entry_is_rebuilt_never_used(tree, cache, case, caplog):
    c = dcfg(tree)
    first = data.prepare(c)
    good = {s: np.asarray(data.load_tokens(c, s)).copy() for s in data.SPLITS}
    data._VERIFIED.clear()  # a new process
    (index,) = (cache / "index").glob("*.json")
    damage_cases()[case](index, first)
    for s in data.SPLITS:
        np.testing.assert_array_equal(data.load_tokens(c, s), good[s])
    assert "damaged" in caplog.text


def test_cache_that_is_a_file_is_one_line(tmp_path, tree, monkeypatch):
    (tmp_path / "cachefile").write_text("x")
    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cachefile"))
    with pytest.raises(CorpusError, match="cachefile .*is a file, not a directory"):
        data.prepare(dcfg(tree))


def test_a_copied_cache_reads_its_own_files(tmp_path, tree, monkeypatch):
    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "a"))
    data.prepare(dcfg(tree))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")
    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "b"))
    monkeypatch.setattr(data, "tokenize_stream", lambda *a, **k: pytest.fail("rebuilt"))
    prov = data.prepare(dcfg(tree))
    assert prov["dir"].startswith(str(tmp_path / "b"))
    assert "/a/" not in (tmp_path / "b" / "index").glob("*.json").__next__().read_text()


# ------------------------------------------------------------------------------------------------------- faults
def test_a_second_process_on_a_run_directory_is_refused_with_the_holders_pid(tmp_path, tree, cache):
    (tmp_path / "run").mkdir()
    with RunLock(tmp_path / "run"):
        with pytest.raises(ConfigError, match=rf"in use by another lenx process \(pid {os.getpid()}\)"):
            run(compose(tmp_path, tree, "pos=none"))
    assert not (tmp_path / "run" / "checkpoints").exists()
    run(compose(tmp_path, tree, "pos=none"))  # released: the run goes through


def test_unwritable_output_directory_is_one_line_exit_2(tmp_path):
    (tmp_path / "afile").write_text("x")
    r = cli("train.py", "experiment=smoke", f"hydra.run.dir={tmp_path / 'afile'}/${{hydra:runtime.choices.pos}}")
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.startswith("lenx: error: cannot write to the run directory") and "Traceback" not in r.stderr


def test_result_files_get_the_umask_mode(tmp_path):
    from lenx import results

    old = os.umask(0o022)
    try:
        results.append_rows(tmp_path, [{"pos": "a", "eval_len": 1}])
    finally:
        os.umask(old)
    for f in ("extrapolation.jsonl", "extrapolation.csv"):
        assert (tmp_path / f).stat().st_mode & 0o777 == 0o644


def test_disk_full_line_names_the_file(tmp_path, capsys, monkeypatch):
    from lenx import results

    monkeypatch.setattr(results.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
    with pytest.raises(SystemExit), user_errors():
        results.append_rows(tmp_path, [{"pos": "b", "eval_len": 2}])
    assert f"cannot write {tmp_path / 'extrapolation.jsonl'}: No space" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------- bad values
@pytest.mark.parametrize("override, match", [
    ("seed=-1", "seed must be an integer >= 0"),
    ("ckpt_every=-1", "ckpt_every must be a positive integer"),
    ("model.dropout=1.5", r"model.dropout must be a probability in \[0, 1\)"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches must be a positive integer"),
    ("+pos/scaling=pi", r"pos/scaling does not apply to pos=alibi: only \['hope', 'irope', 'p_rope', 'rnope_swa', 'rope', 'rope_nope', 'rope_partial', 'xpos'\] take"),
    ("eval.split=bogus", "eval.split must be one of"),
])
def test_bad_values_are_refused_before_any_work(tmp_path, tree, cache, override, match):
    with pytest.raises(ConfigError, match=match):
        run(compose(tmp_path, tree, "pos=alibi", override))
    assert not (tmp_path / "run" / "checkpoints").exists() and not (cache / "index").exists()


@pytest.mark.parametrize("key", ["seg_len", "trials"])
def test_probe_sizes_of_zero_are_refused(tmp_path, tree, cache, key):
    cfg = compose(tmp_path, tree, "pos=none")
    cfg.eval.probes.probe = {"_target_": "lenx.probes.RepeatedSegment", "multipliers": [1], "seg_len": 4,
                             "trials": 2, key: 0}
    with pytest.raises(ConfigError, match=f"eval.probes.probe: {key} must be a positive integer"):
        run(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("seed", ["abc", 1.5, "a/b", -1, True])
def test_seed_must_be_a_plain_non_negative_integer(seed):
    from omegaconf import OmegaConf

    with pytest.raises(ConfigError, match="seed must be"):
        check_job(OmegaConf.create({"seed": seed}))


def test_bad_seed_on_the_command_line_creates_no_directory(tmp_path):
    r = cli("train.py", "experiment=smoke", "seed=a/b", f"hydra.run.dir={tmp_path}/out/s${{seed}}")
    assert r.returncode == 2 and r.stderr.startswith("lenx: error: seed must be") and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_evaluate_without_ckpt_is_one_line(tmp_path):
    r = cli("evaluate.py", f"hydra.run.dir={tmp_path / 'e'}")
    assert r.returncode == 2 and r.stderr.strip() == ("lenx: error: evaluate.py needs a checkpoint: "
                                                      "ckpt=<run dir>/checkpoints/last.ckpt (or a local Hugging "
                                                      "Face model: hf.path=<dir>)")


def test_huge_learned_table_is_refused_without_allocating(tmp_path, tree, cache):
    import resource

    with pytest.raises(ConfigError, match=r"parameters \(.* GiB with gradients and AdamW state\), more than"):
        run(compose(tmp_path, tree, "pos=learned", "seq_len=1000000000"))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 8 * 2**20  # KiB: never near 128 GB


def test_local_corpus_without_path(tmp_path, cache):
    with pytest.raises(ConfigError, match="data=local needs data.path="):
        run(compose_train([*SMOKE, "data=local"], tmp_path / "run"))


def test_checkpoint_path_that_is_a_directory_or_text(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file"):
        read_checkpoint(tmp_path)
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(CheckpointError, match="notes.txt is not a lenx checkpoint") as e:
        read_checkpoint(tmp_path / "notes.txt")
    assert "weights_only" not in str(e.value).replace("weights_only=True refused", "")


def test_pickled_code_in_a_checkpoint_is_not_a_lenx_checkpoint(tmp_path):
    torch.save({"state_dict": {}, "x": Path("/tmp")}, tmp_path / "p.ckpt")  # a non-tensor object
    with pytest.raises(CheckpointError, match="holds objects other than tensors and plain data") as e:
        read_checkpoint(tmp_path / "p.ckpt")
    assert "weights_only=False" not in str(e.value)


def test_nan_stop_without_a_checkpoint_says_so(tmp_path, tree, cache, monkeypatch):
    from lenx.lit import LenxModule, NonFiniteLossError

    real = LenxModule._loss
    monkeypatch.setattr(LenxModule, "_loss", lambda self, b, pos_T=None: real(self, b, pos_T) * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"no checkpoint was written before it \(ckpt_every=100\)"):
        run(compose(tmp_path, tree, "pos=none"))


def test_eval_tokens_beyond_the_split_are_reported(caplog):
    check_eval({**EVAL, "tokens": 10**9}, 5000, 32)
    assert "eval.tokens=1000000000 is more than the validation split holds (4999 targets): 4992 targets" in caplog.text


@pytest.mark.parametrize("scheme, over, match", [("cope", {"npos_max": 1}, "CoPE npos_max must be an integer >= 2"),
                                                 ("cpe", {"kernel_size": 0}, "CPE kernel_size must be a positive"),
                                                 ("shaw", {"max_distance": 1.5}, "max_distance must be a positive")])
def test_bad_scheme_sizes_are_one_line(scheme, over, match):
    from conftest import make_model

    with pytest.raises(ConfigError, match=match):
        make_model(scheme, **over)
