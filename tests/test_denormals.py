"""Scoring on CPU flushes denormal floats to zero inside the Decoder's layers (lenx.hardware.denormals_flushed):
only without a gradient, restored afterwards, and without changing a logit."""

import torch
from conftest import make_model

from lenx import model as lenx_model
from lenx.hardware import denormals_flushed, flushing_denormals


def test_the_state_is_restored_and_nesting_keeps_it():
    assert not flushing_denormals()
    with denormals_flushed():
        assert flushing_denormals()
        tiny = torch.tensor([1e-39]) * 1.0  # a denormal result is flushed to zero inside
        assert tiny.item() == 0.0
        with denormals_flushed():
            assert flushing_denormals()
        assert flushing_denormals()  # the inner block did not turn it off
    assert not flushing_denormals()
    with denormals_flushed(on=False):
        assert not flushing_denormals()
    assert (torch.tensor([1e-39]) * 1.0).item() > 0  # IEEE again


def test_scoring_flushes_inside_the_layers_training_does_not(monkeypatch):
    m = make_model("alibi", train_len=16)
    seen = []
    forward = lenx_model.Block.forward

    def spy(self, *a):
        seen.append(flushing_denormals())
        return forward(self, *a)

    monkeypatch.setattr(lenx_model.Block, "forward", spy)
    x = torch.randint(0, 50, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        m(x)
    assert seen == [True, True] and not flushing_denormals()
    seen.clear()
    m(x)
    assert seen == [False, False]


def test_flushing_changes_no_logit_where_denormals_occur(monkeypatch):
    """ALiBi at 600 tokens: slope 1/4 puts the keys 350-415 back at exp(-87..-104), the denormal range."""
    m = make_model("alibi", train_len=16, n_heads=4, d_model=32)
    x = torch.randint(0, 50, (1, 600), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        flushed = m(x)
        monkeypatch.setattr(lenx_model, "denormals_flushed", lambda on=True: denormals_flushed(False))
        ieee = m(x)
    torch.testing.assert_close(flushed, ieee, rtol=0, atol=1e-6)
