"""Relative schemes whose logit terms depend on the queries or keys: learned (or sinusoidal) embeddings of the
relative distance that meet q or k inside attention. All enter through the `score` hook, one chunk of queries
at a time; none has a length limit (distances past the table are clipped, sinusoids are computed on the fly).

The model's content logit is q_i . k_j / sqrt(D); every term here is divided by sqrt(D) as well (DeBERTa divides
the sum of all three of its terms by sqrt(3D), as its code does).
Learned tables are per layer by default, as in each reference (N = n_layers copies, leading dimension N);
`shared: true` gives one table for all layers (lenx's earlier behaviour, an ablation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lenx.errors import check_int
from lenx.kernels import by_distance, distance_buffer, distance_view
from lenx.pos.absolute import sinusoidal_table
from lenx.pos.base import AttnContext, PositionalScheme, distance_index, layer_tables, scored_chunk
from lenx.pos.bias import distances


@dataclass(frozen=True)
class RelativeContext(AttnContext):
    """Relative embeddings already projected per head, built once per forward and shared by all layers."""

    rel_k_NHRD: torch.Tensor | None = None  # key-side relative embeddings per layer table, fp32, (N, H, R, D)
    rel_q_NHRD: torch.Tensor | None = None  # query-side relative embeddings (DeBERTa's position-to-content)


def clipped_index(q_pos_T: torch.Tensor, k_pos_S: torch.Tensor, k: int) -> torch.Tensor:
    """clip(j - i, -k, k) + k: the row of key j's relative embedding for query i, LongTensor (T, S)."""
    return (k_pos_S[None, :] - q_pos_T[:, None]).clamp(-k, k) + k


def gather_last(x_BHTR: torch.Tensor, idx_TS: torch.Tensor) -> torch.Tensor:
    """out[b, h, i, j] = x[b, h, i, idx[i, j]], (B, H, T, S)."""
    return x_BHTR.gather(-1, idx_TS.expand(*x_BHTR.shape[:-1], -1))


def check_distance(k: int) -> None:
    check_int(k, "max_distance")


class Shaw(PositionalScheme):
    """Shaw et al. 2018 relative position representations (arXiv:1803.02155), keys only:
    e_ij = q_i . (k_j + a^K_{clip(j - i, -k, k)}) / sqrt(D), with 2k+1 learned vectors of size D shared by all
    heads (as in the paper). One table per layer, as tensor2tensor's `dot_product_attention_relative` creates its
    relative embeddings inside each attention layer's scope; `shared: true` ties them across layers. Distances
    beyond k share the outermost vector, so any length evaluates; a causal decoder only reads the k+1 vectors of
    j <= i."""

    shift_invariant = True  # terms of i - j (and content)

    def __init__(self, *, max_distance: int = 16, shared: bool = False, **dims) -> None:
        super().__init__(**dims)
        check_distance(max_distance)
        self.max_distance, self.tables = max_distance, layer_tables(shared, self.n_layers)
        self.key_NRD = nn.Parameter(torch.randn(self.tables, 2 * max_distance + 1, self.head_dim)
                                    * self.head_dim ** -0.5)

    def score(self, q_BHTD, k_BHSD, ctx):
        idx_TS = clipped_index(ctx.q_pos_T, ctx.k_pos_S, self.max_distance)
        key_RD = self.key_NRD[self.layer(ctx)].float()
        return gather_last(q_BHTD @ key_RD.T, idx_TS) / math.sqrt(self.head_dim)

    def chunk_mask(self, q_BHtD, k_BHsD, ctx, work):
        # distance d reads row k - min(d, k): rows k, k-1, ..., 0 in descending distance are rows 0..k
        key_RD = self.key_NRD[self.layer(ctx)].float()[:self.max_distance + 1]
        return q_BHtD, by_distance(q_BHtD @ key_RD.T / math.sqrt(self.head_dim), k_BHsD.shape[2], work)

    def extra_repr(self) -> str:
        return f"max_distance={self.max_distance}, tables={self.tables}"


