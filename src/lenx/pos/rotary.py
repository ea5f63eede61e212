"""Rotary variants beyond RoPE: xPos (rotation with an exponential decay), FoPE (a Fourier series per dimension),
and RoPE with its lowest frequencies removed (p-RoPE, HoPE). All act through `rotate`, so attention keeps SDPA's
causal fast path. Angles and scales in fp32 with autocast off, cast back after the rotation (as RoPE in rope.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lenx.errors import ConfigError
from lenx.pos.base import AttnContext, PositionalScheme, layer_tables
from lenx.pos.rope import RoPE, Rotary, apply_rotary, rotate_half
from lenx.pos.rope_scaling import rope_cache


def half_split_inv_freq(head_dim: int, base: float) -> torch.Tensor:
    """RoPE's inverse frequencies theta_f = base^(-2f/D), f = 0..D/2-1, fp32."""
    if head_dim % 2:
        raise ConfigError(f"rotary schemes need an even head_dim, got {head_dim}")
    return base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


@dataclass(frozen=True)
class XPosContext(AttnContext):
    scale_TD: torch.Tensor | None = None  # zeta^((p - c) / scale_base), fp32, (T, D): queries x it, keys / it


class XPos(Rotary):
    """xPos (Sun et al. 2022, arXiv:2212.10554): RoPE with q_n scaled by zeta^(n/B) and k_m by zeta^(-m/B), so
    q_n . k_m carries zeta^((n - m)/B) <= 1 for m <= n: an exponential decay with distance, per dimension
    zeta_f = (2f/D + gamma) / (1 + gamma). Positions are centred on the window's middle before exponentiation
    (as torchscale does) so neither factor overflows at long lengths; the product depends on n - m only."""

    def __init__(self, *, gamma: float = 0.4, scale_base: float = 512.0, **kw) -> None:
        # RoPE's context-extension methods (kw `scaling`) apply to xPos's rotation unchanged (the decay as trained).
        super().__init__(**kw)
        self.gamma, self.scale_base = float(gamma), float(scale_base)
        f = torch.arange(0, self.head_dim, 2, dtype=torch.float32)
        self.register_buffer("zeta_F", (f / self.head_dim + self.gamma) / (1 + self.gamma), persistent=False)

    def context(self, q_pos_T, k_pos_S):
        inv_freq_F, attn_factor = self.frequencies(int(q_pos_T.max()) + 1)
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
        return f"{super().extra_repr()}, gamma={self.gamma}, scale_base={self.scale_base}"


@dataclass(frozen=True)
class FoPEContext(AttnContext):
    cos_NHTD: torch.Tensor | None = None  # per layer table and head Fourier-series cos, fp32, (N, H, T, D)
    sin_NHTD: torch.Tensor | None = None


def step_eye(k: int, m: int) -> torch.Tensor:
    """The authors' `get_step_eye`: (k, m) zeros with a 1 at (i * ceil(k / m), i) (the identity when k == m)."""
    eye = torch.zeros(k, m)
    step = math.ceil(k / m) if m else 1
    for i in range(m):
        if i * step < k:
            eye[i * step, i] = 1.0
    return eye


