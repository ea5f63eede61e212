"""RoPE context-extension methods as pure functions of (head dim, base, train length, current length, params).

`rope_parameters(method, ...)` returns the inverse frequencies (head_dim // 2,) float32 and the attention factor
(the multiplier on cos and sin, Hugging Face convention: logits scale by its square). Values follow Hugging Face
transformers' `modeling_rope_utils` rope initialisation. Parameter names, HF -> lenx:
  rope_theta -> base;  head_dim (x partial_rotary_factor) -> head_dim (the rotated channels);
  original_max_position_embeddings -> train_len;  the current sequence length -> seq_len;
  rope_type: default / linear / dynamic / yarn / llama3 / longrope -> method: none / pi / dynamic_ntk / yarn /
  llama3 / longrope;  factor, beta_fast, beta_slow, attention_factor, mscale, mscale_all_dim, truncate,
  low_freq_factor, high_freq_factor, short_factor, long_factor -> the same names.
`factor: None` (lenx only) means s = max(1, seq_len / train_len), recomputed at each length, so at or below
train_len every method gives the unscaled frequencies.
`dynamic_ntk` is the one exception: HF's `dynamic` factor is not a scale but a slope alpha (jquesnelle/yarn's
`--dynamic-ntk alpha`): base' = base ((alpha L / L0) - (alpha - 1))^(d/(d-2)), L = max(seq_len, L0), already
recomputed from the length. The YaRN paper's Dynamic NTK (arXiv:2309.00071 sec. 3.3) is alpha = 1, base' =
base (L / L0)^(d/(d-2)), and that is what `factor: None` means here; a number keeps meaning HF's alpha.
(Putting s = L / L0 in the slope as well would give base (s^2 - s + 1)^(d/(d-2)): 241 instead of 16 at 16x.)
`ntk` (static NTK-aware base change) has no HF rope_type: with a number s it is base s^(d/(d-2)) at every length,
which equals `dynamic_ntk` with alpha = 1 only at seq_len = s x train_len; with `factor: None` it equals
`dynamic_ntk` with `factor: None` at every length.
HF's Phi-3 / DeepSeek quirk (factor := max_position_embeddings / original_max_position_embeddings when the config
carries both) has no lenx analogue: pass that ratio as `factor`.
"""

from __future__ import annotations

import inspect
import math
from typing import ClassVar

import torch

from lenx.errors import ConfigError


def default_inv_freq(head_dim: int, base: float) -> torch.Tensor:
    """theta_i = base^(-2i/d), i = 0 .. d/2 - 1, computed in fp64 and returned fp32 (Su et al., arXiv:2104.09864)."""
    return (1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)).float()


def scale_factor(factor: float | None, train_len: int, seq_len: int) -> float:
    """s: the fixed `factor`, or max(1, seq_len / train_len) when it is None."""
    s = max(1.0, seq_len / train_len) if factor is None else float(factor)
    if not s >= 1.0:  # also refuses NaN
        raise ConfigError(f"RoPE scaling factor must be >= 1 (or null for eval_len / train_len), got {factor}")
    return s


def _ntk_exponent(d: int) -> float:
    if d <= 2:  # d / (d - 2) is undefined: with one frequency there is nothing to spread the base change over
        raise ConfigError(f"NTK base change needs a rotary head_dim > 2, got {d}")
    return d / (d - 2)


def _check_attention_factor(attention_factor) -> None:
    if attention_factor is not None and not float(attention_factor) > 0:
        raise ConfigError(f"attention_factor must be positive (or null for the method's default), "
                          f"got {attention_factor}")


def _check_factor(factor) -> None:
    if factor is not None:
        scale_factor(factor, 1, 1)  # refuses < 1 and NaN once, at construction


class RopeScaling:
    """A RoPE scaling method: `configs/pos/scaling/<name>.yaml` names its subclass in `_target_` (so Hydra refuses a
    parameter the class does not take), and the rotary scheme calls it per input length:
    `scaling(head_dim, base, train_len, seq_len) -> (inverse frequencies (head_dim // 2,) float32, attention factor)`.

    `original_len`: the length the frequencies were trained at (HF original_max_position_embeddings); None means
    the run's own seq_len; set it when fine-tuning a model trained at a shorter length under a scaling.
    Subclasses set `name` (the config's file name and the results' `scaling` column) and implement `frequencies`.
    This base class is no scaling: the frequencies of Su et al. 2021 (arXiv:2104.09864) as trained.
    """

    name = "none"
    registry: ClassVar[dict[str, type[RopeScaling]]] = {}

    def __init_subclass__(cls, **kw) -> None:
        super().__init_subclass__(**kw)
        RopeScaling.registry[cls.name] = cls

    def __init__(self, *, original_len: int | None = None) -> None:
        if original_len is not None and (isinstance(original_len, bool) or not isinstance(original_len, int)
                                         or original_len <= 0):
            raise ConfigError(f"RoPE scaling original_len must be a positive integer or null, got {original_len!r}")
        self.original_len = original_len

    def __call__(self, head_dim: int, base: float, train_len: int, seq_len: int) -> tuple[torch.Tensor, float]:
        if head_dim <= 0 or head_dim % 2:
            raise ConfigError(f"RoPE needs an even, positive rotary head_dim, got {head_dim}")
        if train_len <= 0 or seq_len <= 0:
            raise ConfigError(f"train_len and seq_len must be positive, got {train_len}, {seq_len}")
        return self.frequencies(head_dim, float(base), train_len, seq_len)

    def frequencies(self, d: int, base: float, train_len: int, seq_len: int) -> tuple[torch.Tensor, float]:
        return default_inv_freq(d, base), 1.0

    def params(self) -> dict:
        """The method's parameters (original_len aside), as the config gives them."""
        return {k: v for k, v in vars(self).items() if k != "original_len"}

    def __repr__(self) -> str:
        return f"{self.name}(original_len={self.original_len}, {self.params()})"