class ShawKV(Shaw):
    """Shaw et al. 2018 (arXiv:1803.02155) with value representations too:
    z_i = sum_j a_ij (v_j + a^V_{clip(j - i, -k, k)}), one a^V table per layer like a^K.
    The paper found the value term adds little over keys alone. It needs the attention weights themselves, so
    attention runs unfused for this scheme, except while scoring at default positions (`band_values`: the
    weights of the k-wide band from the fused kernel's row normalisers)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.value_NRD = nn.Parameter(torch.randn_like(self.key_NRD) * self.head_dim ** -0.5)

    def chunk_mask(self, q_BHtD, k_BHsD, ctx, work):
        """Shaw's chunk mask, and the value term as a function of the rows' logsumexp (`band_values`)."""
        q2, mask = super().chunk_mask(q_BHtD, k_BHsD, ctx, work)
        return q2, mask, lambda lse_BHt: self.band_values(q_BHtD, k_BHsD, lse_BHt, ctx)

    def band_values(self, q_BHtD, k_BHsD, lse_BHt, ctx):
        """sum_j a_ij a^V_{clip} from the band alone: every key at distance >= k shares a^V_0 (the clipped end),
        and the weights sum to 1, so the term is a^V_0 + sum_{d < k} a_{i,i-d} (a^V_{k-d} - a^V_0), with
        a_{i,i-d} = exp(l_{i,i-d} - lse_i) from the k logits of the band (queries s - t..s - 1, keys 0..s - 1)."""
        t, s, K, n = q_BHtD.shape[2], k_BHsD.shape[2], self.max_distance, self.layer(ctx)
        d_K = torch.arange(K, device=q_BHtD.device)
        j_tK = torch.arange(s - t, s, device=q_BHtD.device)[:, None] - d_K  # the key at distance d (< 0: none)
        band_BHtKD = k_BHsD[:, :, j_tK.clamp(min=0)]
        key_KD = self.key_NRD[n].float()[K - d_K]  # a^K at distance d < k: row k - d
        logits_BHtK = (torch.einsum("bhtd,bhtkd->bhtk", q_BHtD, band_BHtKD) + q_BHtD @ key_KD.T) / math.sqrt(
            self.head_dim)
        attn_BHtK = torch.exp(logits_BHtK - lse_BHt[..., None]).masked_fill(j_tK < 0, 0.0)
        value_RD = self.value_NRD[n].float()
        return attn_BHtK @ (value_RD[K - d_K] - value_RD[0]) + value_RD[0]

    def value(self, attn_BHTS, ctx):
        idx_TS = clipped_index(ctx.q_pos_T, ctx.k_pos_S, self.max_distance)
        weight_BHTR = attn_BHTS.new_zeros(*attn_BHTS.shape[:-1], self.value_NRD.shape[1])
        weight_BHTR.scatter_add_(-1, idx_TS.expand_as(attn_BHTS), attn_BHTS)  # attention mass per distance
        return weight_BHTR @ self.value_NRD[self.layer(ctx)].float()


class TransformerXL(PositionalScheme):
    """Transformer-XL relative attention (Dai et al. 2019, arXiv:1901.02860, sec. 3.3), without the memory:
    A_ij = q_i.k_j + u.k_j + (q_i + v).W_R R_{i-j}, all / sqrt(D), with R_d the sinusoid of distance d
    (d_model wide), W_R a learned projection to the heads, u and v learned global biases per head. As the
    authors' code (kimiyoung/transformer-xl, `RelPartialLearnableMultiHeadAttn.r_net`, `untie_r` off): a W_R per
    layer, u and v shared by all layers; `shared: true` ties W_R across layers too. R_d interleaves sin and cos
    where the code concatenates them: a fixed permutation of W_R's input columns, the same model."""

    shift_invariant = True  # terms of i - j (and content)

    def __init__(self, *, base: float = 10000.0, shared: bool = False, **dims) -> None:
        super().__init__(**dims)
        self.base, self.tables = base, layer_tables(shared, self.n_layers)
        hd = self.n_heads * self.head_dim
        self.u_HD = nn.Parameter(torch.randn(self.n_heads, self.head_dim) * 0.02)
        self.v_HD = nn.Parameter(torch.randn(self.n_heads, self.head_dim) * 0.02)
        self.w_r_NEC = nn.Parameter(torch.randn(self.tables, hd, self.d_model) * 0.02)  # E = H * D

    def context(self, q_pos_T, k_pos_S):
        with torch.autocast(q_pos_T.device.type, enabled=False):
            d_R = distances(q_pos_T, k_pos_S)
            rel_NRE = sinusoidal_table(d_R, self.d_model, self.base) @ self.w_r_NEC.float().transpose(-1, -2)
            rel_NHRD = rel_NRE.view(self.tables, len(d_R), self.n_heads, self.head_dim).transpose(1, 2)
        return RelativeContext(q_pos_T=q_pos_T, k_pos_S=k_pos_S, rel_k_NHRD=rel_NHRD)

    def score(self, q_BHTD, k_BHSD, ctx):
        rel_HRD = ctx.rel_k_NHRD[self.layer(ctx)]
        position_BHTR = (q_BHTD + self.v_HD.float()[:, None, :]) @ rel_HRD.transpose(-1, -2)
        position_BHTS = gather_last(position_BHTR, distance_index(ctx.q_pos_T, ctx.k_pos_S, rel_HRD.shape[1]))
        content_BH1S = (k_BHSD @ self.u_HD.float()[:, :, None]).transpose(-1, -2)  # u . k_j
        return (content_BH1S + position_BHTS) / math.sqrt(self.head_dim)

    def chunk_mask(self, q_BHtD, k_BHsD, ctx, work):
        # u . k_j is a term of the key alone: SDPA's (q + u) . k / sqrt(D) adds it. The position term is computed
        # straight into distance_view's buffer: distances s - 1..0, then t - 1 rows of zeros (set to -inf there).
        t, s = q_BHtD.shape[2], k_BHsD.shape[2]
        rel_HRD = ctx.rel_k_NHRD[self.layer(ctx)]
        if rel_HRD.shape[1] < s:  # (not at default positions, where every distance up to s - 1 is tabled)
            return scored_chunk(self, q_BHtD, k_BHsD, ctx)
        rel_HWD = F.pad(rel_HRD[:, :s].flip(1), (0, 0, 0, t - 1))
        q_v_BHtD = (q_BHtD + self.v_HD.float()[:, None, :]) / math.sqrt(self.head_dim)
        buf_BHtW = work.take((*q_BHtD.shape[:3], rel_HWD.shape[1]), q_BHtD)
        torch.matmul(q_v_BHtD, rel_HWD.transpose(-1, -2), out=buf_BHtW)
        return q_BHtD + self.u_HD.float()[:, None, :], distance_view(buf_BHtW, s)

    def extra_repr(self) -> str:
        return f"tables={self.tables}"


