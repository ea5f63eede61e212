"""Schemes that add a bias to the attention logits, built from absolute positions.

Most are a function of the distance d = i - j alone (ALiBi, T5, KERPLE, Sandwich): `context` evaluates it once
per forward for every distance that occurs, as a small (H, R) table that `bias` spreads over the (query, key) pairs
(a Toeplitz matrix for default positions; under randomized positions drawn per layer, the table of the layer's
drawn distances, placed Toeplitz: `distance_draw_contexts`). FIRE's bias also depends on the query
position: its `bias` evaluates the MLP for the pairs asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lenx.errors import ConfigError
from lenx.pos.base import AttnContext, PositionalScheme, causal, max_distance


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi head slopes (Press et al. 2022, arXiv:2108.12409), fp32, shape (n_heads,).

    For n a power of two: the geometric sequence starting at 2^(-8/n) with that same ratio. Otherwise, as the
    paper's reference code does: the slopes of the closest lower power of two, then every other slope of the
    next power of two, until n slopes.
    """
    if n_heads <= 0:
        raise ValueError(f"n_heads must be positive, got {n_heads}")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_two(n_heads)
    else:
        lower = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_two(lower) + power_of_two(2 * lower)[0::2][: n_heads - lower]
    return torch.tensor(slopes, dtype=torch.float32)


def distances(q_pos_T: torch.Tensor, k_pos_S: torch.Tensor) -> torch.Tensor:
    """Every causal distance 0, 1, ..., max(i - j) that these positions produce, fp32, (R,)."""
    return torch.arange(max_distance(q_pos_T, k_pos_S) + 1, device=q_pos_T.device, dtype=torch.float32)


@dataclass(frozen=True)
class DistanceContext(AttnContext):
    # The logit bias of every distance d = i - j >= 0 that occurs, fp32, (H, R) with R > every distance.
    bias_HR: torch.Tensor | None = None
    # Randomized distances (`distance_draw_contexts`): offset m = i - j stands for distance drawn_R[m], and
    # bias_HR[:, m] is the bias there; None: bias_HR[:, d] is the bias of distance d itself.
    drawn_R: torch.Tensor | None = None
    # A linear bias: bias_HR[:, d] = -slopes_H * d exactly (ALiBi), which attention may sum as extra channels of q
    # and k (lenx.attention's "features" path); None for any other function of the distance.
    slopes_H: torch.Tensor | None = None

    @property
    def bias_HTS(self) -> torch.Tensor:
        """The distance bias of every (query, key) pair, fp32, (H, T, S) (future keys: d = 0)."""
        return self.bias_at(self.q_pos_T[:, None] - self.k_pos_S[None, :])

    def bias_at(self, d_TS: torch.Tensor) -> torch.Tensor:
        """The bias at these distances (clipped to [0, R - 1]), fp32, (H, T, S)."""
        idx_TS = d_TS.clamp(0, self.bias_HR.shape[1] - 1)
        # An embedding lookup rather than bias_HR[:, idx]: the indexing backward (an accumulating scatter)
        # made a tiny model's training step 4x slower on an H100 (56 vs 13 ms). Contiguous (H, T, S) for SDPA.
        return F.embedding(idx_TS, self.bias_HR.T).permute(2, 0, 1).contiguous()


