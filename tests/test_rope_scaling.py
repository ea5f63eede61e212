"""RoPE scaling methods against closed forms derived here, and (fixture) Hugging Face transformers' own values."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lenx.errors import ConfigError
from lenx.pos.rope_scaling import RopeScaling, rope_cache, rope_parameters

METHODS = sorted(RopeScaling.registry)

D, BASE, L0 = 16, 10000.0, 128


def theta(d=D, base=BASE):
    return np.array([base ** (-2 * i / d) for i in range(d // 2)])


def params(method, seq_len=L0, **kw):
    inv, af = rope_parameters(method, head_dim=D, base=BASE, train_len=L0, seq_len=seq_len, **kw)
    assert inv.dtype == torch.float32 and inv.shape == (D // 2,)
    return inv.double().numpy(), af


def test_none_is_the_rope_paper():
    inv, af = params("none")
    np.testing.assert_allclose(inv, theta(), rtol=1e-7)
    assert af == 1.0


# dynamic_ntk is absent on purpose: like HF's "dynamic", its base grows past train_len even at factor 1
# (base ((1 x L / L0) - 0)^(d/(d-2))); at or below train_len it is exact (next test).
@pytest.mark.parametrize("method", ["pi", "ntk", "yarn", "llama3", "longrope"])
@pytest.mark.parametrize("d, train_len", [(16, 128), (64, 4096), (128, 512), (256, 64)])
def test_factor_one_is_exactly_unscaled(method, d, train_len):
    kw = {"head_dim": d, "base": BASE, "train_len": train_len}
    inv, af = rope_parameters(method, seq_len=4 * train_len, factor=1.0, **kw)
    np.testing.assert_array_equal(inv.numpy(), rope_parameters("none", seq_len=train_len, **kw)[0].numpy())
    assert af == 1.0


@pytest.mark.parametrize("method", sorted(METHODS))
def test_dynamic_factor_at_or_below_train_len_is_none(method):
    for seq_len in (1, L0 // 2, L0):
        inv, af = params(method, seq_len=seq_len, **({} if method == "none" else {"factor": None}))
        np.testing.assert_array_equal(inv, params("none")[0])
        assert af == 1.0


def test_dynamic_ntk_with_fixed_factor_is_none_until_train_len():
    np.testing.assert_array_equal(params("dynamic_ntk", seq_len=L0, factor=4.0)[0], params("none")[0])
    inv, _ = params("dynamic_ntk", seq_len=3 * L0, factor=4.0)
    base = BASE * (4 * 3 - 3) ** (D / (D - 2))  # base ((s L / L0) - (s - 1))^(d/(d-2))
    np.testing.assert_allclose(inv, theta(base=base), rtol=1e-6)


@pytest.mark.parametrize("mult", [2, 4, 16])
def test_dynamic_ntk_factor_null_is_the_yarn_papers_alpha_one(mult):
    # YaRN paper sec. 3.3 / jquesnelle/yarn `--dynamic-ntk 1`: base' = base (L / L0)^(d/(d-2)) at length L, i.e.
    # HF's formula base ((alpha L / L0) - (alpha - 1))^(d/(d-2)) with alpha = 1 -- not alpha = L / L0, which
    # would give base term s^2 - s + 1 (241 at 16x instead of 16).
    inv, af = params("dynamic_ntk", seq_len=mult * L0)
    np.testing.assert_allclose(inv, theta(base=BASE * mult ** (D / (D - 2))), rtol=1e-6)
    wrong = theta(base=BASE * (mult ** 2 - mult + 1) ** (D / (D - 2)))
    assert not np.allclose(inv, wrong, rtol=1e-3)
    assert af == 1.0
    np.testing.assert_array_equal(inv, params("ntk", seq_len=mult * L0)[0])  # = static NTK at s = L / L0


def test_dynamic_ntk_number_is_hfs_slope_alpha():
    # HF `_compute_dynamic_ntk_parameters` with factor 2 at seq_len 4 L0: base (2 . 4 - (2 - 1))^(d/(d-2)) = base 7^...
    inv, _ = params("dynamic_ntk", seq_len=4 * L0, factor=2.0)
    np.testing.assert_allclose(inv, theta(base=BASE * 7 ** (D / (D - 2))), rtol=1e-6)


def test_pi_divides_every_frequency():
    np.testing.assert_allclose(params("pi", factor=4.0)[0], theta() / 4, rtol=1e-6)
    np.testing.assert_allclose(params("pi", seq_len=8 * L0)[0], theta() / 8, rtol=1e-6)  # factor null


def test_ntk_changes_the_base():
    inv, _ = params("ntk", factor=4.0)
    np.testing.assert_allclose(inv, theta(base=BASE * 4 ** (16 / 14)), rtol=1e-6)
    assert inv[0] == pytest.approx(1.0)  # the highest frequency is untouched


@pytest.mark.parametrize("beta_fast, beta_slow, truncate, expect_range", [
    (32, 1, True, (0, 3)),  # d=16, L0=128, base 1e4: dims -0.39 -> 0 and 2.62 -> 3
    (16, 2, False, (0.2098, 2.0160)),  # untruncated: 16 ln(128 / (16 . 2 pi)) / (2 ln 1e4) = 0.2098; 2.0160
])
def test_yarn_ramp_and_temperature(beta_fast, beta_slow, truncate, expect_range):
    s = 4.0
    inv, af = params("yarn", factor=s, beta_fast=beta_fast, beta_slow=beta_slow, truncate=truncate)
    assert af == pytest.approx(0.1 * math.log(4) + 1)  # 1.13863

    def cdim(rot):  # the dim whose wavelength 2 pi base^(2i/d) fits `rot` rotations in L0
        return D * math.log(L0 / (rot * 2 * math.pi)) / (2 * math.log(BASE))

    low, high = cdim(beta_fast), cdim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, D - 1)
    assert (low, high) == pytest.approx(expect_range, abs=1e-3)
    t = theta()
    for i in range(D // 2):
        ramp = min(1, max(0, (i - low) / (high - low)))
        expect = t[i] / s * ramp + t[i] * (1 - ramp)
        assert inv[i] == pytest.approx(expect, rel=1e-6), i
    assert params("yarn", factor=s, attention_factor=1.5)[1] == 1.5
    af2 = params("yarn", factor=s, mscale=0.707, mscale_all_dim=0.707)[1]
    assert af2 == pytest.approx(1.0)  # equal mscales cancel (DeepSeek-style configs)


def test_llama3_bands():
    s, lo, hi = 8.0, 1.0, 4.0
    inv, af = params("llama3", factor=s, low_freq_factor=lo, high_freq_factor=hi)
    t = theta()
    for i in range(D // 2):
        wavelen = 2 * math.pi / t[i]
        if wavelen < L0 / hi:
            expect = t[i]
        elif wavelen > L0 / lo:
            expect = t[i] / s
        else:
            smooth = (L0 / wavelen - lo) / (hi - lo)
            expect = (1 - smooth) * t[i] / s + smooth * t[i]
        assert inv[i] == pytest.approx(expect, rel=1e-6), i
    bands = [2 * math.pi / x for x in t]
    assert any(b < L0 / hi for b in bands) and any(b > L0 / lo for b in bands)  # the test covers both ends
    assert any(L0 / hi <= b <= L0 / lo for b in bands) and af == 1.0


def test_longrope_switches_factors_at_train_len():
    short, long = [1.0 + 0.1 * i for i in range(8)], [2.0 + i for i in range(8)]
    inv_s, af_s = params("longrope", seq_len=L0, factor=4.0, short_factor=short, long_factor=long)
    inv_l, af_l = params("longrope", seq_len=L0 + 1, factor=4.0, short_factor=short, long_factor=long)
    np.testing.assert_allclose(inv_s, theta() / np.array(short), rtol=1e-6)
    np.testing.assert_allclose(inv_l, theta() / np.array(long), rtol=1e-6)
    assert af_s == af_l == pytest.approx(math.sqrt(1 + math.log(4) / math.log(L0)))
    inv_d, _ = params("longrope", seq_len=4 * L0)  # defaults: ramp 1 -> s
    np.testing.assert_allclose(inv_d[[0, -1]], theta()[[0, -1]] / np.array([1.0, 4.0]), rtol=1e-6)


@pytest.mark.parametrize("method, kw, match", [
    ("nope", {}, "unknown RoPE scaling"),
    ("pi", {"factor": 0.5}, ">= 1"),
    ("pi", {"fator": 2}, "unknown: \\['fator'\\]"),
    ("pi", {"factor": float("nan")}, ">= 1"),
    ("none", {"factor": 2.0}, "no parameters"),
    ("yarn", {"beta_fast": 1, "beta_slow": 32}, "beta_fast > beta_slow"),
    ("yarn", {"beta_fast": 32, "beta_slow": 0}, "beta_slow > 0"),
    ("yarn", {"attention_factor": -1.0}, "attention_factor must be positive"),
    ("longrope", {"long_factor": [1.0, 2.0]}, "long_factor needs 8 positive values"),
    ("longrope", {"short_factor": [1.0] * 9}, "short_factor needs 8 positive values"),
    ("longrope", {"long_factor": [1.0] * 7 + [0.0]}, "long_factor needs 8 positive values"),
    ("longrope", {"long_factor": "ones"}, "long_factor needs 8 positive values"),
    ("llama3", {"low_freq_factor": 4, "high_freq_factor": 1}, "high_freq_factor > low_freq_factor"),
])
def test_bad_parameters(method, kw, match):
    with pytest.raises(ConfigError, match=match):
        params(method, seq_len=2 * L0, **kw)


def test_odd_head_dim_refused():
    with pytest.raises(ConfigError, match="even"):
        rope_parameters("none", head_dim=15, base=BASE, train_len=L0, seq_len=L0)
    with pytest.raises(ConfigError, match="known: \\['dynamic_ntk', 'llama3', 'longrope', 'none', 'ntk'"):
        rope_parameters("linear", head_dim=D, base=BASE, train_len=L0, seq_len=L0)
    with pytest.raises(ConfigError, match="head_dim > 2"):  # d / (d - 2) is undefined
        rope_parameters("ntk", head_dim=2, base=BASE, train_len=L0, seq_len=L0, factor=2.0)


@pytest.mark.parametrize("path", sorted(p for p in (CONFIGS / "pos" / "scaling").glob("*.yaml")
                                         if p.stem in METHODS), ids=lambda p: p.stem)
def test_every_scaling_config_is_accepted(path):
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    scaling = instantiate(cfg)
    assert type(scaling).name == path.stem  # the class the config names is the method the file is named after
    params_ = {k: v for k, v in cfg.items() if k not in ("_target_", "original_len")}
    for seq_len in (L0, 16 * L0):
        inv, af = params(path.stem, seq_len=seq_len, **params_)
        inv2, af2 = scaling(D, BASE, L0, seq_len)  # the instantiated config gives the same values
        np.testing.assert_array_equal(inv, inv2.double().numpy())
        assert torch.isfinite(torch.from_numpy(inv)).all() and af >= 1.0 and af == af2


@pytest.mark.parametrize("path", sorted((CONFIGS / "pos" / "scaling").glob("*.yaml")), ids=lambda p: p.stem)
def test_a_key_a_scaling_does_not_take_is_refused_by_its_class(path):
    from lenx.errors import instantiate_node

    cfg = {**OmegaConf.to_container(OmegaConf.load(path)), "fator": 2.0}
    with pytest.raises(ConfigError, match="unexpected keyword argument 'fator'"):
        instantiate_node(cfg, "pos.scaling")


@pytest.mark.parametrize("autocast", [False, True])
def test_rope_cache_fp32_and_exact(autocast):
    pos = torch.arange(0, 8192, 37)
    inv, _ = rope_parameters("none", head_dim=D, base=BASE, train_len=L0, seq_len=L0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        cos, sin = rope_cache(pos, inv, 1.25)
    assert cos.dtype == sin.dtype == torch.float32 and cos.shape == sin.shape == (len(pos), D // 2)
    # float64 reference of the same fp32 angles: cos/sin and the factor are exact to 1e-6 (bf16 would be ~1e-2)
    ang32 = (pos.float()[:, None] * inv[None, :]).double()
    torch.testing.assert_close(cos.double(), 1.25 * torch.cos(ang32), rtol=0, atol=1e-6)
    torch.testing.assert_close(sin.double(), 1.25 * torch.sin(ang32), rtol=0, atol=1e-6)
    # against angles computed entirely in float64: 1e-6 where fp32 angles are exact to that, and otherwise within
    # the fp32 rounding of the angle itself (|angle| 2^-24) -- a bf16 angle would be off by whole radians
    ang64 = pos.double()[:, None] * inv.double()[None, :]
    near = pos < 16
    torch.testing.assert_close(cos[near].double(), 1.25 * torch.cos(ang64[near]), rtol=0, atol=1e-6)
    bound = 1.25 * (ang64.abs() * 2.0**-24 + 1e-6)
    assert ((sin.double() - 1.25 * torch.sin(ang64)).abs() <= bound).all()
    assert ((cos.double() - 1.25 * torch.cos(ang64)).abs() <= bound).all()


HF_REFERENCE = Path(__file__).parent / "fixtures" / "hf_rope_reference.json"


@pytest.mark.skipif(not HF_REFERENCE.exists(), reason="no Hugging Face reference fixture")
def test_matches_hugging_face_transformers():
    """Values computed by HF transformers' own ROPE_INIT_FUNCTIONS (scripts/hf_rope_reference.py)."""
    cases = json.loads(HF_REFERENCE.read_text())["cases"]
    assert len(cases) >= 10
    for case in cases:
        inv, af = rope_parameters(case["method"], head_dim=case["head_dim"], base=case["base"],
                                  train_len=case["train_len"], seq_len=case["seq_len"], **case["params"])
        np.testing.assert_allclose(inv.numpy(), np.array(case["inv_freq"]), rtol=2e-6, err_msg=str(case))
        assert af == pytest.approx(case["attention_factor"], rel=1e-6), case