RopeScaling.registry["none"] = RopeScaling


class PI(RopeScaling):
    """Position interpolation (Chen et al. 2023, arXiv:2306.15595): positions m -> m / s, i.e. theta / s."""

    name = "pi"

    def __init__(self, *, factor: float | None = None, **kw) -> None:
        super().__init__(**kw)
        _check_factor(factor)
        self.factor = factor

    def frequencies(self, d, base, train_len, seq_len):
        return default_inv_freq(d, base) / scale_factor(self.factor, train_len, seq_len), 1.0


class NTK(PI):
    """NTK-aware scaling (bloc97 2023; YaRN paper sec. 3.1, arXiv:2309.00071): base' = base s^(d / (d - 2))."""

    name = "ntk"

    def frequencies(self, d, base, train_len, seq_len):
        s = scale_factor(self.factor, train_len, seq_len)
        return default_inv_freq(d, base * s ** _ntk_exponent(d)), 1.0


class DynamicNTK(PI):
    """Dynamic NTK (HF `dynamic`): base' = base ((alpha L / L0) - (alpha - 1))^(d / (d - 2)), L = max(seq_len, L0).

    `factor` is HF's slope alpha (>= 1); None means alpha = 1, the YaRN paper's Dynamic NTK (arXiv:2309.00071
    sec. 3.3): base (L / L0)^(d / (d - 2)), i.e. `ntk` with s = L / L0 recomputed at each length.
    """

    name = "dynamic_ntk"

    def frequencies(self, d, base, train_len, seq_len):
        alpha = 1.0 if self.factor is None else scale_factor(self.factor, train_len, seq_len)
        length = max(seq_len, train_len)
        return default_inv_freq(d, base * ((alpha * length / train_len) - (alpha - 1)) ** _ntk_exponent(d)), 1.0


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature sqrt(1/t) = 0.1 ln(s) + 1 (arXiv:2309.00071 eq. 22), HF `get_mscale`."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


