"""The papers' task protocols (configs/protocol/): each preset composes into the configuration its paper specifies
(values read from the authors' code: McGill-NLP/length-generalization for Kazemnejad et al. 2023,
arXiv:2305.19466; google-deepmind/randomized_positional_encodings for Ruoss et al. 2023, arXiv:2305.16843), and
its scoring rule holds on hand-made cases (under kazemnejad, an answer that does not stop is wrong)."""

import json
import types

import pytest
import torch
from conftest import compose_train
from omegaconf import OmegaConf

from lenx import tasks as T
from lenx.errors import ConfigError
from lenx.scoring import build_probes
from lenx.tasks.probe import resolve_sizes

# (protocol, data) -> what the paper's code specifies: alphabet (None: bits), training sizes, test sizes
PAPERS = {
    # make_copy_dataset.py / make_reverse_dataset.py: get_unique_tokens()[:100], --train_min 4, splits *_tr20_ts40
    ("kazemnejad", "copy"): (100, range(4, 21), range(21, 41)),
    ("kazemnejad", "reverse"): (100, range(4, 21), range(21, 41)),
    # make_sort_dataset.py: get_unique_tokens()[:50] (single digit), split len_sngd_tr8_ts16
    ("kazemnejad", "sort"): (50, range(4, 9), range(9, 17)),
    # make_parity_dataset.py: --train_min 3, split len_tr8_ts16
    ("kazemnejad", "parity"): (None, range(3, 9), range(9, 17)),
    # constants.py: duplicate_string / reverse_string vocab_size=2, bucket_sort vocab_size=5, parity_check bits;
    # example.py: UniformCurriculum(range(1, 41)); the paper's test lengths 41..500
    ("ruoss", "copy"): (2, range(1, 41), range(41, 501)),
    ("ruoss", "reverse"): (2, range(1, 41), range(41, 501)),
    ("ruoss", "sort"): (5, range(1, 41), range(41, 501)),
    ("ruoss", "parity"): (None, range(1, 41), range(41, 501)),
}


def resolved(overrides, tmp_path):
    return OmegaConf.to_container(compose_train(overrides, tmp_path), resolve=True)


@pytest.mark.parametrize("protocol, data", PAPERS, ids=lambda x: str(x))
def test_each_preset_composes_into_the_papers_configuration(protocol, data, tmp_path):
    alphabet, train, test = PAPERS[(protocol, data)]
    cfg = resolved([f"data={data}", f"protocol={protocol}"], tmp_path)
    task = T.build_task(cfg)
    assert (task.min_size, task.train_size) == (train.start, train.stop - 1)
    assert getattr(task, "alphabet", None) == alphabet
    assert task.vocab == [*T.SPECIALS, *task.symbols(), *(["<eos>"] if protocol == "kazemnejad" else [])]
    (probe,) = [p for p in build_probes(cfg["eval"]) if isinstance(p, T.TaskAccuracy)]
    assert probe.protocol == protocol and probe.decode == "greedy" and probe.multipliers == [1]
    assert resolve_sizes(probe.sizes, task.train_size) == list(test)
    assert probe.instances == (512 if protocol == "ruoss" else 100)  # ruoss: range_test_total_batch_size=512
    if protocol == "kazemnejad":  # the test sizes follow N: every size in (N, 2N] whatever the training size
        cfg = resolved([f"data={data}", f"protocol={protocol}", "data.task.train_size=10"], tmp_path)
        assert resolve_sizes(cfg["eval"]["probes"]["tasks"]["sizes"], 10) == list(range(11, 21))


def test_without_a_protocol_nothing_changes(tmp_path):
    cfg = resolved(["data=copy"], tmp_path)
    assert "eos" not in cfg["data"]["task"] and cfg["data"]["task"]["alphabet"] == 16
    tasks_cfg = cfg["eval"]["probes"]["tasks"]
    assert tasks_cfg["protocol"] is None and tasks_cfg["sizes"] is None and tasks_cfg["decode"] == "teacher"


def test_a_task_without_a_preset_stops_with_one_line(tmp_path):
    cfg = resolved(["data=addition", "protocol=kazemnejad"], tmp_path)
    with pytest.raises(ConfigError, match="protocol=kazemnejad scores a set of test sizes and .* is not set"):
        build_probes(cfg["eval"])


