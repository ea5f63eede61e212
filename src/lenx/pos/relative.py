"""Relative schemes whose logit terms depend on the queries or keys: learned (or sinusoidal) embeddings of the
relative distance that meet q or k inside attention. All enter through the `score` hook, one chunk of queries
at a time; none has a length limit (distances past the table are clipped, sinusoids are computed on the fly).

The model's content logit is q_i . k_j / sqrt(D); every term here is divided by sqrt(D) as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lenx.errors import ConfigError
from lenx.pos.absolute import sinusoidal_table
from lenx.pos.base import AttnContext, PositionalScheme, distance_index
from lenx.pos.bias import distances


@dataclass(frozen=True)
class RelativeContext(AttnContext):
    """Relative embeddings already projected per head, built once per forward and shared by all layers."""

    rel_k_HRD: torch.Tensor | None = None  # key-side relative embeddings, fp32, (H, R, D)
    rel_q_HRD: torch.Tensor | None = None  # query-side relative embeddings (DeBERTa's position-to-content)


def clipped_index(q_pos_T: torch.Tensor, k_pos_S: torch.Tensor, k: int) -> torch.Tensor:
    """clip(j - i, -k, k) + k: the row of key j's relative embedding for query i, LongTensor (T, S)."""
    return (k_pos_S[None, :] - q_pos_T[:, None]).clamp(-k, k) + k


def gather_last(x_BHTR: torch.Tensor, idx_TS: torch.Tensor) -> torch.Tensor:
    """out[b, h, i, j] = x[b, h, i, idx[i, j]], (B, H, T, S)."""
    return x_BHTR.gather(-1, idx_TS.expand(*x_BHTR.shape[:-1], -1))


def check_distance(k: int) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"max_distance must be a positive integer, got {k!r}")


class Shaw(PositionalScheme):
    """Shaw et al. 2018 relative position representations (arXiv:1803.02155), keys only:
    e_ij = q_i . (k_j + a^K_{clip(j - i, -k, k)}) / sqrt(D), with 2k+1 learned vectors of size D shared by all
    heads (as in the paper) and here by all layers. Distances beyond k share the outermost vector, so any
    length evaluates; a causal decoder only reads the k+1 vectors of j <= i."""

    def __init__(self, *, max_distance: int = 16, **dims) -> None:
        super().__init__(**dims)
        check_distance(max_distance)
        self.max_distance = max_distance
        self.key_RD = nn.Parameter(torch.randn(2 * max_distance + 1, self.head_dim) * self.head_dim ** -0.5)

    def score(self, q_BHTD, k_BHSD, ctx):
        idx_TS = clipped_index(ctx.q_pos_T, ctx.k_pos_S, self.max_distance)
        return gather_last(q_BHTD @ self.key_RD.float().T, idx_TS) / math.sqrt(self.head_dim)

    def extra_repr(self) -> str:
        return f"max_distance={self.max_distance}"


