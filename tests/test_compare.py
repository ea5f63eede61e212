"""scripts/compare.py: runs lined up on the same scored tokens, refused when the tokens differ."""

import importlib.util
import json
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))  # compare.py reads rows with aggregate.py's reader
spec = importlib.util.spec_from_file_location("compare", ROOT / "scripts" / "compare.py")
compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare)


def write_run(path, pos, ppls, targets="abc", stride_frac=1.0):
    path.mkdir(parents=True)
    rows = [{"pos": pos, "scaling": "none", "seed": 0, "mode": "nonoverlapping" if stride_frac == 1 else "sliding",
             "context": "stream", "split": "validation", "eval_len": L, "stride": int(L * stride_frac), "ppl": p,
             "ppl_ci_low": p - 1, "ppl_ci_high": p + 1, "status": "ok", "targets_hash": targets,
             "corpus_hash": "c", "tokenizer_hash": "t"} for L, p in zip([64, 128], ppls)]
    (path / "extrapolation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_same_tokens_are_lined_up_with_the_change_vs_the_baseline(tmp_path):
    a = write_run(tmp_path / "a", "rope", [10.0, 20.0])
    b = write_run(tmp_path / "b", "alibi", [11.0, 15.0])
    text = compare.main([str(a), str(b), "--out", str(tmp_path / "cmp.txt")])
    alibi = next(line for line in text.splitlines() if line.startswith("alibi s0"))
    assert "11.00 [10.0,12.0] (+10.0%)" in alibi and "15.00 [14.0,16.0] (-25.0%)" in alibi
    assert (tmp_path / "cmp.txt").read_text().strip() == text.strip()


def test_different_scored_tokens_are_refused(tmp_path):
    a = write_run(tmp_path / "a", "rope", [10.0, 20.0])
    b = write_run(tmp_path / "b", "alibi", [11.0, 15.0], targets="xyz")
    with pytest.raises(SystemExit, match="targets_hash differs"):
        compare.main([str(a), str(b)])
    assert "WARNING" in compare.main([str(a), str(b), "--allow-different-tokens"])


def test_rows_only_match_the_same_mode_and_stride(tmp_path, capsys):
    a = write_run(tmp_path / "a", "rope", [10.0, 20.0])
    b = write_run(tmp_path / "b", "alibi", [11.0, 15.0], stride_frac=0.5)
    with pytest.raises(SystemExit) as e:
        compare.main([str(a), str(b)])
    assert e.value.code == 2 and "lenx: error: compare: the runs share no" in capsys.readouterr().err


def test_paired_bootstrap_of_the_difference(tmp_path):
    """Two models on the same blocks: text difficulty varies a lot between blocks (wide row intervals that
    overlap), but model b is better on every block by ~2%: the paired interval of the change excludes 0."""
    import numpy as np

    rng = np.random.default_rng(0)
    base = rng.uniform(3.0, 6.0, 64) * 64  # NLL sums of 64 blocks of 64 tokens: very different texts
    better = base - 64 * rng.normal(0.02, 0.005, 64)
    paths = []
    for name, units in (("a", base), ("b", better)):
        path = write_run(tmp_path / name, name, [20.0, 20.0])
        rows = [json.loads(line) for line in (path / "extrapolation.jsonl").read_text().splitlines()]
        for r in rows:
            r.update(units_nll=units.tolist(), units_tokens=[64] * 64, units_run=4,
                     ppl=float(np.exp(units.sum() / 4096)))
        (path / "extrapolation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(path)
    lo, hi = compare.paired_change(rows[0], json.loads((paths[0] / "extrapolation.jsonl").read_text().splitlines()[0]))
    assert -2.6 < lo < hi < -1.4  # exp(-0.02) - 1 = -1.98%, tightly
    text = compare.main([str(p) for p in paths])
    assert "paired bootstrap" in text and "[-2." in text
    # Without per-unit sums (older rows) there is no paired interval, only the change.
    assert compare.paired_change({"ppl": 1.0}, {"ppl": 1.0}) is None