class DistanceBias(PositionalScheme):
    """A bias b_h(d) of the distance d = i - j only: subclasses give `distance_bias(d_R) -> (H, R)`, in fp32.
    The scheme describes itself by its context, a DistanceContext (the per-head table of every distance that
    occurs): lenx.attention builds the mask from it (a Toeplitz copy or strided view at default positions,
    FlexAttention's score_mod, exact channels of q and k for a linear bias), and `bias` is the reference."""

    shift_invariant = True  # b_h(i - j)

    def distance_bias(self, d_R: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def linear_slopes(self) -> torch.Tensor | None:
        """m_H where b_h(d) = -m_h d exactly (ALiBi), else None."""
        return None

    def context(self, q_pos_T, k_pos_S):
        with torch.autocast(q_pos_T.device.type, enabled=False):
            bias_HR = self.distance_bias(distances(q_pos_T, k_pos_S))
        return DistanceContext(q_pos_T=q_pos_T, k_pos_S=k_pos_S, bias_HR=bias_HR, slopes_H=self.linear_slopes())

    def bias(self, ctx, q_start, dtype, fast=False):
        return causal(ctx.bias_HTS, ctx.q_pos_T, ctx.k_pos_S)


def distance_draw_contexts(pos: DistanceBias, dist_NR: torch.Tensor) -> list[DistanceContext]:
    """Randomized distances, as the authors' `compute_noisy_alibi_encodings_biases` (Ruoss et al. 2023,
    arXiv:2305.16843; google-deepmind/randomized_positional_encodings, models/positional_encodings.py): in layer
    n the pair at offset m = i - j gets the bias of the m-th sorted drawn distance dist_NR[n, m] (a Toeplitz
    matrix, their `relative_shift`), queries and keys at default positions, so the Toeplitz paths run. Their
    code does this for ALiBi; T5, KERPLE and Sandwich, biases of the distance alone too, follow the same rule.
    One `distance_bias` call for every layer (KERPLE clamps its parameters in place once per forward)."""
    N, R = dist_NR.shape
    at_R = torch.arange(R, device=dist_NR.device)
    with torch.autocast(dist_NR.device.type, enabled=False):
        bias_HNR = pos.distance_bias(dist_NR.flatten().float()).view(-1, N, R)
    return [DistanceContext(q_pos_T=at_R, k_pos_S=at_R, bias_HR=bias_HNR[:, n], drawn_R=dist_NR[n])
            for n in range(N)]


class ALiBi(DistanceBias):
    """Linear bias -m_h * (i - j) on the logit of query i and key j <= i; no embeddings (arXiv:2108.12409)."""

    def __init__(self, **dims) -> None:
        super().__init__(**dims)
        self.register_buffer("slopes_H", alibi_slopes(self.n_heads), persistent=False)

    def slopes(self) -> torch.Tensor:
        return self.slopes_H

    def linear_slopes(self):
        return self.slopes()

    def distance_bias(self, d_R):
        return -self.slopes()[:, None] * d_R[None, :]


class LearnedALiBi(ALiBi):
    """ALiBi whose head slopes are learned, starting from the fixed geometric ones (arXiv:2108.12409; its
    authors tried trainable slopes and report no better extrapolation, so this is the ablation). Slopes are
    parameterised by their log, so they stay positive and the bias keeps decaying with distance."""

    def __init__(self, **dims) -> None:
        super().__init__(**dims)
        self.log_slopes_H = nn.Parameter(alibi_slopes(self.n_heads).log())

    def slopes(self) -> torch.Tensor:
        return self.log_slopes_H.exp()


def t5_relative_bucket(relative_position: torch.Tensor, *, bidirectional: bool, num_buckets: int,
                       max_distance: int) -> torch.Tensor:
    """T5's bucket of each relative position = key position - query position (Raffel et al. 2020,
    arXiv:1910.10683; mesh-tensorflow `_relative_position_bucket`), as a LongTensor of the same shape.

    Half the buckets (a quarter when bidirectional) hold one distance each; the rest cover distances up to
    max_distance log-spaced, and every longer distance shares the last bucket. Bidirectional: keys after the
    query take the upper half of the buckets. One-sided (causal): keys after the query fall in bucket 0.
    """
    n = -relative_position  # query - key: > 0 for keys in the past
    bucket = torch.zeros_like(n)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (n < 0).long() * num_buckets
        n = n.abs()
    else:
        n = n.clamp(min=0)
    max_exact = num_buckets // 2
    # fp32 log and truncation toward zero, as the original; the clamp only avoids log(0) in unused entries.
    log_ratio = torch.log(n.float().clamp(min=max_exact) / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (num_buckets - max_exact)).long()).clamp(max=num_buckets - 1)
    return bucket + torch.where(n < max_exact, n, large)


