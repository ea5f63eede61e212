"""Training-time windows and the per-layer NoPE/RoPE hybrids (issue 35): a trained window as transformers'
sliding-window causal mask (key j visible to query i iff i - window < j <= i), RNoPE-SWA (Yang et al. 2025,
arXiv:2501.18795) and SmolLM3's no_rope_layers (layer i rotates iff (i + 1) % interval != 0), iRoPE as Llama 4's
chunked attention and attention-temperature tuning (transformers' modeling_llama4), and the rows' names. The models
and the reference forward are tests/test_gated_attention.py's."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from test_gated_attention import GAPPED, T, build, check_parity

from lenx import attention
from lenx.errors import ConfigError
from lenx.results import attn_label


def window_reference(q, k, v, pos_T, window):
    """Softmax attention with transformers' sliding-window causal mask (by position)."""
    d = pos_T[:, None] - pos_T[None, :]
    visible = (d >= 0) & (d < window)
    z = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~visible, float("-inf"))
    return z.softmax(-1) @ v


@pytest.mark.parametrize("at", ["default", "gapped"])
def test_a_trained_window_is_the_sliding_window_mask(at):
    model = build("rope", {"window": 5})
    pos_T = None if at == "default" else GAPPED
    ref_pos = torch.arange(T) if pos_T is None else pos_T
    check_parity(model, lambda a, h, n, q, k, v: window_reference(q, k, v, ref_pos, 5), pos_T, {"mask"})


