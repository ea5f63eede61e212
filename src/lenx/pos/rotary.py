"""Rotary variants beyond RoPE: xPos (rotation with an exponential decay) and FoPE (a Fourier series per
dimension). Both act through `rotate`, so attention keeps SDPA's causal fast path. Angles and scales in fp32
with autocast off, cast back after the rotation (as RoPE in rope.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lenx.errors import ConfigError
from lenx.pos.base import AttnContext, PositionalScheme
from lenx.pos.rope import Scaling, apply_rotary, rotate_half
from lenx.pos.rope_scaling import rope_cache


def half_split_inv_freq(head_dim: int, base: float) -> torch.Tensor:
    """RoPE's inverse frequencies theta_f = base^(-2f/D), f = 0..D/2-1, fp32."""
    if head_dim % 2:
        raise ConfigError(f"rotary schemes need an even head_dim, got {head_dim}")
    return base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


@dataclass(frozen=True)
class XPosContext(AttnContext):
    scale_TD: torch.Tensor | None = None  # zeta^((p - c) / scale_base), fp32, (T, D): queries x it, keys / it


class XPos(PositionalScheme):
    """xPos (Sun et al. 2022, arXiv:2212.10554): RoPE with q_n scaled by zeta^(n/B) and k_m by zeta^(-m/B), so
    q_n . k_m carries zeta^((n - m)/B) <= 1 for m <= n: an exponential decay with distance, per dimension
    zeta_f = (2f/D + gamma) / (1 + gamma). Positions are centred on the window's middle before exponentiation
    (as torchscale does) so neither factor overflows at long lengths; the product depends on n - m only."""

    def __init__(self, *, base: float = 10000.0, gamma: float = 0.4, scale_base: float = 512.0,
                 scaling: dict | None = None, **dims) -> None:
        super().__init__(**dims)
        self.base, self.gamma, self.scale_base = float(base), float(gamma), float(scale_base)
        half_split_inv_freq(self.head_dim, self.base)  # refuses an odd head_dim
        # RoPE's context-extension methods apply to xPos's rotation unchanged (the decay is left as trained).
        self.scaling = Scaling(scaling, rotary_dim=self.head_dim, base=self.base, train_len=self.train_len)
        f = torch.arange(0, self.head_dim, 2, dtype=torch.float32)
        self.register_buffer("zeta_F", (f / self.head_dim + self.gamma) / (1 + self.gamma), persistent=False)

    def context(self, q_pos_T, k_pos_S):
        inv_freq_F, attn_factor = self.scaling(int(q_pos_T.max()) + 1)
        with torch.autocast(q_pos_T.device.type, enabled=False):
            cos_TF, sin_TF = rope_cache(q_pos_T, inv_freq_F, attn_factor)
            centred_T = (q_pos_T - (q_pos_T.min() + q_pos_T.max()) // 2).float()  # integer: shift-exact
            scale_TF = self.zeta_F[None, :] ** (centred_T[:, None] / self.scale_base)
            halves = (cos_TF, sin_TF, scale_TF)
            cos_TD, sin_TD, scale_TD = (torch.cat((t, t), -1) for t in halves)
        return XPosContext(cos_TD=cos_TD, sin_TD=sin_TD, q_pos_T=q_pos_T, k_pos_S=k_pos_S, scale_TD=scale_TD)

    def rotate(self, q_BHTD, k_BHSD, ctx):
        def turn(x, scale_TD):
            xf = x.float()
            return ((xf * ctx.cos_TD + rotate_half(xf) * ctx.sin_TD) * scale_TD).to(x.dtype)

        return turn(q_BHTD, ctx.scale_TD), turn(k_BHSD, 1.0 / ctx.scale_TD)

    def extra_repr(self) -> str:
        return f"base={self.base}, gamma={self.gamma}, scale_base={self.scale_base}, scaling={self.scaling}"


@dataclass(frozen=True)
class FoPEContext(AttnContext):
    cos_HTD: torch.Tensor | None = None  # per-head Fourier-series cos, fp32, (H, T, D)
    sin_HTD: torch.Tensor | None = None


class FoPE(PositionalScheme):
    """Fourier position embedding (Hua et al. 2024, arXiv:2412.17739).

    Each rotary pair m of each head rotates by a Fourier series instead of one frequency:
    cos'_m(n) = sum_k C_hkm cos(w_k n), sin'_m(n) = sum_k S_hkm sin(w_k n), over the frequencies w_k that
    complete a period within the training length (w >= 2 pi / train_len); the pairs whose frequency is lower
    are clipped to frequency zero (cos' = 1, sin' = 0: no position at all), as they were never trained over a
    full period. C and S start at identity + N(0, sigma^2 / K) noise (K kept frequencies) and are learned
    parameters (the paper's code freezes them and divides each column by its sum, a division with a pole once
    they learn, so it is left out). Not purely relative: the cross terms w_k n - w_l m do not cancel.
    """

    def __init__(self, *, base: float = 10000.0, sigma: float = 0.3, **dims) -> None:
        super().__init__(**dims)
        self.base, self.sigma = float(base), float(sigma)
        inv_freq_F = half_split_inv_freq(self.head_dim, self.base)
        kept_K = inv_freq_F[inv_freq_F >= 2 * math.pi / self.train_len]  # highest frequencies come first
        self.register_buffer("inv_freq_K", kept_K, persistent=False)
        K = len(kept_K)

        def coefficients() -> nn.Parameter:
            return nn.Parameter(torch.eye(K) + sigma / math.sqrt(max(K, 1)) * torch.randn(self.n_heads, K, K))

        self.cos_coef_HKK, self.sin_coef_HKK = coefficients(), coefficients()

    def context(self, q_pos_T, k_pos_S):
        with torch.autocast(q_pos_T.device.type, enabled=False):
            angles_TK = q_pos_T.float()[:, None] * self.inv_freq_K[None, :]
            cos_HTK = torch.einsum("tk,hkm->htm", angles_TK.cos(), self.cos_coef_HKK.float())
            sin_HTK = torch.einsum("tk,hkm->htm", angles_TK.sin(), self.sin_coef_HKK.float())
            zero_freq = self.head_dim // 2 - angles_TK.shape[1]
            cos_HTF = torch.cat((cos_HTK, cos_HTK.new_ones(self.n_heads, len(q_pos_T), zero_freq)), -1)
            sin_HTF = torch.cat((sin_HTK, sin_HTK.new_zeros(self.n_heads, len(q_pos_T), zero_freq)), -1)
        return FoPEContext(q_pos_T=q_pos_T, k_pos_S=k_pos_S, cos_HTD=torch.cat((cos_HTF, cos_HTF), -1),
                           sin_HTD=torch.cat((sin_HTF, sin_HTF), -1))

    def rotate(self, q_BHTD, k_BHSD, ctx):
        return apply_rotary(q_BHTD, ctx.cos_HTD, ctx.sin_HTD), apply_rotary(k_BHSD, ctx.cos_HTD, ctx.sin_HTD)

    def extra_repr(self) -> str:
        return f"base={self.base}, sigma={self.sigma}, kept_frequencies={len(self.inv_freq_K)}"