class T5Bias(DistanceBias):
    """T5 relative attention bias: a learned scalar per (bucket, head) shared by all layers, one-sided
    buckets for a decoder (Raffel et al. 2020, arXiv:1910.10683, sec. 2.1). Distances past max_distance share
    a bucket, so any length evaluates."""

    def __init__(self, *, num_buckets: int = 32, max_distance: int = 128, **dims) -> None:
        super().__init__(**dims)
        if num_buckets < 4 or max_distance <= num_buckets // 2:
            raise ConfigError(f"T5 bias needs num_buckets >= 4 and max_distance > num_buckets / 2, "
                              f"got {num_buckets}, {max_distance}")
        self.num_buckets, self.max_distance = num_buckets, max_distance
        # std d_model^-0.5, as Hugging Face's T5 initialises its relative attention bias.
        self.table_NH = nn.Parameter(torch.randn(num_buckets, self.n_heads) * self.d_model ** -0.5)

    def distance_bias(self, d_R):
        bucket_R = t5_relative_bucket(-d_R.long(), bidirectional=False, num_buckets=self.num_buckets,
                                      max_distance=self.max_distance)
        return self.table_NH[bucket_R].T.contiguous()

    def untrained_buckets(self, span: int) -> list[int]:
        """The buckets no distance 0..span - 1 falls in: rows training on windows of `span` positions never
        updates, which every longer distance reads at evaluation (max_distance > span: T5's default 128 at a
        CPU study's L = 64 leaves buckets 27-31 untrained; the papers trained at L >= 512, every bucket used)."""
        seen = t5_relative_bucket(-torch.arange(span), bidirectional=False, num_buckets=self.num_buckets,
                                  max_distance=self.max_distance)
        return sorted(set(range(self.num_buckets)) - set(seen.tolist()))

    def first_distance_in(self, bucket: int) -> int:
        """The smallest distance that falls in `bucket` (or past it)."""
        d = torch.arange(max(self.max_distance, self.num_buckets) + 1)
        b = t5_relative_bucket(-d, bidirectional=False, num_buckets=self.num_buckets, max_distance=self.max_distance)
        return int(d[b >= bucket][0])

    def extra_repr(self) -> str:
        return f"num_buckets={self.num_buckets}, max_distance={self.max_distance}"


class KerpleLog(DistanceBias):
    """KERPLE, logarithmic variant: bias -r1_h * log(1 + r2_h * d), r1, r2 > 0 learned per head (Chi et al.
    2022, arXiv:2205.09921, eq. 7), one set shared by all layers. As the authors' code (chijames/KERPLE,
    `ParallelKerpleLog`): r1 and r2 are the parameters themselves, initialised r1 ~ U(0, 2), r2 ~ U(0, 1), and
    clamped in place to >= eps before every use (so Adam steps them at its full rate; a gradient reaches a clamped
    value unchanged). `KerpleLogSoftplus` is lenx's earlier softplus reparametrisation, an ablation."""

    def __init__(self, *, eps: float = 1e-2, **dims) -> None:
        super().__init__(**dims)
        self.eps = eps
        self.scale_H = nn.Parameter(torch.rand(self.n_heads) * 2)  # r1, the authors' bias_p
        self.rate_H = nn.Parameter(torch.rand(self.n_heads))  # r2, the authors' bias_a

    @torch.no_grad()
    def clamp_(self) -> None:
        """The authors' in-place clamp (`param.data = param.data.clamp(min=eps)`), before each use."""
        self.scale_H.clamp_(min=self.eps)
        self.rate_H.clamp_(min=self.eps)

    def distance_bias(self, d_R):
        self.clamp_()
        return -self.scale_H.float()[:, None] * torch.log1p(self.rate_H.float()[:, None] * d_R[None, :])


class KerplePower(DistanceBias):
    """KERPLE, power variant: bias -r1_h * d^r2_h with r1 > 0 and 0 < r2 <= 2 learned per head (Chi et al.
    2022, arXiv:2205.09921, eq. 6), shared by all layers. As the authors' code (chijames/KERPLE,
    `ParallelKerplePower`, pos_emb `kerple_power_ap_`): the raw parameters r1 ~ U(0, 1) (bias_a) and
    r2 ~ U(0, 2) (bias_p), clamped in place to r1 >= eps and eps <= r2 <= 2 before every use.
    `KerplePowerSoftplus` is lenx's earlier reparametrisation, an ablation."""

    def __init__(self, *, eps: float = 1e-2, **dims) -> None:
        super().__init__(**dims)
        self.eps = eps
        self.scale_H = nn.Parameter(torch.rand(self.n_heads))  # r1, the authors' bias_a
        self.power_H = nn.Parameter(torch.rand(self.n_heads) * 2)  # r2, the authors' bias_p

    @torch.no_grad()
    def clamp_(self) -> None:
        self.scale_H.clamp_(min=self.eps)
        self.power_H.clamp_(min=self.eps, max=2)

    def distance_bias(self, d_R):
        self.clamp_()
        return kerple_power(self.scale_H.float(), self.power_H.float(), d_R)


def kerple_power(scale_H: torch.Tensor, power_H: torch.Tensor, d_R: torch.Tensor) -> torch.Tensor:
    # d^p with d >= 1 only: at d = 0 the bias is 0, and d(0^p)/dp would be 0 * log 0 = nan.
    powered_HR = d_R.clamp(min=1)[None, :] ** power_H[:, None]
    return -scale_H[:, None] * torch.where(d_R > 0, powered_HR, 0.0)


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


