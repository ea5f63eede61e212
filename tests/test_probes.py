"""The repeated-segment probe: a model that copies scores low NLL on the repetition; the control does not."""

import math

import torch

from lenx.probes import repeat_segment


class Copier(torch.nn.Module):
    """Predicts the token that followed the previous occurrence of the current token (a perfect induction head)."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, idx_BT):
        B, T = idx_BT.shape
        logits = torch.zeros(B, T, self.vocab)
        for b in range(B):
            last = {}
            for t in range(T):
                tok = int(idx_BT[b, t])
                if tok in last and last[tok] + 1 < T:
                    logits[b, t, int(idx_BT[b, last[tok] + 1])] = 50.0
                last[tok] = t
        return logits


def test_probe_rows_and_a_copier_copies_at_every_distance():
    rows = repeat_segment(Copier(5000), vocab_size=5000, train_len=16, multipliers=[0.5, 1, 4], seg_len=8, trials=3,
                          device=torch.device("cpu"))
    assert [r["distance"] for r in rows] == [8, 16, 64]
    for r in rows:
        assert r["nll_repeat"] < 0.1  # copies
        assert r["nll_control"] > math.log(5000) - 1  # nothing to copy: about uniform
        assert r["copy_gain"] > 7


def test_a_model_without_memory_gains_nothing():
    class Uniform(torch.nn.Module):
        def forward(self, idx_BT):
            return torch.zeros(*idx_BT.shape, 100)

    rows = repeat_segment(Uniform(), vocab_size=100, train_len=8, multipliers=[1, 2], seg_len=4, trials=2,
                          device=torch.device("cpu"))
    assert all(abs(r["copy_gain"]) < 1e-6 and abs(r["nll_repeat"] - math.log(100)) < 1e-5 for r in rows)


# ------------------------------------------------------------------------------------------------ passkey retrieval
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import STDLIB  # noqa: E402

from lenx.data import EOD_TOKEN, train_tokenizer  # noqa: E402
from lenx.errors import ConfigError  # noqa: E402
from lenx.probes import Passkey, PasskeyWindows, passkey_accuracy  # noqa: E402


@pytest.fixture(scope="module")
def task():
    texts = [(STDLIB / name).read_text() for name in ("textwrap.py", "string.py", "bisect.py")]
    tok = train_tokenizer(texts + [Passkey.FILLER] * 5, vocab_size=400, min_frequency=2)
    return Passkey(tok, tok.token_to_id(EOD_TOKEN), digits=5)


def find(seq, sub):
    return [i for i in range(len(seq) - len(sub) + 1) if list(seq[i:i + len(sub)]) == list(sub)]


@pytest.mark.parametrize("length", [90, 200, 1000])
def test_passkey_sequence_layout(task, length):
    for depth in (0.0, 0.5, 1.0):
        ids, a = task.sequence(length, depth, np.random.default_rng(1))
        assert len(ids) == length and ids[0] == task.eod_id
        needle, question = find(ids, task.intro)[0], find(ids, task.question)[-1]
        key = ids[a:]
        assert list(ids[needle + len(task.intro):needle + len(task.intro) + len(key)]) == list(key)
        assert a == question + len(task.question)  # the answer closes the sequence
        if depth == 0.0:
            assert needle == 1  # right after the EOD
        if depth == 1.0:  # right before the question: the needle's closing words, then the question
            tail = task.enc(" is the pass key.")
            assert list(ids[question - len(tail):question]) == tail


def test_short_sequences_are_refused(task):
    with pytest.raises(ConfigError, match="passkey sequence needs at least"):
        task.sequence(20, 0.5, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="passkey sequence needs"):
        PasskeyWindows(task, 20, 10, seed=0)


class Retriever(torch.nn.Module):
    """Answers with the key after the first "The pass key is" when it lies within `window` tokens, else guesses
    token 0: retrieval accuracy must be 1 where the key is in reach and 0 where it is not."""

    def __init__(self, task, vocab, window):
        super().__init__()
        self.task, self.vocab, self.window = task, vocab, window

    def forward(self, idx_BT):
        B, T = idx_BT.shape
        logits = torch.zeros(B, T, self.vocab)
        for b in range(B):
            x = idx_BT[b].tolist()
            hits = find(x, self.task.intro)
            key_at, ans_at = hits[0] + len(self.task.intro), hits[-1] + len(self.task.intro)
            for t in range(ans_at - 1, T):
                if t - key_at < self.window:
                    logits[b, t, x[key_at + t - (ans_at - 1)]] = 10.0
        return logits


def test_passkey_accuracy_follows_what_the_model_can_reach(task):
    far = Retriever(task, 400, window=10**6)
    rows = passkey_accuracy(far, task, train_len=100, multipliers=[1, 2, 4], depths=[0.0, 1.0], trials=4,
                            device=torch.device("cpu"))
    assert [(r["eval_len"], r["depth"]) for r in rows] == [(100, 0.0), (100, 1.0), (200, 0.0), (200, 1.0),
                                                           (400, 0.0), (400, 1.0)]
    assert all(r["accuracy"] == 1.0 and r["status"] == "ok" for r in rows)
    near = Retriever(task, 400, window=100)  # reaches the key only when it sits near the question
    acc = {(r["eval_len"], r["depth"]): r["accuracy"] for r in passkey_accuracy(
        near, task, train_len=100, multipliers=[1, 4], depths=[0.0, 1.0], trials=4, device=torch.device("cpu"))}
    assert acc == {(100, 0.0): 1.0, (100, 1.0): 1.0, (400, 0.0): 0.0, (400, 1.0): 1.0}


def test_passkey_windows_are_deterministic_training_items(task):
    ds = PasskeyWindows(task, 100, 8, seed=3)
    assert len(ds) == 8 and all(len(ds[i]) == 101 for i in range(8))
    assert torch.equal(ds[5], PasskeyWindows(task, 100, 8, seed=3)[5])
    assert not torch.equal(ds[5], ds[6])