def test_a_scaling_defined_outside_lenx_plugs_in_by_its_class():
    """Adding a RoPE scaling is one RopeScaling subclass (and a config naming it): it is found by name, labels the
    results by that name, and a rotary scheme built with it uses its frequencies."""
    from lenx.pos.rope import RoPE
    from lenx.pos.rope_scaling import scaling_label

    class Halve(RopeScaling):  # every frequency halved past the training length
        name = "test_halve"

        def frequencies(self, d, base, train_len, seq_len):
            inv, af = super().frequencies(d, base, train_len, seq_len)
            return (inv / 2 if seq_len > train_len else inv), af

    try:
        inv, _ = params("test_halve", seq_len=2 * L0)
        np.testing.assert_allclose(inv, theta() / 2, rtol=1e-6)
        assert scaling_label({"_target_": f"{__name__}.Halve"}) != "test_halve"  # a local class: not importable
        assert scaling_label({"_target_": f"{Halve.__module__}.{Halve.__qualname__}"}) == "test_halve"
        rope = RoPE(scaling=Halve(), d_model=32, n_heads=2, head_dim=16, train_len=L0)
        torch.testing.assert_close(rope.frequencies(4 * L0)[0], torch.from_numpy(theta() / 2).float())
    finally:
        RopeScaling.registry.pop("test_halve")