class YaRN(PI):
    """YaRN "NTK-by-parts" (arXiv:2309.00071 sec. 3.2): interpolate low frequencies, keep high ones, ramp between."""

    name = "yarn"

    def __init__(self, *, factor: float | None = None, beta_fast: float = 32.0, beta_slow: float = 1.0,
                 attention_factor: float | None = None, mscale: float | None = None,
                 mscale_all_dim: float | None = None, truncate: bool = True, **kw) -> None:
        super().__init__(factor=factor, **kw)
        if not beta_fast > beta_slow > 0:
            raise ConfigError(f"yarn needs beta_fast > beta_slow > 0, got {beta_fast}, {beta_slow}")
        _check_attention_factor(attention_factor)
        self.beta_fast, self.beta_slow, self.attention_factor = beta_fast, beta_slow, attention_factor
        self.mscale, self.mscale_all_dim, self.truncate = mscale, mscale_all_dim, truncate

    def frequencies(self, d, base, train_len, seq_len):
        s = scale_factor(self.factor, train_len, seq_len)
        attention_factor = self.attention_factor
        if attention_factor is None:
            if self.mscale and self.mscale_all_dim:
                attention_factor = yarn_mscale(s, self.mscale) / yarn_mscale(s, self.mscale_all_dim)
            else:
                attention_factor = yarn_mscale(s)

        def correction_dim(rotations: float) -> float:  # the dim index whose wavelength fits `rotations` in L0
            return d * math.log(train_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

        theta = default_inv_freq(d, base)
        if s == 1.0:  # the blend theta (1 - e) + theta e below can differ from theta in the last bit
            return theta, float(attention_factor)
        low, high = correction_dim(self.beta_fast), correction_dim(self.beta_slow)
        if self.truncate:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, d - 1)
        if low == high:
            high += 0.001  # avoid a division by zero, as the reference does
        ramp = ((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
        extrapolation = 1.0 - ramp  # 1: keep the original frequency (high frequencies), 0: interpolate
        return theta / s * (1 - extrapolation) + theta * extrapolation, float(attention_factor)


class Llama3(PI):
    """Llama 3.1 scaling (arXiv:2407.21783): wavelengths > L0/low kept x 1/s, < L0/high unchanged, smooth between."""

    name = "llama3"

    def __init__(self, *, factor: float | None = None, low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
                 **kw) -> None:
        super().__init__(factor=factor, **kw)
        if not 0 < low_freq_factor < high_freq_factor:
            raise ConfigError(f"llama3 needs high_freq_factor > low_freq_factor > 0, got {high_freq_factor}, "
                              f"{low_freq_factor}")
        self.low_freq_factor, self.high_freq_factor = low_freq_factor, high_freq_factor

    def frequencies(self, d, base, train_len, seq_len):
        s = scale_factor(self.factor, train_len, seq_len)
        theta = default_inv_freq(d, base)
        if s == 1.0:  # the smooth band's (1 - a) x + a x would differ from x in the last bit
            return theta, 1.0
        wavelen = 2 * math.pi / theta
        low_wavelen, high_wavelen = train_len / self.low_freq_factor, train_len / self.high_freq_factor
        scaled = torch.where(wavelen > low_wavelen, theta / s, theta)
        smooth = (train_len / wavelen - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        smoothed = (1 - smooth) * scaled / s + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled), 1.0


class LongRoPE(PI):
    """LongRoPE (Ding et al. 2024, arXiv:2402.13753; Phi-3): per-dimension rescale factors, long past L0.

    short_factor null: all ones. long_factor null: a geometric ramp s^(i / (d/2 - 1)) from 1 at the highest
    frequency to s at the lowest (a searched-factor stand-in that keeps local order and interpolates the rest).
    """

    name = "longrope"

    def __init__(self, *, factor: float | None = None, short_factor: list[float] | None = None,
                 long_factor: list[float] | None = None, attention_factor: float | None = None, **kw) -> None:
        super().__init__(factor=factor, **kw)
        _check_attention_factor(attention_factor)
        self.short_factor = None if short_factor is None else _as_list(short_factor)
        self.long_factor = None if long_factor is None else _as_list(long_factor)
        self.attention_factor = attention_factor

    def frequencies(self, d, base, train_len, seq_len):
        s = scale_factor(self.factor, train_len, seq_len)
        n = d // 2

        def factors(name, values, default):
            if values is None:
                return default
            try:
                f = torch.tensor([float(v) for v in values], dtype=torch.float32)
            except (TypeError, ValueError):
                f = None
            if f is None or f.shape != (n,) or not bool((f > 0).all()):  # NaN fails `> 0` too
                raise ConfigError(f"longrope {name} needs {n} positive values (head_dim // 2), got {values!r}")
            return f

        short = factors("short_factor", self.short_factor, torch.ones(n))
        long = factors("long_factor", self.long_factor,
                       (s ** (torch.arange(n, dtype=torch.float64) / max(1, n - 1))).float())
        attention_factor = self.attention_factor
        if attention_factor is None:
            attention_factor = 1.0 if s <= 1 else math.sqrt(1 + math.log(s) / math.log(train_len))
        ext = long if seq_len > train_len else short
        return default_inv_freq(d, base) / ext, float(attention_factor)


def _as_list(values):
    """A config list (ListConfig from Hydra) as a plain list; anything else is left for `factors` to refuse."""
    try:
        return list(values) if not isinstance(values, (str, bytes)) else values
    except TypeError:
        return values


def rope_parameters(method: str, *, head_dim: int, base: float, train_len: int, seq_len: int,
                    **params) -> tuple[torch.Tensor, float]:
    """(inverse frequencies (head_dim // 2,) float32, attention factor) of `method` at the current seq_len."""
    return make_scaling(method, **params)(head_dim, base, train_len, seq_len)


def make_scaling(method: str, **params) -> RopeScaling:
    """The RopeScaling named `method` with these parameters; an unknown name or parameter is one ConfigError."""
    cls = RopeScaling.registry.get(method) if isinstance(method, str) else None
    if cls is None:
        raise ConfigError(f"unknown RoPE scaling {method!r}; known: {sorted(RopeScaling.registry)}")
    takes = [p for p in inspect.signature(cls).parameters if p not in ("kw", "original_len")]
    unknown = sorted(set(params) - set(takes) - {"original_len"})
    if unknown:
        raise ConfigError(f"RoPE scaling {method!r} takes {takes or 'no parameters'}; unknown: {unknown}")
    return cls(**params)


def scaling_label(config: dict | None) -> str:
    """The name of the scaling a config node describes (`_target_`, or a pre-class checkpoint's `method`)."""
    config = config or {}
    if "method" in config:  # checkpoints written before scalings were classes
        return config["method"]
    target = config.get("_target_")
    for name, cls in RopeScaling.registry.items():
        if target == f"{cls.__module__}.{cls.__qualname__}":
            return name
    return "none" if target is None else str(target).rsplit(".", 1)[-1]


def rope_cache(positions: torch.Tensor, inv_freq: torch.Tensor, attention_factor: float = 1.0):
    """cos and sin of the angles p * theta_i, fp32 with autocast off, shapes (T, head_dim // 2) (litgpt-style)."""
    with torch.autocast(device_type=positions.device.type, enabled=False):
        angles_TF = positions.to(torch.float32)[:, None] * inv_freq.to(positions.device, torch.float32)[None, :]
        return torch.cos(angles_TF) * attention_factor, torch.sin(angles_TF) * attention_factor