def test_rnope_swa_rotates_and_windows_three_layers_of_four():
    """Cohere2's pattern (sliding_window_pattern 4) and SmolLM3's no_rope_layers: layers 0-2 RoPE with the window,
    layer 3 NoPE with full attention."""
    model = build("rnope_swa", n_layers=4)
    window = model.pos.window
    assert window == 8  # window_fraction 0.5 of the training length 16
    assert [m.window for m in model.layer_modifiers] == [8, 8, 8, None]
    rotates = [(i + 1) % 4 != 0 for i in range(4)]  # SmolLM3Config: no_rope_layers[i] = int((i + 1) % 4 != 0)

    def layer(attn, h, n, q, k, v):
        if rotates[n]:
            return window_reference(q, k, v, torch.arange(T), window)
        z = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(
            torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        return z.softmax(-1) @ v
    x = torch.randint(0, 50, (1, T))
    with torch.no_grad():
        q = torch.randn(1, 4, T, 8)
        ctx = model.pos.context(torch.arange(T), torch.arange(T))
        assert torch.equal(model.pos.rotate(q, q, ctx.at_layer(3))[0], q)
        assert not torch.equal(model.pos.rotate(q, q, ctx.at_layer(0))[0], q)
    check_parity(model, layer, None, {"mask", "causal"})
    with torch.no_grad(), attention.traced() as seen:
        model(x)
    assert seen == ["mask", "mask", "mask", "causal"]


def test_rope_nope_has_no_window_and_stays_fused():
    model = build("rope_nope", n_layers=4)
    assert all(m.window is None for m in model.layer_modifiers)
    with torch.no_grad(), attention.traced() as seen:
        model(torch.randint(0, 50, (1, T)))
    assert seen == ["causal"] * 4


def test_window_counts_visible_keys_for_ssmax():
    ctx = attention.AttnContext(q_pos_T=torch.arange(6), k_pos_S=torch.arange(6))
    torch.testing.assert_close(attention.visible_log_n(ctx, 3), torch.log(torch.tensor([1.0, 2, 3, 3, 3, 3])))


def llama4_reference(q, k, v, pos_T, chunk):
    """transformers' chunked attention: causal_mask_function & chunked_overlay (left_padding 0), by position."""
    d = pos_T[:, None] - pos_T[None, :]
    visible = (d >= 0) & (pos_T[None, :] // chunk == pos_T[:, None] // chunk)
    z = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~visible, float("-inf"))
    return z.softmax(-1) @ v


@pytest.mark.parametrize("at", ["default", "gapped"])
def test_irope_chunks_its_rope_layers_and_tunes_the_nope_temperature(at):
    """Llama 4's pattern: layers 0-2 RoPE with chunked attention (chunk_fraction 0.5 of 16: chunks of 8), layer 3
    NoPE, full attention, queries times Llama4TextAttention's attn_scales (floor_scale 4 here, so that it acts)."""
    model = build("irope", n_layers=4, temperature_floor=4, temperature_scale=0.3)
    assert [m.chunk for m in model.layer_modifiers] == [8, 8, 8, None]
    pos_T = None if at == "default" else GAPPED
    ref_pos = torch.arange(T) if pos_T is None else pos_T

    def layer(attn, h, n, q, k, v):
        if n < 3:
            return llama4_reference(q, k, v, ref_pos, 8)
        # full causal attention (the queries come scaled by the scheme's `rotate`, whose scale is checked
        # against Llama4TextAttention's formula below)
        z = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(ref_pos[None, :] > ref_pos[:, None],
                                                                            float("-inf"))
        return z.softmax(-1) @ v
    check_parity(model, layer, pos_T, {"mask", "causal"})
    q = torch.ones(1, 1, 6, 4)
    ctx = model.pos.context(torch.tensor([0, 2, 3, 7, 8, 20]), torch.tensor([0, 2, 3, 7, 8, 20]))
    scaled = model.pos.rotate(q, q, ctx.at_layer(3))[0][0, 0, :, 0]
    # log1p(floor((p + 1) / 4)) * 0.3 + 1 at p = 0, 2, 3, 7, 8, 20: floors 0, 0, 1, 2, 2, 5
    want = torch.log1p(torch.tensor([0.0, 0, 1, 2, 2, 5])) * 0.3 + 1
    torch.testing.assert_close(scaled, want)


def test_chunked_attention_as_a_modifier_and_its_label():
    model = build("rope", {"chunk": 5})
    check_parity(model, lambda a, h, n, q, k, v: llama4_reference(q, k, v, torch.arange(T), 5), None, {"mask"})
    assert attention.Modifiers(chunk=5).label == "+chunk5" and attn_label({"attn": {"chunk": 5}}) == "+chunk5"
    ctx = attention.AttnContext(q_pos_T=torch.arange(7), k_pos_S=torch.arange(7))
    torch.testing.assert_close(attention.visible_log_n(ctx, None, 3), torch.log(torch.tensor([1.0, 2, 3, 1, 2, 3, 1])))
    with pytest.raises(ConfigError, match="not both"):
        build("irope", n_layers=4, window=4)


def test_row_names_equal_the_modifiers_label_for_a_composed_config(tmp_path):
    from conftest import compose_train

    cfg = OmegaConf.to_container(compose_train(["attn.ssmax=true", "attn.forget=true", "attn.chunk=8"], tmp_path))
    assert attn_label(cfg) == attention.Modifiers.from_config(cfg["attn"]).label == "+ssmax+forget+chunk8"


def test_hybrid_settings_are_checked():
    with pytest.raises(ConfigError, match="set window .* or window_fraction"):
        build("rnope_swa", n_layers=4, window=4)
    with pytest.raises(ConfigError, match="leaves no NoPE layer"):
        build("rope_nope", n_layers=2)
    with pytest.raises(ConfigError, match="disagree"):
        build("rnope_swa", {"window": 3}, n_layers=4)


class NoOpWindowing:
    """An extension that windows nothing (every key visible) but is active: it sends attention down the
    "extended" path, whose forget gate and trained window must then equal the float-mask path's."""

    name, remaps, windows, window_tokens = "noop", False, True, None

    def for_input(self, q_pos_T, k_pos_S):
        return self

    def active(self, q_pos_T, k_pos_S):
        return True

    def q_scale(self, q_pos_T):
        return None

    def pairs(self, i_t, j_s):
        from lenx.extensions import Pairs

        return Pairs()

    def key_range(self, a, b):
        return None


@pytest.mark.parametrize("attn", [{"forget": True}, {"window": 5}, {"forget": True, "window": 5, "ssmax": True}])
def test_the_extended_path_hosts_the_forget_gate_and_the_window(attn):
    model = build("rope", attn)
    x = torch.randint(0, 50, (2, 40), generator=torch.Generator().manual_seed(6))
    with torch.no_grad(), attention.traced() as seen:
        plain = model(x)
    assert set(seen) == ({"features"} if attn == {"forget": True} else {"mask"})
    model.extension = NoOpWindowing()
    with torch.no_grad(), attention.traced() as seen:
        extended = model(x)
    assert set(seen) == {"extended"}
    torch.testing.assert_close(extended, plain, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("scheme", ["stickbreaking", "selective"])
def test_mechanisms_without_an_extended_path_refuse_a_windowing_extension(scheme):
    model = build(scheme)
    model.extension = NoOpWindowing()
    with torch.no_grad(), pytest.raises(ConfigError, match="extension noop does not apply to a model trained with"):
        model(torch.randint(0, 50, (1, 20)))


def test_evaluate_refuses_such_an_extension_before_scoring():
    from lenx.extensions import SelfExtend, check_applies

    model = build("rope", {"stickbreaking": True})
    ext = SelfExtend(group=2, window=4).resolve(16)
    with pytest.raises(ConfigError, match="extension self_extend does not apply to a model trained with stickbreaking"):
        check_applies(ext, model.pos, "rope", model.layer_modifiers)
    check_applies(ext, model.pos, "rope", build("rope", {"forget": True}).layer_modifiers)  # FoX's gate: hosted
