"""Positions generated from the content: counted by gates (CoPE) or by a convolution over neighbours (CPE)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lenx.errors import check_int
from lenx.pos.base import PositionalScheme, layer_tables


class CoPE(PositionalScheme):
    """Contextual position encoding (Golovneva et al. 2024, arXiv:2405.18719).

    Gates g_ij = sigmoid(q_i . k_j / sqrt(D)) (0 for future keys) count the position of key j from query i,
    p_ij = sum_{t=j..i} g_it, a fractional number; the logit gains q_i . e[p_ij], with e linearly interpolated
    between the learned embeddings of floor(p) and ceil(p). As in the paper's code (its listing: a `CoPE` module
    created inside each attention layer), p is clamped to npos_max - 1, the embeddings are shared by all heads,
    start at zero, and each layer has its own table; `shared: true` ties them across layers. Positions depend on
    content only, never on the absolute index, so the scheme is shift invariant and evaluates at any length.
    """

    reads_positions = False  # contextual counts / a convolution over the sequence: positions unused

    def __init__(self, *, npos_max: int = 64, shared: bool = False, **dims) -> None:
        super().__init__(**dims)
        check_int(npos_max, "CoPE npos_max", minimum=2)
        self.npos_max, self.tables = npos_max, layer_tables(shared, self.n_layers)
        self.pos_emb_NDP = nn.Parameter(torch.zeros(self.tables, self.head_dim, npos_max))

    def score(self, q_BHTD, k_BHSD, ctx):
        future_TS = ctx.k_pos_S[None, :] > ctx.q_pos_T[:, None]
        logits_BHTP = q_BHTD @ self.pos_emb_NDP[self.layer(ctx)].float()  # q_i . e[p] at every integer position p
        return self.terms(q_BHTD, k_BHSD, future_TS, logits_BHTP)[0]

    def terms(self, q_BHTD, k_BHSD, future_TS, logits_BHTP):
        """(q_i . e[p_ij], p_ij clamped), each (B, H, T, S), from the gates of these keys (future ones masked)."""
        gates_BHTS = torch.sigmoid(q_BHTD @ k_BHSD.transpose(-1, -2) / math.sqrt(self.head_dim))
        gates_BHTS = gates_BHTS.masked_fill(future_TS, 0.0)
        pos_BHTS = gates_BHTS.flip(-1).cumsum(-1).flip(-1).clamp(max=self.npos_max - 1)  # sum over keys j..i
        floor_BHTS = pos_BHTS.floor()
        at_floor = logits_BHTP.gather(-1, floor_BHTS.long())
        at_ceil = logits_BHTP.gather(-1, pos_BHTS.ceil().long())
        w_BHTS = pos_BHTS - floor_BHTS
        return at_ceil * w_BHTS + at_floor * (1 - w_BHTS), pos_BHTS

    def chunk_mask(self, q_BHtD, k_BHsD, ctx, work):
        """`score` + the causal mask for one chunk at default positions while scoring (queries s - t..s - 1, keys
        0..s - 1), computed only where it varies. p_ij grows as key j moves back from query i (gates >= 0), so
        once it reaches npos_max - 1 at some key, every earlier key is clamped there too and its term is the
        row's constant q_i . e[npos_max - 1], exactly as `score` computes it there (weight 0 on the ceiling).
        Per block of query rows: the exact terms over the keys from `back` before its first query up to its
        last (back starts at 2 npos_max and is doubled until every row has reached the clamp at the block's first
        key, or the block starts at key 0; the next block starts from it), the constant before them, -inf after.
        Where gates stay small the block grows to the whole chunk: the same work as `score`, never a different
        value."""
        B, H, t, _ = q_BHtD.shape
        s, P, q0 = k_BHsD.shape[2], self.npos_max, k_BHsD.shape[2] - t
        logits_BHtP = q_BHtD @ self.pos_emb_NDP[self.layer(ctx)].float()
        mask_BHts = work.take((B, H, t, s), q_BHtD)
        rows, back = 2 * P, 2 * P
        for a in range(0, t, rows):
            b = min(t, a + rows)  # (back: the previous block's, as neighbouring rows need about the same reach)
            while True:
                lo, hi = max(0, q0 + a - back), q0 + b
                future = torch.arange(lo, hi, device=q_BHtD.device)[None, :] > torch.arange(
                    q0 + a, q0 + b, device=q_BHtD.device)[:, None]
                terms, pos_BHrk = self.terms(q_BHtD[:, :, a:b], k_BHsD[:, :, lo:hi], future, logits_BHtP[:, :, a:b])
                if lo == 0 or bool((pos_BHrk[..., 0] >= P - 1).all()):
                    break
                back *= 2
            mask_BHts[:, :, a:b, lo:hi] = terms.masked_fill_(future, float("-inf"))
            mask_BHts[:, :, a:b, :lo] = logits_BHtP[:, :, a:b, P - 1:]
            mask_BHts[:, :, a:b, hi:] = float("-inf")
        return q_BHtD, mask_BHts

    def extra_repr(self) -> str:
        return f"npos_max={self.npos_max}, tables={self.tables}"


class CPE(PositionalScheme):
    """Conditional positional encoding (Chu et al. 2021, arXiv:2102.10882): x + DepthwiseConv(x), positions
    generated from each token's neighbourhood, the zero padding at the sequence start telling the first tokens
    where they are. Made causal for a decoder: a 1-D depthwise convolution over the kernel_size - 1 previous
    tokens and the current one (left padding only). CPVT inserts it after the first encoder block; here it
    acts on the input embeddings, the one place the positional interface offers. Shift invariant by
    construction. The convolution is a learned layer on content and runs under autocast like any other (no
    angles to lose).
    """

    reads_positions = False  # contextual counts / a convolution over the sequence: positions unused

    def __init__(self, *, kernel_size: int = 3, **dims) -> None:
        super().__init__(**dims)
        check_int(kernel_size, "CPE kernel_size")
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(self.d_model, self.d_model, kernel_size, groups=self.d_model)
        # Zero init: the block starts as the identity. PyTorch's default (uniform +-1/sqrt(kernel_size), ~0.6)
        # would bury the 0.02-scale token embeddings under a constant bias and stall training (ppl 866 vs ~160
        # for NoPE after 150 steps at L=64).
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def embed(self, x_BTC, pos_T):
        x_BCT = F.pad(x_BTC.transpose(1, 2), (self.kernel_size - 1, 0))  # left only: token t sees t-k+1..t
        return x_BTC + self.conv(x_BCT).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"