class ShawKV(Shaw):
    """Shaw et al. 2018 (arXiv:1803.02155) with value representations too:
    z_i = sum_j a_ij (v_j + a^V_{clip(j - i, -k, k)}).
    The paper found the value term adds little over keys alone; it needs the attention weights themselves, so
    attention runs unfused for this scheme."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.value_RD = nn.Parameter(torch.randn_like(self.key_RD) * self.head_dim ** -0.5)

    def value(self, attn_BHTS, ctx):
        idx_TS = clipped_index(ctx.q_pos_T, ctx.k_pos_S, self.max_distance)
        weight_BHTR = attn_BHTS.new_zeros(*attn_BHTS.shape[:-1], self.value_RD.shape[0])
        weight_BHTR.scatter_add_(-1, idx_TS.expand_as(attn_BHTS), attn_BHTS)  # attention mass per distance
        return weight_BHTR @ self.value_RD.float()


class TransformerXL(PositionalScheme):
    """Transformer-XL relative attention (Dai et al. 2019, arXiv:1901.02860, sec. 3.3), without the memory:
    A_ij = q_i.k_j + u.k_j + (q_i + v).W_R R_{i-j}, all / sqrt(D), with R_d the sinusoid of distance d
    (d_model wide), W_R a learned projection to the heads, u and v learned global biases per head. Shared by
    all layers here (the paper's code shares u and v across layers but has a W_R per layer)."""

    def __init__(self, *, base: float = 10000.0, **dims) -> None:
        super().__init__(**dims)
        self.base = base
        hd = self.n_heads * self.head_dim
        self.u_HD = nn.Parameter(torch.randn(self.n_heads, self.head_dim) * 0.02)
        self.v_HD = nn.Parameter(torch.randn(self.n_heads, self.head_dim) * 0.02)
        self.w_r_EC = nn.Parameter(torch.randn(hd, self.d_model) * 0.02)  # E = H * D

    def context(self, q_pos_T, k_pos_S):
        with torch.autocast(q_pos_T.device.type, enabled=False):
            d_R = distances(q_pos_T, k_pos_S)
            rel_RE = sinusoidal_table(d_R, self.d_model, self.base) @ self.w_r_EC.float().T
            rel_HRD = rel_RE.view(len(d_R), self.n_heads, self.head_dim).transpose(0, 1)
        return RelativeContext(q_pos_T=q_pos_T, k_pos_S=k_pos_S, rel_k_HRD=rel_HRD)

    def score(self, q_BHTD, k_BHSD, ctx):
        rel_HRD = ctx.rel_k_HRD
        position_BHTR = (q_BHTD + self.v_HD.float()[:, None, :]) @ rel_HRD.transpose(-1, -2)
        position_BHTS = gather_last(position_BHTR, distance_index(ctx.q_pos_T, ctx.k_pos_S, rel_HRD.shape[1]))
        content_BH1S = (k_BHSD @ self.u_HD.float()[:, :, None]).transpose(-1, -2)  # u . k_j
        return (content_BH1S + position_BHTS) / math.sqrt(self.head_dim)


class DeBERTa(PositionalScheme):
    """DeBERTa disentangled attention (He et al. 2021, arXiv:2006.03654, sec. 3.1):
    A_ij = q_i.k_j + q_i.K^r_{delta(i,j)} + k_j.Q^r_{delta(j,i)}, delta(i, j) = clip(i - j, -k, k), with
    relative embeddings P (2k+1 rows, d_model wide) shared by all layers as in the paper, K^r = P W_kr,
    Q^r = P W_qr (here shared by the layers too). The paper scales the sum by 1/sqrt(3D); here each term is
    divided by sqrt(D), a constant factor per term that the learned projections absorb. Clipped distances
    (DeBERTa v1), not the log buckets of v2."""

    def __init__(self, *, max_distance: int = 64, **dims) -> None:
        super().__init__(**dims)
        check_distance(max_distance)
        self.max_distance = max_distance
        hd = self.n_heads * self.head_dim
        self.rel_RC = nn.Parameter(torch.randn(2 * max_distance + 1, self.d_model) * 0.02)
        self.w_kr_EC = nn.Parameter(torch.randn(hd, self.d_model) * 0.02)
        self.w_qr_EC = nn.Parameter(torch.randn(hd, self.d_model) * 0.02)

    def context(self, q_pos_T, k_pos_S):
        with torch.autocast(q_pos_T.device.type, enabled=False):
            rel_RC = self.rel_RC.float()
            k_r, q_r = (
                (rel_RC @ w.float().T).view(len(rel_RC), self.n_heads, self.head_dim).transpose(0, 1)
                for w in (self.w_kr_EC, self.w_qr_EC))
        return RelativeContext(q_pos_T=q_pos_T, k_pos_S=k_pos_S, rel_k_HRD=k_r, rel_q_HRD=q_r)

    def score(self, q_BHTD, k_BHSD, ctx):
        k = self.max_distance
        idx_TS = clipped_index(ctx.q_pos_T, ctx.k_pos_S, k)  # row of clip(j - i); 2k - idx: of clip(i - j)
        c2p_BHTS = gather_last(q_BHTD @ ctx.rel_k_HRD.transpose(-1, -2), 2 * k - idx_TS)  # q_i . K^r_(i-j)
        p2c_BHRS = ctx.rel_q_HRD @ k_BHSD.transpose(-1, -2)  # Q^r_r . k_j for every row r
        p2c_BHTS = p2c_BHRS.gather(-2, idx_TS.expand(*p2c_BHRS.shape[:2], -1, -1))  # Q^r_(j-i) . k_j
        return (c2p_BHTS + p2c_BHTS) / math.sqrt(self.head_dim)

    def extra_repr(self) -> str:
        return f"max_distance={self.max_distance}"
