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