class DeBERTa(PositionalScheme):
    """DeBERTa disentangled attention (He et al. 2021, arXiv:2006.03654, sec. 3.1), as its released code
    (microsoft/DeBERTa `DisentangledSelfAttention`, transformers' `DebertaModel`) computes it:
      A_ij = (q_i.k_j + q_i.K^r_{delta(i,j)} + k_j.Q^r_{delta(i,j)}) / sqrt(3D),
      delta(i, j) = clamp(i - j + k, 0, 2k - 1)   (a row of the 2k relative embeddings P),
    K^r = P W_kr (`pos_proj`, no bias), Q^r = P W_qr + b_qr (`pos_q_proj`). Both terms use the same relative
    index i - j: the paper's eq. (4) prints delta(j, i) for the position-to-content term, the code does not.
    The sum of the three terms is divided by sqrt(3D) (`scale_factor` = 1 + 2 terms): the queries are scaled by
    1/sqrt(3) in `rotate`, so the model's q.k / sqrt(D) becomes q.k / sqrt(3D), and so does every term here.
    P is shared by all layers (the encoder's `rel_embeddings`), W_kr, W_qr, b_qr are per layer (each attention
    layer's projections); `shared: true` ties them across layers. Clipped distances (DeBERTa v1), not the log
    buckets of v2."""

    shift_invariant = True  # terms of i - j (and content)

    def __init__(self, *, max_distance: int = 64, shared: bool = False, **dims) -> None:
        super().__init__(**dims)
        check_distance(max_distance)
        self.max_distance, self.tables = max_distance, layer_tables(shared, self.n_layers)
        hd = self.n_heads * self.head_dim
        self.rel_RC = nn.Parameter(torch.randn(2 * max_distance, self.d_model) * 0.02)
        self.w_kr_NEC = nn.Parameter(torch.randn(self.tables, hd, self.d_model) * 0.02)
        self.w_qr_NEC = nn.Parameter(torch.randn(self.tables, hd, self.d_model) * 0.02)
        self.b_qr_NE = nn.Parameter(torch.zeros(self.tables, hd))

    def context(self, q_pos_T, k_pos_S):
        with torch.autocast(q_pos_T.device.type, enabled=False):
            rel_RC, n = self.rel_RC.float(), len(self.rel_RC)
            k_r = rel_RC @ self.w_kr_NEC.float().transpose(-1, -2)  # (N, R, E)
            q_r = rel_RC @ self.w_qr_NEC.float().transpose(-1, -2) + self.b_qr_NE.float()[:, None, :]
            k_r, q_r = (x.view(self.tables, n, self.n_heads, self.head_dim).transpose(1, 2) for x in (k_r, q_r))
        return RelativeContext(q_pos_T=q_pos_T, k_pos_S=k_pos_S, rel_k_NHRD=k_r, rel_q_NHRD=q_r)

    def rotate(self, q_BHTD, k_BHSD, ctx):
        return q_BHTD / math.sqrt(3), k_BHSD  # content and both position terms / sqrt(3D), as the code scales

    def score(self, q_BHTD, k_BHSD, ctx):  # q_BHTD arrives already divided by sqrt(3) (rotate)
        k, layer = self.max_distance, self.layer(ctx)
        idx_TS = (ctx.q_pos_T[:, None] - ctx.k_pos_S[None, :] + k).clamp(0, 2 * k - 1)  # row of i - j
        c2p_BHTS = gather_last(q_BHTD @ ctx.rel_k_NHRD[layer].transpose(-1, -2), idx_TS)  # q_i . K^r_(i-j)
        p2c_BHRS = ctx.rel_q_NHRD[layer] @ k_BHSD.transpose(-1, -2)  # Q^r_r . k_j for every row r
        p2c_BHTS = p2c_BHRS.gather(-2, idx_TS.expand(*p2c_BHRS.shape[:2], -1, -1))  # Q^r_(i-j) . k_j
        return c2p_BHTS / math.sqrt(self.head_dim) + p2c_BHTS / math.sqrt(3 * self.head_dim)

    def chunk_mask(self, q_BHtD, k_BHsD, ctx, work):
        k, layer, D = self.max_distance, self.layer(ctx), self.head_dim
        t, s = q_BHtD.shape[2], k_BHsD.shape[2]
        if s < k:  # a chunk shorter than the near band: its terms as `score` gives them
            return scored_chunk(self, q_BHtD, k_BHsD, ctx)
        rel_k_HRD, rel_q_HRD = ctx.rel_k_NHRD[layer][:, k:], ctx.rel_q_NHRD[layer][:, k:]  # distances 0..k-1
        # c2p: distance d reads row min(d, k - 1): descending, rows k-1..0, in distance_buffer's columns s-k..s-1
        c2p_BHtR = q_BHtD @ rel_k_HRD.flip(1).transpose(-1, -2)
        buf = distance_buffer(c2p_BHtR / math.sqrt(D), s, work)
        # p2c of far pairs (d >= k - 1), Q^r_far . k_j, is a term of the key alone: SDPA's (q + Q^r_far / sqrt(3))
        # . k / sqrt(D) adds it to every pair (q arrives divided by sqrt(3), `rotate`). Near pairs (d < k - 1)
        # replace it with their own: key j = s - t + r - d sits at column s - 1 - d of row r (keys below 0 lie
        # outside the view: their clamped entries are never read)
        p2c_BHRs = rel_q_HRD @ k_BHsD.transpose(-1, -2)  # row m: distance m (row k - 1: k - 1 and beyond)
        d_e = torch.arange(k - 1, device=q_BHtD.device)
        j_te = (s - t + torch.arange(t, device=q_BHtD.device)[:, None] - d_e).clamp(min=0)
        near = p2c_BHRs.flatten(-2)[:, :, d_e * s + j_te] - p2c_BHRs[:, :, k - 1][:, :, j_te]
        buf[..., s - 1 - d_e] = c2p_BHtR[..., k - 1 - d_e] / math.sqrt(D) + near / math.sqrt(3 * D)
        return q_BHtD + rel_q_HRD[:, k - 1][:, None, :] / math.sqrt(3), distance_view(buf, s)

    def extra_repr(self) -> str:
        return f"max_distance={self.max_distance}, tables={self.tables}"
