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

import math

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


def _none(d, base, train_len, seq_len):
    return default_inv_freq(d, base), 1.0


def _pi(d, base, train_len, seq_len, factor=None):
    """Position interpolation (Chen et al. 2023, arXiv:2306.15595): positions m -> m / s, i.e. theta / s."""
    return default_inv_freq(d, base) / scale_factor(factor, train_len, seq_len), 1.0


def _ntk(d, base, train_len, seq_len, factor=None):
    """NTK-aware scaling (bloc97 2023; YaRN paper sec. 3.1, arXiv:2309.00071): base' = base s^(d / (d - 2))."""
    s = scale_factor(factor, train_len, seq_len)
    return default_inv_freq(d, base * s ** _ntk_exponent(d)), 1.0


def _dynamic_ntk(d, base, train_len, seq_len, factor=None):
    """Dynamic NTK (HF `dynamic`): base' = base ((alpha L / L0) - (alpha - 1))^(d / (d - 2)), L = max(seq_len, L0).

    `factor` is HF's slope alpha (>= 1); None means alpha = 1, the YaRN paper's Dynamic NTK (arXiv:2309.00071
    sec. 3.3): base (L / L0)^(d / (d - 2)), i.e. `ntk` with s = L / L0 recomputed at each length.
    """
    alpha = 1.0 if factor is None else scale_factor(factor, train_len, seq_len)
    length = max(seq_len, train_len)
    return default_inv_freq(d, base * ((alpha * length / train_len) - (alpha - 1)) ** _ntk_exponent(d)), 1.0


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature sqrt(1/t) = 0.1 ln(s) + 1 (arXiv:2309.00071 eq. 22), HF `get_mscale`."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(d, base, train_len, seq_len, factor=None, beta_fast=32.0, beta_slow=1.0, attention_factor=None,
          mscale=None, mscale_all_dim=None, truncate=True):
    """YaRN "NTK-by-parts" (arXiv:2309.00071 sec. 3.2): interpolate low frequencies, keep high ones, ramp between."""
    if not beta_fast > beta_slow > 0:
        raise ConfigError(f"yarn needs beta_fast > beta_slow > 0, got {beta_fast}, {beta_slow}")
    s = scale_factor(factor, train_len, seq_len)
    _check_attention_factor(attention_factor)
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = yarn_mscale(s, mscale) / yarn_mscale(s, mscale_all_dim)
        else:
            attention_factor = yarn_mscale(s)

    def correction_dim(rotations: float) -> float:  # the dim index whose wavelength fits `rotations` in L0
        return d * math.log(train_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

    theta = default_inv_freq(d, base)
    if s == 1.0:  # the blend theta (1 - e) + theta e below can differ from theta in the last bit
        return theta, float(attention_factor)
    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001  # avoid a division by zero, as the reference does
    ramp = ((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1.0 - ramp  # 1: keep the original frequency (high frequencies), 0: interpolate
    return theta / s * (1 - extrapolation) + theta * extrapolation, float(attention_factor)


def _llama3(d, base, train_len, seq_len, factor=None, low_freq_factor=1.0, high_freq_factor=4.0):
    """Llama 3.1 scaling: wavelengths > L0/low kept x 1/s, < L0/high unchanged, smooth in between."""
    if not 0 < low_freq_factor < high_freq_factor:
        raise ConfigError(f"llama3 needs high_freq_factor > low_freq_factor > 0, got {high_freq_factor}, "
                          f"{low_freq_factor}")
    s = scale_factor(factor, train_len, seq_len)
    theta = default_inv_freq(d, base)
    if s == 1.0:  # the smooth band's (1 - a) x + a x would differ from x in the last bit
        return theta, 1.0
    wavelen = 2 * math.pi / theta
    low_wavelen, high_wavelen = train_len / low_freq_factor, train_len / high_freq_factor
    scaled = torch.where(wavelen > low_wavelen, theta / s, theta)
    smooth = (train_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / s + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled), 1.0


def _longrope(d, base, train_len, seq_len, factor=None, short_factor=None, long_factor=None,
              attention_factor=None):
    """LongRoPE (Ding et al. 2024, arXiv:2402.13753; Phi-3): per-dimension rescale factors, long past L0.

    short_factor null: all ones. long_factor null: a geometric ramp s^(i / (d/2 - 1)) from 1 at the highest
    frequency to s at the lowest (a searched-factor stand-in that keeps local order and interpolates the rest).
    """
    s = scale_factor(factor, train_len, seq_len)
    _check_attention_factor(attention_factor)
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

    short = factors("short_factor", short_factor, torch.ones(n))
    long = factors("long_factor", long_factor, (s ** (torch.arange(n, dtype=torch.float64) / max(1, n - 1))).float())
    if attention_factor is None:
        attention_factor = 1.0 if s <= 1 else math.sqrt(1 + math.log(s) / math.log(train_len))
    ext = long if seq_len > train_len else short
    return default_inv_freq(d, base) / ext, float(attention_factor)


METHODS = {"none": _none, "pi": _pi, "ntk": _ntk, "dynamic_ntk": _dynamic_ntk, "yarn": _yarn, "llama3": _llama3,
           "longrope": _longrope}


def rope_parameters(method: str, *, head_dim: int, base: float, train_len: int, seq_len: int,
                    **params) -> tuple[torch.Tensor, float]:
    """(inverse frequencies (head_dim // 2,) float32, attention factor) of `method` at the current seq_len."""
    if method not in METHODS:
        raise ConfigError(f"unknown RoPE scaling {method!r}; known: {sorted(METHODS)}")
    if head_dim <= 0 or head_dim % 2:
        raise ConfigError(f"RoPE needs an even, positive rotary head_dim, got {head_dim}")
    if train_len <= 0 or seq_len <= 0:
        raise ConfigError(f"train_len and seq_len must be positive, got {train_len}, {seq_len}")
    fn = METHODS[method]
    allowed = fn.__code__.co_varnames[4:fn.__code__.co_argcount]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(f"RoPE scaling {method!r} takes {list(allowed) or 'no parameters'}; unknown: {unknown}")
    return fn(head_dim, float(base), train_len, seq_len, **params)


def rope_cache(positions: torch.Tensor, inv_freq: torch.Tensor, attention_factor: float = 1.0):
    """cos and sin of the angles p * theta_i, fp32 with autocast off, shapes (T, head_dim // 2) (litgpt-style)."""
    with torch.autocast(device_type=positions.device.type, enabled=False):
        angles_TF = positions.to(torch.float32)[:, None] * inv_freq.to(positions.device, torch.float32)[None, :]
        return torch.cos(angles_TF) * attention_factor, torch.sin(angles_TF) * attention_factor