def test_sizes_and_their_checks():
    assert resolve_sizes("N+1..2N", 20) == list(range(21, 41))
    assert resolve_sizes("2N-1..2N+1", 4) == [7, 8, 9] and resolve_sizes([3, 5], 8) == [3, 5]
    assert resolve_sizes("41..500", 40)[::459] == [41, 500]
    for bad in ["N+1", "x..3", "5..2", "N*2..3"]:
        with pytest.raises(ConfigError, match="eval.probes.tasks.sizes"):
            resolve_sizes(bad, 4)
    with pytest.raises(ConfigError, match="greedy generation"):
        T.TaskAccuracy(multipliers=[1], sizes="N+1..2N", protocol="kazemnejad", decode="teacher")
    with pytest.raises(ConfigError, match="eval.probes.tasks.sizes is not set"):
        T.TaskAccuracy(multipliers=[1], protocol="ruoss")
    with pytest.raises(ConfigError, match="protocol must be null or one of"):
        T.TaskAccuracy(multipliers=[1], sizes="N+1..2N", protocol="deletang")


def test_an_end_token_is_appended_and_changes_nothing_else():
    plain = T.build_task({"data": {"task": {"_target_": "lenx.tasks.Copy", "train_size": 4, "alphabet": 3}}})
    ended = T.build_task({"data": {"task": {"_target_": "lenx.tasks.Copy", "train_size": 4, "alphabet": 3,
                                            "eos": True}}})
    assert ended.vocab == plain.vocab + ["<eos>"] and ended.eos_id == plain.vocab_size and plain.eos_id is None
    ids, mask = ended.instance(0, "train", 0, 3)
    assert ids[-1] == ended.eos_id and mask[-1] and mask.sum() == 3 + 1  # the answer's 3 symbols, then <eos>
    assert list(ids[:-1]) == [T.BOS, *ids[1:4], T.SEP, *ids[1:4]]  # the copy itself, as without the end token
    assert ended.seq_len() == plain.seq_len() + 1
    with pytest.raises(ConfigError, match="data.task.eos must be true or false"):
        T.build_task({"data": {"task": {"_target_": "lenx.tasks.Copy", "train_size": 4, "eos": "yes"}}})


class Copier(torch.nn.Module):
    """A hand-made copy model for `<bos> x1..xn <sep> x1..xn <eos>`: it predicts each answer symbol from the
    prompt and then, after the n-th, `stop` (what it emits where the answer ends): <eos> (it stops), a symbol (it
    runs on), or it emits <eos> already after `early` symbols."""

    def __init__(self, task, stop="eos", early=None):
        super().__init__()
        self.task, self.stop, self.early = task, stop, early

    def forward(self, idx_BT):
        B, Tn = idx_BT.shape
        out = torch.zeros(B, Tn, self.task.vocab_size)
        for b in range(B):
            ids = idx_BT[b].tolist()
            if T.SEP not in ids:
                continue
            sep = ids.index(T.SEP)
            for t in range(sep, Tn):  # the logit at t predicts token t + 1: answer symbol j = t - sep
                j, n = t - sep, sep - 1
                if self.early is not None and j == self.early:
                    nxt = self.task.eos_id
                elif j < n:
                    nxt = ids[1 + j]
                else:
                    nxt = self.task.eos_id if self.stop == "eos" else self.task.id("s0")
                out[b, t, nxt] = 1.0
        return out


