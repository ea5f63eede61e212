"""The positional interface, and NoPE as its base class.

Every scheme enters attention at one (or more) of these points (the x-transformers taxonomy, plus hooks for
schemes whose terms depend on the queries and keys themselves):
  embed(x, pos)          add to the token embeddings (sinusoidal, learned; CPE's convolution);
  context(q_pos, k_pos)  positional state built ONCE per forward and shared by all layers (cos/sin for rotary
                         schemes, a logit bias per distance for ALiBi/T5/KERPLE/Sandwich, ...);
  rotate(q, k, ctx)      transform queries and keys per layer (RoPE, xPos, FoPE);
  score(q, k, ctx)       extra logit terms that need q, k or both positions of a pair (Shaw, Transformer-XL,
                         DeBERTa, CoPE; FIRE, whose bias is not a function of the distance alone);
  value(attn, ctx)       extra attention output from relative value embeddings (Shaw's a^V).
Each hook defaults to "do nothing", so NoPE (Kazemnejad et al. 2023, arXiv:2305.19466) is this class itself.
One module serves every layer. Where the reference gives each attention layer its own positional parameters (CoPE,
FIRE, Shaw, Transformer-XL's W_R, DeBERTa's projections, FoPE), the module holds them stacked, N = n_layers copies
(`tables`; config `shared: true` for one), `context` still runs once per forward for all of them, and the Decoder
hands each block the context with its `layer` index, which `rotate` / `score` / `value` read.
Positions are absolute integer indices; relative schemes derive distances from them.

Attention runs over chunks of queries whenever a scheme adds logit terms, so that no (T, S) tensor ever spans
the whole sequence (a dense fp32 heads x 8192 x 8192 bias is 1 GiB per 4 heads): `ctx.rows(a, b)` is the
context of queries a..b-1 and `score` is called once per chunk.
Shape letters: B batch, T queries, S keys, H heads, D head dim, C model width, R relative distances.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lenx.errors import ConfigError


@dataclass(frozen=True)
class AttnContext:
    """What attention needs from the positional scheme for one forward pass (shared by all layers).

    Schemes with more state subclass it (a frozen dataclass too); `rows` keeps the subclass.
    """

    cos_TD: torch.Tensor | None = None  # rotary cos, fp32, (T, D) (keys use the same positions as queries)
    sin_TD: torch.Tensor | None = None  # rotary sin, fp32, (T, D)
    q_pos_T: torch.Tensor | None = None  # absolute positions of the queries (of this chunk, after `rows`)
    k_pos_S: torch.Tensor | None = None  # absolute positions of the keys
    # A logit bias that depends on the distance d = i - j >= 0 only, fp32, (H, R) with R > every distance.
    # Attention gathers it per chunk of queries; the causal mask is added there too.
    bias_HR: torch.Tensor | None = None
    # The whole positional mask (distance bias + causal -inf) of these queries and keys, (H or 1, T, S), built
    # once per forward by the Decoder when it fits one attention chunk (training lengths), so that no layer
    # rebuilds it; None otherwise (attention then builds it per chunk of queries).
    mask_HTS: torch.Tensor | None = None
    # Set when the positions are the Decoder's default: q_pos_T = q_start + arange(T), k_pos_S = arange(S).
    # A distance bias is then a Toeplitz matrix, built from T + S - 1 values instead of a (T, S) gather.
    q_start: int | None = None
    # The index of the decoder layer this context is handed to (the Decoder sets it per block): schemes with a
    # table per layer (`PositionalScheme.layer`) read their own.
    layer: int = 0

    @property
    def bias_HTS(self) -> torch.Tensor | None:
        """The distance bias of every (query, key) pair, fp32, (H, T, S), or None (future keys: d = 0)."""
        if self.bias_HR is None:
            return None
        idx_TS = distance_index(self.q_pos_T, self.k_pos_S, self.bias_HR.shape[1])
        # An embedding lookup rather than bias_HR[:, idx]: the indexing backward (an accumulating scatter)
        # made a tiny model's training step 4x slower on an H100 (56 vs 13 ms). Contiguous (H, T, S) for SDPA.
        return F.embedding(idx_TS, self.bias_HR.T).permute(2, 0, 1).contiguous()

    def rows(self, start: int, stop: int) -> AttnContext:
        """The context of queries start..stop-1: per query, only the positions (and mask rows) change."""
        if self.q_pos_T is None:  # a scheme that needs no positions in attention (e.g. RoPE's cos/sin only)
            return self
        mask = None if self.mask_HTS is None else self.mask_HTS[:, start:stop]
        q_start = None if self.q_start is None else self.q_start + start
        return dataclasses.replace(self, q_pos_T=self.q_pos_T[start:stop], mask_HTS=mask, q_start=q_start)

    def keys(self, stop: int) -> AttnContext:
        """The context restricted to keys 0..stop-1 (attention leaves out keys that are future for every query)."""
        if self.k_pos_S is None or stop >= len(self.k_pos_S):
            return self
        mask = None if self.mask_HTS is None else self.mask_HTS[..., :stop]
        return dataclasses.replace(self, k_pos_S=self.k_pos_S[:stop], mask_HTS=mask)


def distance_index(q_pos_T: torch.Tensor, k_pos_S: torch.Tensor, n: int) -> torch.Tensor:
    """i - j clipped to [0, n - 1], as a LongTensor (T, S): an index into a table of n distances."""
    return (q_pos_T[:, None] - k_pos_S[None, :]).clamp(0, n - 1)


def layer_tables(shared: bool, n_layers: int) -> int:
    """How many copies of a scheme's learned tables: 1 when `shared` (config) else one per layer."""
    if not isinstance(shared, bool):
        raise ConfigError(f"shared must be true or false, got {shared!r}")
    return 1 if shared else n_layers


