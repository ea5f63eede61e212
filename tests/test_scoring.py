"""The Probe interface: a probe defined outside lenx plugs in through the config and gets provenance columns."""

import json

import pytest
import torch
from conftest import compose_train

from lenx.errors import ConfigError
from lenx.results import PROVENANCE
from lenx.scoring import Probe, build_probes
from lenx.train import run


class LastTokenEntropy(Probe):
    """Mean entropy of the next-token distribution at the last position of windows of each length."""

    def __init__(self, windows: int = 2) -> None:
        self.windows = windows

    def run(self, model, run):
        done = {r["eval_len"] for r in run.done(self.name)}
        tokens = torch.from_numpy(run.tokens()[: self.windows * run.train_len * max(run.multipliers)].astype("int64"))
        for m in run.multipliers:
            L = m * run.train_len
            if L in done:
                continue
            with torch.no_grad():
                logp = model(tokens[: self.windows * L].view(self.windows, L).to(run.device))[:, -1].log_softmax(-1)
            yield {"eval_len": L, "entropy": float(-(logp.exp() * logp).sum(-1).mean())}


SMOKE = ["experiment=smoke", "data.vocab_size=300", "data.valid_fraction=0.2", "data.test_fraction=0.2",
         "trainer.enable_progress_bar=false", "eval.multipliers=[1,2]"]


def test_a_probe_from_outside_lenx_writes_its_rows_with_provenance(tmp_path, tree, monkeypatch):
    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))
    cfg = compose_train([*SMOKE, f"data.path={tree}", "pos=alibi", "eval.probes.probe=null",
                         f"+eval.probes.mine._target_={__name__}.LastTokenEntropy", "+eval.probes.mine.windows=3"],
                        tmp_path / "run")
    run(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "mine.jsonl").read_text().splitlines()]
    assert [r["eval_len"] for r in rows] == [32, 64] and all(0 < r["entropy"] < 6 for r in rows)
    assert all(set(PROVENANCE) <= set(r) and r["pos"] == "alibi" and len(r["corpus_hash"]) == 64 for r in rows)
    assert (tmp_path / "run" / "mine.csv").read_text().splitlines()[0].startswith("pos,scaling,extension,positions,train_len,seed")
    assert not (tmp_path / "run" / "probe.jsonl").exists()  # eval.probes.probe=null disabled it
    assert (tmp_path / "run" / "extrapolation.jsonl").exists()
    run(cfg)  # a rerun: the probe skips what it already wrote
    assert len((tmp_path / "run" / "mine.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("probes, match", [
    ({"x": {"windows": 2}}, "eval.probes.x must have a _target_"),
    ({"x": {"_target_": "lenx.probes.RepeatedSegment", "multipliers": [1], "nope": 1}}, "eval.probes.x: .*nope"),
    ({"x": {"_target_": "lenx.probes.PasskeyRetrieval", "multipliers": [1], "depths": [2.0]}},
     r"eval.probes.x: depths must be numbers in \[0, 1\]"),
    ({"x": {"_target_": "collections.OrderedDict"}}, "is not a lenx.scoring.Probe"),
])
def test_bad_probe_configs_are_one_line(probes, match):
    with pytest.raises(ConfigError, match=match):
        build_probes({"probes": probes})
