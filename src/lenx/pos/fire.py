"""FIRE, functional interpolation for relative positions (Li et al. 2023, arXiv:2310.04418): a bias of the query and
key positions from a small MLP, evaluated for the pairs attention asks for (`lenx.pos.bias.FIRE` re-exports it,
the name configs and checkpoints use)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lenx.errors import ConfigError
from lenx.pos.base import PositionalScheme, causal, layer_tables

MLP_VALUES = 1 << 24  # FIRE's hidden activations per evaluation (64 MiB in fp32)


def distances_at_most(psi_D: torch.Tensor, norm_t: torch.Tensor, edges_E: torch.Tensor,
                      guess_tE: torch.Tensor | None = None) -> torch.Tensor:
    """m[i, k] = #{d : psi_D[d] / norm_t[i] <= edges_E[k]} for a non-decreasing psi_D, (t, E) int64: a search of
    edge * norm in psi (or `guess`), then moved one distance at a time to where the divided values, which
    bucketize compares with the edges, cross them (rounding can put the product's crossing a distance away)."""
    s, ratio = len(psi_D), lambda m: psi_D[m.clamp(0, max(s - 1, 0))] / norm_t[:, None]
    m_tE = torch.searchsorted(psi_D, edges_E[None, :] * norm_t[:, None], right=True) if guess_tE is None else guess_tE
    for _ in range(s + 1):
        up = (m_tE < s) & (ratio(m_tE) <= edges_E)
        down = (m_tE > 0) & (ratio(m_tE - 1) > edges_E)
        if not (up.any() or down.any()):
            break
        m_tE = m_tE + up.long() - down.long()
    return m_tE


class FIRE(PositionalScheme):
    """FIRE (Li et al. 2023, arXiv:2310.04418): bias_h(i, j) = f_h(psi(i - j) / psi(max(L, i))), psi(x) =
    log(c x + 1), f a 1 -> width -> H ReLU MLP, c and the threshold L = |L_mult| * init_L learned. Normalising by
    the query position maps every distance into [0, 1], so longer inputs interpolate instead of extrapolating; it
    also makes the bias depend on i, not i - j alone (`bias` evaluates the MLP for the query rows asked).
    As the paper's code (its appendix listing, `FIRE(num_heads, mlp_width=32, init_c=0.1, init_L=512.)`):
    init_L = 512 tokens whatever the training length, L_mult starts at 1; queries past L are in the
    progressive-interpolation regime (at the paper's training length 2048, three quarters of them). One FIRE per
    layer ("layerwise", the paper's default; one shared by all layers is its ablation): `shared: true`."""

    # Its chunk mask searches every query's piece starts and counts them along the rows (a scatter and a cumulative
    # sum per chunk): chunks of 2^23 logits (256 queries at 8192 keys, 4 heads) scored 8192 tokens 12 % faster than
    # attention's default 2^21, and with DAPE 15-20 % (one thread, results/benchmarks/mechanisms_35/README.md)
    cpu_chunk_logits = 1 << 23

    def __init__(self, *, mlp_width: int = 32, init_c: float = 0.1, init_L: float = 512.0, eps: float = 1e-6,
                 shared: bool = False, **dims) -> None:
        super().__init__(**dims)
        if not float(init_L) > 0:
            raise ConfigError(f"FIRE init_L must be positive, got {init_L!r}")
        self.mlp_width, self.eps, self.tables = mlp_width, eps, layer_tables(shared, self.n_layers)
        self.init_L = float(init_L)
        N = self.tables
        self.c_N = nn.Parameter(torch.full((N,), float(init_c)))
        self.L_mult_N = nn.Parameter(torch.ones(N))
        # PyTorch's default Linear init (U(+-1/sqrt(fan_in))), as the paper's nn.Linear layers; raw parameters
        # so that the Decoder's normal(0.02) init of Linear modules does not flatten the MLP.
        bound2 = mlp_width ** -0.5
        self.w1_NW = nn.Parameter(torch.empty(N, mlp_width).uniform_(-1, 1))
        self.b1_NW = nn.Parameter(torch.empty(N, mlp_width).uniform_(-1, 1))
        self.w2_NWH = nn.Parameter(torch.empty(N, mlp_width, self.n_heads).uniform_(-bound2, bound2))
        self.b2_NH = nn.Parameter(torch.empty(N, self.n_heads).uniform_(-bound2, bound2))

    def bias(self, ctx, q_start, dtype, fast=False):
        # The MLP's hidden layer is mlp_width times the bias (the pieces' gathers twice the heads): evaluate it a
        # few query rows at a time. `fast` (no gradient): the MLP's linear pieces.
        q_pos_T, k_pos_S, n = ctx.q_pos_T, ctx.k_pos_S, self.layer(ctx)
        per_pair = 2 * self.n_heads if fast else self.mlp_width
        rows = max(1, MLP_VALUES // (len(k_pos_S) * per_pair))
        parts = [self.fire_bias(q_pos_T[a:a + rows], k_pos_S, n, fast) for a in range(0, len(q_pos_T), rows)]
        return causal(torch.cat(parts, dim=1), q_pos_T, k_pos_S)

    def fire_bias(self, q_pos_T: torch.Tensor, k_pos_S: torch.Tensor, n: int = 0, pieces: bool = False
                  ) -> torch.Tensor:
        """The FIRE bias of layer table n for these query and key positions, fp32, (H, T, S): the MLP, or with
        `pieces` (no gradient: the pieces' gather would backpropagate through a scatter) its linear pieces
        (`mlp_pieces`, the same function)."""
        i_T, j_S, c = q_pos_T.float(), k_pos_S.float(), self.c_N[n]
        norm_T = self.query_norm(i_T, n)
        rel_TS = torch.log(torch.abs(c * (i_T[:, None] - j_S[None, :]).clamp(min=0)) + 1)
        x_TS = rel_TS / norm_T[:, None]
        if pieces:
            edges_E, slope_KH, offset_KH = self.mlp_pieces(n)
            piece_TS = torch.bucketize(x_TS, edges_E)
            # (T, S, 2H) -> heads first, as SDPA reads
            both = F.embedding(piece_TS, torch.cat([slope_KH, offset_KH], dim=1)).permute(2, 0, 1)
            return torch.addcmul(both[self.n_heads:], both[:self.n_heads], x_TS)
        x_X = x_TS.flatten()  # X = T * S
        hidden_XW = torch.relu(x_X[:, None] * self.w1_NW[n] + self.b1_NW[n])
        bias_HX = torch.addmm(self.b2_NH[n][:, None], self.w2_NWH[n].T, hidden_XW.T)  # heads first, as SDPA reads
        return bias_HX.view(self.n_heads, len(i_T), len(j_S))

    def chunk_mask(self, q_BHtD, k_BHsD, ctx, work):
        """`bias` (linear pieces, -inf on future keys) for one chunk at default positions while scoring (queries
        s - t..s - 1, keys 0..s - 1), with the same values as `fire_bias` + `causal` (bitwise, tested) and about
        one pass over the (t, s) pairs per head instead of the per-pair log, bucketize and gather:
        - x = psi(d) / psi(max(L, i)): psi once per distance d, divided by each query's normaliser into a
          (t, s + t - 1) buffer whose strided view is x (the layout of `lenx.kernels.distance_view`);
        - the piece of each pair: x grows with d along a row, so piece k + 1 starts at the first distance m_ik with
          x > edge_k (t x E searches in the psi vector, made exact on the divided values); a cumulative sum of
          the piece starts along each row numbers the pieces, the future keys one past the last piece, whose
          table row is slope 0, offset -inf (the causal mask in the same gather);
        - per head, the slope and offset gathered from the table and slope * x + offset, in the workspace."""
        t, s, H, n = q_BHtD.shape[2], k_BHsD.shape[2], self.n_heads, self.layer(ctx)
        W, dev = s + t - 1, q_BHtD.device
        dist_W = torch.arange(s - 1, -t, -1, dtype=torch.float32, device=dev)  # column c: distance s - 1 - c
        psi_W = dist_W.clamp_(min=0).mul_(self.c_N[n]).abs_().add_(1).log_()  # fire_bias's operations, in order
        norm_t = self.query_norm(ctx.q_pos_T.float(), n)
        y_tW = torch.div(psi_W[None, :], norm_t[:, None], out=work.take((t, W), q_BHtD, slot=1))
        # x at (r, j): column t - 1 - r + j of row r, distance s - t + r - j
        x_ts = y_tW.as_strided((t, s), (W - 1, 1), y_tW.storage_offset() + t - 1)
        edges_E, slope_KH, offset_KH = self.mlp_pieces(n)
        psi_D = psi_W[:s].flip(0)  # by distance 0..s - 1, non-decreasing
        m_tE = distances_at_most(psi_D, norm_t, edges_E)
        # key j of query i = s - t + r is in piece #{k : j <= i - m_ik}; count the k with i - m_ik < j instead
        # (plus 1 for the future keys j > i): rank E - piece, E + 1 on future keys
        i_t1 = torch.arange(s - t, s, device=dev)[:, None]
        starts = torch.cat([i_t1 - m_tE + 1, i_t1 + 1], dim=1).clamp_(min=0)
        count_ts = work.take((t, s), q_BHtD, slot=2, dtype=torch.int32).zero_()
        count_ts.scatter_add_(1, starts.clamp(max=s - 1), (starts < s).int())
        rank = count_ts.cumsum_(1).view(-1)
        never = torch.tensor([[0.0, float("-inf")]], device=dev).expand(H, 2).T  # (2, H): slope 0, offset -inf
        slope_RH = torch.cat([slope_KH.flip(0), never[:1]]).T.contiguous()  # row r: piece E - r
        offset_RH = torch.cat([offset_KH.flip(0), never[1:]]).T.contiguous()
        mask_1Hts, slope_ts = work.take((1, H, t, s), q_BHtD, slot=0), work.take((t, s), q_BHtD, slot=3)
        for h in range(H):
            torch.index_select(offset_RH[h], 0, rank, out=mask_1Hts[0, h].view(-1))
            torch.index_select(slope_RH[h], 0, rank, out=slope_ts.view(-1))
            mask_1Hts[0, h].addcmul_(slope_ts, x_ts)
        return q_BHtD, mask_1Hts

    def query_norm(self, i_T: torch.Tensor, n: int) -> torch.Tensor:
        """psi(max(L, i)) + eps for fp32 query positions i, layer table n: the normaliser of every distance."""
        threshold = torch.abs(self.L_mult_N[n] * self.init_L)
        return torch.log(torch.abs(self.c_N[n] * torch.maximum(i_T, threshold)) + 1) + self.eps

    def mlp_pieces(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The MLP f(x) = b2 + sum_w w2_w relu(w1_w x + b1_w) of a scalar x is linear between the E sorted points
        where a hidden unit switches (x = -b1_w / w1_w): on piece k (x in (edge k-1, edge k]) it is
        slope_k x + offset_k, (E + 1, H) each. The bias for T x S pairs then costs one bucketize and one gather
        instead of a (T S, width) hidden layer (5x faster at 8192 tokens; equal to fp32 rounding, tested)."""
        w1, b1, w2, b2 = self.w1_NW[n], self.b1_NW[n], self.w2_NWH[n], self.b2_NH[n]
        edges_E = (-b1[w1 != 0] / w1[w1 != 0]).sort().values
        if len(edges_E):  # a point inside each piece decides which units are on there
            inside_K = torch.cat([edges_E[:1] - 1, (edges_E[:-1] + edges_E[1:]) / 2, edges_E[-1:] + 1])
        else:
            inside_K = edges_E.new_zeros(1)
        on_KW = ((inside_K[:, None] * w1 + b1) > 0).float()
        return edges_E.contiguous(), (on_KW * w1) @ w2, b2 + (on_KW * b1) @ w2

    def extra_repr(self) -> str:
        return f"mlp_width={self.mlp_width}, init_L={self.init_L}, tables={self.tables}"