def max_distance(q_pos_T: torch.Tensor, k_pos_S: torch.Tensor) -> int:
    """The largest causal distance i - j (>= 0) between these query and key positions."""
    return max(0, int(q_pos_T.max()) - int(k_pos_S.min()))


class PositionalScheme(nn.Module):
    """NoPE: no positional information at all; the causal mask alone orders the tokens.

    Subclasses receive the model's dimensions as keyword arguments and take their own hyperparameters from
    the config (`_partial_: true` in configs/pos/*.yaml). Tensors derived from config are non-persistent
    buffers, so a state_dict holds learned parameters only and a checkpoint reloads under another scaling.
    """

    def __init__(self, *, d_model: int, n_heads: int, head_dim: int, train_len: int, n_layers: int = 1) -> None:
        super().__init__()
        self.d_model, self.n_heads, self.head_dim, self.train_len = d_model, n_heads, head_dim, train_len
        self.n_layers = n_layers

    # Copies of the scheme's learned tables: 1 (shared by every layer), or n_layers (one per layer, as the
    # references of CoPE, FIRE, Shaw, Transformer-XL's W_R and DeBERTa's projections have). Parameters of such a
    # scheme carry a leading dimension of this size (N in their names); `layer(ctx)` picks the row.
    tables: int = 1

    def layer(self, ctx: AttnContext) -> int:
        """The row of the per-layer tables for the layer `ctx` belongs to (0 when the tables are shared)."""
        return min(ctx.layer, self.tables - 1)

    @property
    def layerwise_mask(self) -> bool:
        """Whether the positional mask differs per layer (a `positional_score` with a table per layer, FIRE)."""
        return self.positional_score and self.tables > 1

    def embed(self, x_BTC: torch.Tensor, pos_T: torch.Tensor) -> torch.Tensor:
        return x_BTC

    def context(self, q_pos_T: torch.Tensor, k_pos_S: torch.Tensor) -> AttnContext:
        return AttnContext(q_pos_T=q_pos_T, k_pos_S=k_pos_S)

    def rotate(self, q_BHTD: torch.Tensor, k_BHSD: torch.Tensor, ctx: AttnContext):
        return q_BHTD, k_BHSD

    def score(self, q_BHTD: torch.Tensor, k_BHSD: torch.Tensor, ctx: AttnContext) -> torch.Tensor | None:
        """Extra logit terms for the queries of `ctx`, fp32, broadcastable to (B, H, T, S), or None.

        Added to q.k / sqrt(D) (and to ctx's distance bias) before the causal mask; called per chunk of
        queries with fp32 q and k, autocast off. Future keys may hold anything finite: they are masked after.
        """
        return None

    def value(self, attn_BHTS: torch.Tensor, ctx: AttnContext) -> torch.Tensor | None:
        """Extra attention output sum_j attn_ij e_ij (B, H, T, D) from the attention weights, or None."""
        return None

    # True when `score` reads only ctx's positions, never q or k (FIRE): its term then joins the positional mask,
    # which the Decoder builds once per forward for all layers where it fits one attention chunk.
    positional_score: bool = False

    @property
    def adds_logits(self) -> bool:
        """Whether this scheme implements `score`: attention then builds its logits per chunk of queries."""
        return type(self).score is not PositionalScheme.score

    @property
    def adds_values(self) -> bool:
        """Whether this scheme implements `value`: attention then needs the weights (no fused kernel)."""
        return type(self).value is not PositionalScheme.value

    def extra_repr(self) -> str:
        return f"train_len={self.train_len}"