def test_kazemnejad_counts_an_answer_that_does_not_stop_as_wrong():
    task = T.Copy(train_size=2, alphabet=3)
    task.eos = True
    score = lambda model: list(T.task_accuracy(model, task, multipliers=[], sizes=[3, 4], instances=5, batch=5,
                                               decode="greedy", device="cpu", protocol="kazemnejad"))
    stops, runs_on, early = score(Copier(task)), score(Copier(task, stop="s0")), score(Copier(task, early=1))
    assert [r["size"] for r in stops] == [3, 4] and {r["size_set"] for r in stops} == {"3..4"}
    assert [r["multiplier"] for r in stops] == [1.5, 2.0] and {r["protocol"] for r in stops} == {"kazemnejad"}
    assert all(r["accuracy"] == 1.0 and r["token_accuracy"] == 1.0 for r in stops)
    # every symbol right, but no <eos> where the answer ends: exact match 0, per token n of n + 1
    assert [r["accuracy"] for r in runs_on] == [0.0, 0.0]
    assert [r["token_accuracy"] for r in runs_on] == [pytest.approx(3 / 4), pytest.approx(4 / 5)]
    # <eos> after the first symbol (greedy: the model's own tokens are fed back): wrong too
    assert [r["accuracy"] for r in early] == [0.0, 0.0]


def test_kazemnejad_refuses_a_run_without_an_end_token():
    probe = T.TaskAccuracy(multipliers=[1], sizes="N+1..2N", protocol="kazemnejad", decode="greedy")
    run = types.SimpleNamespace(cfg={"data": {"task": {"_target_": "lenx.tasks.Copy", "train_size": 2}}},
                                done=lambda name: [], device="cpu")
    with pytest.raises(ConfigError, match="needs an end token"):
        list(probe.run(Copier(T.Copy(train_size=2)), run))


def test_ruoss_scores_per_token_over_each_test_size():
    """Ruoss et al.'s per-length score is per-token accuracy (sum(mask * correct) / sum(mask)): a model that gets
    the first symbol wrong, then the rest right, scores (n - 1) / n at size n."""
    task = T.Reverse(train_size=2, alphabet=2)

    class FirstWrong(torch.nn.Module):
        def forward(self, idx_BT):
            B, Tn = idx_BT.shape
            out = torch.zeros(B, Tn, task.vocab_size)
            for b in range(B):
                ids = idx_BT[b].tolist()
                sep = ids.index(T.SEP) if T.SEP in ids else Tn
                for t in range(sep, Tn):
                    j, n = t - sep, sep - 1
                    if j < n:
                        right = ids[n - j]  # the reversed string, from the prompt
                        out[b, t, right if j else task.id("s1") + task.id("s0") - right] = 1.0
            return out

    rows = list(T.task_accuracy(FirstWrong(), task, multipliers=[], sizes=[3, 4], instances=4, batch=4,
                                decode="greedy", device="cpu", protocol="ruoss"))
    assert [r["token_accuracy"] for r in rows] == [pytest.approx(2 / 3), pytest.approx(3 / 4)]
    assert [r["accuracy"] for r in rows] == [0.0, 0.0]


def test_a_protocol_run_end_to_end_and_its_table(tmp_path, monkeypatch):
    """data=copy protocol=kazemnejad, shrunk (N = 3, 2 instances per size): the rows carry the size set and the
    protocol, a rerun scores nothing again, and aggregate.py gives the set's mean as a column."""
    import importlib.util

    from conftest import ROOT

    from lenx.train import run

    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))
    cfg = compose_train(["data=copy", "protocol=kazemnejad", "pos=alibi", "experiment=smoke", "data.task.train_size=3",
                         "data.task.min_size=1", "trainer.enable_progress_bar=false", "eval.probes.tasks.instances=2"],
                        tmp_path / "run")
    run(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "tasks.jsonl").read_text().splitlines()]
    assert [(r["size"], r["size_set"]) for r in rows] == [(3, ""), (4, "4..6"), (5, "4..6"), (6, "4..6")]
    assert {(r["protocol"], r["decode"]) for r in rows} == {("kazemnejad", "greedy")}
    run(cfg)  # finished and scored: nothing new
    assert len((tmp_path / "run" / "tasks.jsonl").read_text().splitlines()) == 4
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # aggregate.py reads through its siblings (tables_io, ...)
    spec = importlib.util.spec_from_file_location("aggregate", ROOT / "scripts" / "aggregate.py")
    aggregate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(aggregate)
    aggregate.main([str(tmp_path / "run"), "--out", str(tmp_path / "agg")])
    md = (tmp_path / "agg" / "tasks_summary.md").read_text()
    assert "| alibi | none | greedy | kazemnejad (N=3; paper: exact match) |" in md and "sizes 4..6 (mean)" in md