class KerpleLogSoftplus(DistanceBias):
    """Ablation of `KerpleLog`: r = eps + softplus(raw) instead of the authors' clamped raw parameters. Keeps r > 0
    with a gradient everywhere, but Adam's step on r is scaled by sigmoid(raw) (5-25x smaller for r of 0.01-0.2).
    Initialised like the authors' code: r1 ~ U(0, 2), r2 ~ U(0, 1)."""

    def __init__(self, *, eps: float = 1e-2, **dims) -> None:
        super().__init__(**dims)
        self.eps = eps
        self.raw_scale_H = nn.Parameter(inverse_softplus(torch.rand(self.n_heads).clamp(min=1e-3) * 2))
        self.raw_rate_H = nn.Parameter(inverse_softplus(torch.rand(self.n_heads).clamp(min=1e-3)))

    @property
    def scale_H(self) -> torch.Tensor:  # r1
        return self.eps + F.softplus(self.raw_scale_H.float())

    @property
    def rate_H(self) -> torch.Tensor:  # r2
        return self.eps + F.softplus(self.raw_rate_H.float())

    def distance_bias(self, d_R):
        return -self.scale_H[:, None] * torch.log1p(self.rate_H[:, None] * d_R[None, :])


class KerplePowerSoftplus(DistanceBias):
    """Ablation of `KerplePower`: r1 = eps + softplus(raw), r2 = eps + (2 - eps) sigmoid(raw) instead of the
    authors' clamps; initialised like the authors' code: r1 ~ U(0, 1), r2 ~ U(0, 2)."""

    def __init__(self, *, eps: float = 1e-2, **dims) -> None:
        super().__init__(**dims)
        self.eps = eps
        self.raw_scale_H = nn.Parameter(inverse_softplus(torch.rand(self.n_heads).clamp(min=1e-3)))
        p = (torch.rand(self.n_heads) * 2).clamp(eps + 1e-3, 2 - 1e-3)
        self.raw_power_H = nn.Parameter(torch.logit((p - eps) / (2 - eps)))

    @property
    def scale_H(self) -> torch.Tensor:  # r1
        return self.eps + F.softplus(self.raw_scale_H.float())

    @property
    def power_H(self) -> torch.Tensor:  # r2
        return self.eps + (2 - self.eps) * torch.sigmoid(self.raw_power_H.float())

    def distance_bias(self, d_R):
        return kerple_power(self.scale_H, self.power_H, d_R)


class Sandwich(DistanceBias):
    """Sandwich (Chi et al. 2023, arXiv:2212.10356): the inner product of sinusoidal embeddings of dimension
    d', p_i . p_j = sum_k cos((i - j) w_k), w_k = base^(-2k/d'), k = 1..d'/2, shifted by -d'/2 (so 0 at distance 0)
    and compressed per head by 8h/H like ALiBi's slopes. d' (`dim`) null: the head dimension, as the NeMo port
    (`SandwichRelativePositionEmbedding`, hidden_size = "hidden size per attention head") does; a fixed d' is an
    option (a larger d' deepens the bias: its slope near 0 grows as d'). Parameter-free; the bias stays bounded
    (it oscillates below 0 far away)."""

    def __init__(self, *, dim: int | None = None, base: float = 10000.0, **dims) -> None:
        super().__init__(**dims)
        dim = self.head_dim if dim is None else dim
        if not isinstance(dim, int) or dim <= 0 or dim % 2:
            raise ConfigError(f"Sandwich needs an even positive embedding dim, got {dim}")
        self.dim = dim
        k = torch.arange(1, dim // 2 + 1, dtype=torch.float32)
        self.register_buffer("inv_freq_K", base ** (-2 * k / dim), persistent=False)
        compress_H = 8 * torch.arange(1, self.n_heads + 1, dtype=torch.float32) / self.n_heads
        self.register_buffer("compress_H", compress_H, persistent=False)

    def distance_bias(self, d_R):
        dot_R = torch.cos(d_R[:, None] * self.inv_freq_K[None, :]).sum(-1) - self.dim / 2
        return dot_R[None, :] / self.compress_H[:, None]

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


from lenx.pos.fire import FIRE  # noqa: E402  (configs name it lenx.pos.bias.FIRE: checkpoints keep that target)

__all__ = ["FIRE"]
