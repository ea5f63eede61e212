"""scripts/benchmark.py runs end to end on a few schemes and writes the report the docs quote (figures are
measured by the script itself, never asserted here)."""

import json
import math
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_benchmark_writes_every_section(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "scripts/benchmark.py", "--schemes", "none,alibi,learned", "--steps", "3",
                        "--warmup", "1", "--repeats", "1", "--overhead-steps", "2", "--overhead-repeats", "1",
                        "--seq-len", "32", "--long-seq-len", "32", "--long-schemes", "none,alibi,learned",
                        "--compile-schemes", "", "--task-steps", "2", "--task-warmup", "1", "--task-repeats", "1",
                        "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())
    t = rep["train_fp32"]
    assert math.isclose(t["lightning_over_bare"], t["lightning_tokens_per_s"]["median"]
                        / t["bare_tokens_per_s"]["median"])
    assert rep["schemes"]["none"]["train_relative_to_none"] == 1.0
    learned = rep["schemes"]["learned"]["eval"]
    assert learned["1"]["tokens_per_s"] > 0 and learned["4"] is None and learned["16"] is None  # past its table
    alibi = rep["long"]["alibi"]
    assert alibi["growth"] == alibi["eval"]["16"]["added_mib"] / alibi["eval"]["8"]["added_mib"]
    assert alibi["over_none_mib"] == alibi["eval"]["16"]["added_mib"] - rep["long"]["none"]["eval"]["16"]["added_mib"]
    assert rep["long"]["learned"]["growth"] is None and rep["long"]["learned"]["over_none_mib"] is None
    assert rep["data_over_training"] > 1
    assert "lightning" in r.stdout and "long context" in r.stdout and "out of range" in r.stdout
    assert rep["task"]["task"] == "copy" and "task row: copy" in r.stdout


def test_benchmark_task_row_splits_a_task_step_and_compares_the_lm_of_the_same_shape(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "scripts/benchmark.py", "--task-only", "--task", "reverse", "--task-shape",
                        "32,1,2", "--task-batch", "4", "--task-steps", "2", "--task-warmup", "1", "--task-repeats",
                        "1", "--bf16", "off", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    t = json.loads(out.read_text())["task"]
    assert t["task"] == "reverse" and t["shape"] == {"d_model": 32, "n_layers": 1, "n_heads": 2}
    assert t["vocab"] == {"task": 3 + 16, "lm": 8192} and t["seq_len"] == 2 * 16 + 1
    assert t["flops_per_step"]["task"] < t["flops_per_step"]["lm"]  # same shape, the LM's unembedding is wider
    assert t["auto_precision"]["task"] == "32-true"  # a tiny task step never gains from bf16 autocast on a CPU
    f = t["32-true"]
    assert math.isclose(f["task_over_lm"], f["task_tokens_per_s"]["median"] / f["lm_tokens_per_s"]["median"])
    assert 0 < f["share_data_generation"] < 1 and 0 < f["share_model"]
    assert "bf16-mixed" not in t and "task row: reverse" in r.stdout


def test_benchmark_refuses_an_unknown_scheme(tmp_path):
    r = subprocess.run([sys.executable, "scripts/benchmark.py", "--schemes", "alibi,nonexistent",
                        "--out", str(tmp_path / "b.json")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "unknown scheme(s) ['nonexistent']" in r.stderr
    assert not (tmp_path / "b.json").exists()


def test_benchmark_extensions_reports_every_method_that_applies(tmp_path):
    out = tmp_path / "ext.json"
    r = subprocess.run([sys.executable, "scripts/benchmark_extensions.py", "--schemes", "rope,none,fire",
                        "--seq-len", "32", "--multiplier", "4", "--repeats", "1", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())["extensions"]
    assert len(rep["rope"]) == 8 and all(v["tokens_per_s"] > 0 for v in rep["rope"].values())
    assert "rerope" not in rep["none"] and "lm_infinite" in rep["none"]  # NoPE: windows only
    assert sorted(rep["fire"]) == ["logn", "none"]  # FIRE: log-n only
    assert "(1.00x)" in r.stdout


def test_benchmark_long_reports_both_paths_per_scheme(tmp_path):
    """scripts/benchmark_long.py: before (attention=reference) and after for a scheme with a fast path, one number for
    a scheme without one, `out of range` past a learned table; the table's ratios are the JSON's."""
    out = tmp_path / "long.json"
    r = subprocess.run([sys.executable, "scripts/benchmark_long.py", "--schemes", "cope,cpe,learned", "--lengths",
                        "64,96", "--train-len", "64", "--repeats", "1", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())["schemes"]
    cope, rope = rep["cope"]["96"], rep["rope"]["96"]
    assert cope["fast"]["tokens_per_s"] > 0 and cope["reference"]["tokens_per_s"] > 0
    assert cope["max_abs_logit_diff"] < 1e-4  # the chunk mask against the mask path, same model
    assert rep["cpe"]["96"].get("same_path") and rep["learned"]["96"] is None
    row = next(line for line in r.stdout.splitlines() if line.startswith("| cope |")).split(" | ")
    ratio = cope["fast"]["tokens_per_s"] / cope["rope_beside"]["tokens_per_s"]  # RoPE measured beside it
    assert rope["fast"]["tokens_per_s"] > 0 and "rope_beside" not in rope
    assert row[-4] == f"{ratio:.2f}" and row[-3] == f"{cope['reference']['peak_mib']:.0f}"
    learned = next(line for line in r.stdout.splitlines() if line.startswith("| learned |"))
    assert learned.count("out of range") == 1  # at 96 tokens, past its 64 rows; scored at 64


def test_benchmark_long_takes_schemes_with_attention_modifiers(tmp_path):
    """`--schemes rope+ssmax,alibi+sinks`: each measured with its modifiers (lenx.attention.Modifiers) beside RoPE;
    an unknown modifier is one line."""
    out = tmp_path / "long.json"
    r = subprocess.run([sys.executable, "scripts/benchmark_long.py", "--schemes", "rope+ssmax,alibi+sinks",
                        "--lengths", "64", "--train-len", "32", "--repeats", "1", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())["schemes"]
    assert sorted(rep) == ["alibi+sinks", "rope", "rope+ssmax"]
    assert rep["rope+ssmax"]["64"]["fast"]["tokens_per_s"] > 0 and rep["rope+ssmax"]["64"]["same_path"]
    assert rep["alibi+sinks"]["64"]["max_abs_logit_diff"] < 1e-4  # sinks: the mask path on both settings
    bad = subprocess.run([sys.executable, "scripts/benchmark_long.py", "--schemes", "rope+bogus", "--lengths", "64",
                          "--out", str(tmp_path / "x.json")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "unknown attention modifier(s) ['bogus']" in bad.stderr


def test_benchmark_long_takes_another_preset_and_can_skip_the_reference(tmp_path):
    """`--model small`: every scheme's model at that preset (its shape in the report); `--no-reference`: the float-mask
    path not measured, marked so (no logit difference claimed); an unknown preset is one line."""
    out = tmp_path / "long.json"
    r = subprocess.run([sys.executable, "scripts/benchmark_long.py", "--schemes", "alibi", "--model", "small",
                        "--no-reference", "--lengths", "64", "--train-len", "32", "--repeats", "1", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["model"]["d_model"] == 384 and rep["model"]["n_heads"] == 6 and rep["args"]["model"] == "small"
    assert len(rep["git_sha"]) == 40 and rep["torch"] == __import__("torch").__version__  # provenance
    alibi = rep["schemes"]["alibi"]["64"]
    assert alibi["reference_skipped"] and alibi["max_abs_logit_diff"] is None and alibi["fast"]["tokens_per_s"] > 0
    row = next(line for line in r.stdout.splitlines() if line.startswith("| alibi |")).split(" | ")
    assert row[1] == "-" and row[3] == "-" and row[5] == "-"  # before: not measured, not shown as after's figure
    bad = subprocess.run([sys.executable, "scripts/benchmark_long.py", "--model", "huge", "--out",
                          str(tmp_path / "x.json")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "unknown --model 'huge'" in bad.stderr and "small" in bad.stderr


def test_benchmark_preset_reports_tokens_per_s_and_mfu_per_scheme(tmp_path):
    """--preset: the preset's model with each scheme, in the precision named, MFU = tokens/s x FLOPs per token /
    the peak it names (CPU: measured here). Tiny shapes: the figures are not the point, the arithmetic is."""
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "scripts/benchmark.py", "--preset", "llama_125m", "--schemes", "rope,alibi",
                        "--seq-len", "8", "--batch", "1", "--steps", "2", "--warmup", "1", "--repeats", "1",
                        "--bf16", "off", "--vocab", "512", "--out", str(out)], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    row = json.loads(out.read_text())["presets"]["llama_125m"]
    assert row["precision"] == "32-true" and "float32 matmul peak" in row["peak"]
    total = 84_953_856 + 2 * 512 * 768  # the preset's documented non-embedding count, and a 512-token vocabulary
    assert row["params"]["total"] == total and row["flops_per_token"] == 6 * (total - 512 * 768) + 12 * 12 * 768 * 8
    for s in ("rope", "alibi"):
        v = row["schemes"][s]["eager"]
        assert v["mfu"] == v["tokens_per_s"]["median"] * row["flops_per_token"] / row["peak_flops"]
        assert "compiled" not in row["schemes"][s]  # --preset-compile auto: CUDA only
    assert "MFU against CPU" in r.stdout and "llama_125m: 85.7 M parameters" in r.stdout


@pytest.mark.parametrize("pos", ["none", "learned", "rope"])
def test_the_plain_model_has_lenx_models_parameters_and_is_causal(pos):
    """The end-to-end comparison's plain model (benchlib.PlainGPT) is the same model as lenx's of that shape: as
    many parameters, and no output that reads a later token."""
    import torch

    sys.path.insert(0, str(ROOT / "scripts"))
    from benchlib import PlainGPT, config

    from lenx.lit import build_model

    cfg = config(pos, 32, 2, 1)
    m = cfg["model"]
    plain = PlainGPT(vocab_size=cfg["data"]["vocab_size"], d_model=m["d_model"], n_layers=m["n_layers"],
                     n_heads=m["n_heads"], seq_len=32, pos=pos, mlp_ratio=m["mlp_ratio"], bias=m["bias"])
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in build_model(cfg).parameters())
    idx = torch.randint(0, 100, (1, 32))
    changed = idx.clone()
    changed[0, 20:] = (changed[0, 20:] + 1) % 100
    with torch.no_grad():
        a, b = plain(idx), plain(changed)
    assert torch.equal(a[0, :20], b[0, :20]) and not torch.allclose(a[0, 20:], b[0, 20:])


@pytest.mark.slow
def test_benchmark_end_to_end_times_train_py_against_a_plain_loop(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "scripts/benchmark.py", "--end-to-end", "--e2e-steps", "3", "--e2e-repeats",
                        "1", "--warmup", "1", "--e2e-precision", "32-true", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    e = json.loads(out.read_text())["end_to_end"]
    assert e["precision"] == {"train.py": "32-true", "loops": "fp32"} and e["steps"] == [3, 6]
    assert math.isclose(e["train_py_over_plain"], e["train_py_over_lenx_loop"] * e["lenx_loop_over_plain"])
    assert "harness (train.py / lenx loop)" in r.stdout