class FoPE(PositionalScheme):
    """Fourier position embedding (Hua et al. 2024, arXiv:2412.17739), as the authors' released code (OLMo-based
    `FourierEmbedding`, configs `fourier_init: eye_xavier_norm`, `sep_basis_head`, `ignore_clamp_zero`) computes it.

    RoPE's frequencies w = base^(-2f/D) lower than 2 pi / train_len (no full period within the training length)
    are clamped to zero and dropped (`rope_clamp_floor_to_zero`, `fourier_ignore_zero`), leaving K. Each head mixes
    them into M = min(K, D/4) output pairs (`output_dim`): cos'_m(n) = sum_k C_hkm cos(w_k n),
    sin'_m(n) = sum_k S_hkm sin(w_k n); the other D/2 - M pairs are padded with cos' = sin' = 1 (`F.pad(value=1)`:
    a constant, position-free map that doubles those pairs' q.k). C and S start at the step identity (`get_step_eye`)
    plus xavier-normal noise of gain sigma = 0.3 on the (H, K, M) tensor, std = sigma sqrt(2 / ((K + H) M)), and are
    frozen (`fourier_learnable: false`; `learnable: true` is the option) and not normalised (`fourier_norm: false`).
    Each attention layer has its own (the code builds one per block); `shared: true` ties them. Not purely relative:
    the cross terms w_k n - w_l m do not cancel.
    """

    def __init__(self, *, base: float = 10000.0, sigma: float = 0.3, learnable: bool = False, shared: bool = False,
                 **dims) -> None:
        super().__init__(**dims)
        if not isinstance(learnable, bool):
            raise ConfigError(f"FoPE learnable must be true or false, got {learnable!r}")
        self.base, self.sigma, self.tables = float(base), float(sigma), layer_tables(shared, self.n_layers)
        with torch.device("cpu"):  # which frequencies are kept is read from values: on the CPU, also when the model
            inv_freq_F = half_split_inv_freq(self.head_dim, self.base)  # is built on the meta device (counting)
        kept_K = inv_freq_F[inv_freq_F >= 2 * math.pi / self.train_len]  # highest frequencies come first
        self.register_buffer("inv_freq_K", kept_K.to(torch.empty(0).device), persistent=False)
        K, H = len(kept_K), self.n_heads
        self.out_pairs = M = min(K, self.head_dim // 4)
        std = self.sigma * math.sqrt(2 / ((K + H) * M)) if M else 0.0  # torch xavier_normal_ on (H, K, M)

        def coefficients() -> nn.Parameter:  # frozen by default: a Parameter (in the state_dict), as the code's
            return nn.Parameter(step_eye(K, M) + std * torch.randn(self.tables, H, K, M), requires_grad=learnable)

        self.cos_coef_NHKM, self.sin_coef_NHKM = coefficients(), coefficients()

    def context(self, q_pos_T, k_pos_S):
        with torch.autocast(q_pos_T.device.type, enabled=False):
            angles_TK = q_pos_T.float()[:, None] * self.inv_freq_K[None, :]
            cos_NHTM = torch.einsum("tk,nhkm->nhtm", angles_TK.cos(), self.cos_coef_NHKM.float())
            sin_NHTM = torch.einsum("tk,nhkm->nhtm", angles_TK.sin(), self.sin_coef_NHKM.float())
            pad = self.head_dim // 2 - self.out_pairs
            cos_NHTF, sin_NHTF = (F.pad(x, (0, pad), value=1.0) for x in (cos_NHTM, sin_NHTM))
        return FoPEContext(q_pos_T=q_pos_T, k_pos_S=k_pos_S, cos_NHTD=torch.cat((cos_NHTF, cos_NHTF), -1),
                           sin_NHTD=torch.cat((sin_NHTF, sin_NHTF), -1))

    def rotate(self, q_BHTD, k_BHSD, ctx):
        n = self.layer(ctx)
        cos_HTD, sin_HTD = ctx.cos_NHTD[n], ctx.sin_NHTD[n]
        return apply_rotary(q_BHTD, cos_HTD, sin_HTD), apply_rotary(k_BHSD, cos_HTD, sin_HTD)

    def extra_repr(self) -> str:
        return (f"base={self.base}, sigma={self.sigma}, kept_frequencies={len(self.inv_freq_K)}, "
                f"out_pairs={self.out_pairs}, tables={self.tables}")


class TruncatedRoPE(RoPE):
    """RoPE with its lowest frequencies removed: pair f (channels f and f + D/2, the half-split layout) turns by
    p theta_f, theta_f = base^(-2f/D), for f < `kept_pairs()`, and the pairs f >= kept_pairs() (the lowest
    frequencies, the longest wavelengths: the last indices of theta) turn by angle 0, so those channels pass
    through unrotated and carry no position. The kept frequencies keep RoPE's values (the exponent is over the whole
    head dim D, not over the kept channels as in GPT-NeoX's partial rotary, `rope_partial`).

    A RoPE scaling (configs/pos/scaling/) rescales each kept frequency exactly as it does in RoPE of the same head
    dim (its per-frequency ramps read the full set), and its attention factor multiplies every channel as in RoPE
    (cos = factor, sin = 0 on a removed pair); the removed pairs stay removed. Shift-invariant: a pair at frequency
    0 adds q . k whatever the positions.
    """

    def __init__(self, *, rotary_fraction: float = 1.0, **kw) -> None:
        if rotary_fraction != 1.0:
            raise ConfigError(f"{type(self).__name__} removes whole frequencies itself; rotary_fraction (GPT-NeoX's "
                              f"partial rotary, pos=rope_partial) does not combine with it, got {rotary_fraction}")
        super().__init__(**kw)  # validates the scaling through `frequencies`, which reads `kept_pairs()`

    def kept_pairs(self) -> int:
        """How many of the D/2 frequency pairs rotate (the highest ones, f = 0 .. kept - 1)."""
        raise NotImplementedError

    def frequencies(self, seq_len: int) -> tuple[torch.Tensor, float]:
        inv_freq_F, attn_factor = super().frequencies(seq_len)
        kept = self.kept_pairs()
        return torch.cat((inv_freq_F[:kept], inv_freq_F.new_zeros(len(inv_freq_F) - kept))), attn_factor

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kept_pairs={self.kept_pairs()} of {self.head_dim // 2}"


class PRoPE(TruncatedRoPE):
    """p-RoPE (Barbero et al. 2025, arXiv:2410.06205, "Round and Round We Go! What makes Rotary Positional Encodings
    useful?"): RoPE with the lowest fraction 1 - p of its frequencies removed; p = 1 is RoPE, p = 0 NoPE. As the
    authors' released code computes it (google-deepmind/gemma, gemma/gm/math/_positional_embeddings.py
    `apply_rope(..., rope_proportion=p)`, the Gemma 4 global layers' p-RoPE): int(p * D // 2) pairs rotate at
    base^(-2f/D), the other pairs' timescale is padded with inf (angle 0), half-split layout. Default p = 0.75, the
    paper's best setting (0.75-RoPE on Gemma 2B at 8k tokens, ahead of RoPE and 0.25-RoPE); Gemma 4 uses 0.25.
    """

    def __init__(self, *, p: float = 0.75, **kw) -> None:
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
            raise ConfigError(f"p_rope p (the fraction of RoPE's frequencies kept) must be in [0, 1], got {p!r}")
        self.p = float(p)  # set before RoPE's constructor, which calls `frequencies` (a plain float: no Module state)
        super().__init__(**kw)

    def kept_pairs(self) -> int:
        return int(self.p * self.head_dim // 2)  # the reference's rope_angles, rounding included

    def extra_repr(self) -> str:
        return f"p={self.p}, {super().extra_repr()}"


class HoPE(TruncatedRoPE):
    """HoPE, High-frequency rotary Position Encoding (Chen et al. 2025, arXiv:2410.21216, ACL 2025): RoPE keeping
    only the frequencies that complete a full period within the training length, theta_f > 2 pi / L; the
    lower ones (the "activated" component that forms the U-shaped attention and the top low-frequency components)
    are replaced by position-independent ones: those channels are not rotated. No code from the authors was found
    (searched by the paper's title, arXiv id and method name); the closest public reference followed here is
    0-5788719150923125/praxis `praxis/encoding/hope.py` (`HoPE(RoPE)`: full_inv_freq > 2 pi / block_size kept, the
    rest unrotated, at least the highest frequency kept when L is too short for any), which matches the paper's
    description. L is the length the frequencies were trained at (`original_len`: the run's training length unless
    the scaling names a shorter pretraining length), fixed at construction: the kept set does not move with the
    evaluation length. (FoPE's clamp in this file keeps theta_f >= 2 pi / L: the two differ only when a period
    equals L exactly.)
    """

    def kept_pairs(self) -> int:
        threshold = 2 * math.pi / self.original_len
        kept = sum(self.base ** (-2 * f / self.head_dim) > threshold for f in range(self.head_dim // 2))
        return max(kept, 1)  # the reference keeps the highest frequency when none completes a period in L
