"""The positional interface, and NoPE as its base class.

Every scheme enters attention at one (or more) of these points (the x-transformers taxonomy, plus hooks for
schemes whose terms depend on the queries and keys themselves):
  embed(x, pos)          add to the token embeddings (sinusoidal, learned; CPE's convolution);
  context(q_pos, k_pos)  positional state built ONCE per forward and shared by all layers (the positions, cos/sin
                         for rotary schemes, a logit bias per distance for ALiBi/T5/KERPLE/Sandwich, ...);
  rotate(q, k, ctx)      transform queries and keys per layer (RoPE, xPos, FoPE);
  bias(ctx, ...)         logit terms of positions alone, causal mask included (ALiBi, T5, KERPLE, Sandwich: a
                         function of i - j; FIRE: of i and j);
  score(q, k, ctx)       extra logit terms that read q or k (Shaw, Transformer-XL, DeBERTa, CoPE);
  value(attn, ctx)       extra attention output from relative value embeddings (Shaw's a^V);
  attention_at(layer)    attention modifiers the scheme brings to a layer (FoX's forget gate, stick-breaking,
                         a window on a hybrid's RoPE layers; lenx.modifiers), merged with the config's `attn`.
Each hook defaults to "do nothing", so NoPE (Kazemnejad et al. 2023, arXiv:2305.19466) is this class itself.
One module serves every layer. Where the reference gives each attention layer its own positional parameters (CoPE,
FIRE, Shaw, Transformer-XL's W_R, DeBERTa's projections, FoPE), the module holds them stacked, N = n_layers copies
(`tables`; config `shared: true` for one), `context` still runs once per forward for all of them, and the Decoder
hands each block the context with its `layer` index, which `rotate` / `score` / `value` read.
Positions are absolute integer indices; relative schemes derive distances from them. Under randomized positions
drawn per layer (lenx.positions.Randomized) the Decoder builds each layer's context from that layer's draw
(`Decoder.layer_draw_contexts`) instead of once per forward.

Attention (lenx.attention) runs over chunks of queries whenever a scheme adds logit terms, so that no (T, S) tensor
ever spans a long sequence (a dense fp32 heads x 8192 x 8192 bias is 1 GiB per 4 heads): `ctx.rows(a, b)` is the
context of queries a..b-1, and `bias` (where the mask does not fit one chunk) and `score` are called per chunk.
Shape letters: B batch, T queries, S keys, H heads, D head dim, C model width, R relative distances.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from lenx.errors import ConfigError
from lenx.kernels import Workspace


@dataclass(frozen=True)
class AttnContext:
    """The positional state of one forward pass, built by the scheme (`context`) and shared by all layers.

    Schemes with more state subclass it (a frozen dataclass too); `rows`, `keys` and `at_layer` keep the subclass.
    How attention runs over it (path, chunks of queries, key range, the mask) is attention's plan
    (lenx.attention), never stored here.
    """

    q_pos_T: torch.Tensor | None = None  # absolute positions of the queries (of this chunk, after `rows`)
    k_pos_S: torch.Tensor | None = None  # absolute positions of the keys (after `keys`)
    cos_TD: torch.Tensor | None = None  # rotary cos, fp32, (T, D) (keys use the same positions as queries)
    sin_TD: torch.Tensor | None = None  # rotary sin, fp32, (T, D)
    # The index of the decoder layer this context is handed to (the Decoder sets it per block): schemes with a
    # table per layer (`PositionalScheme.layer`) read their own.
    layer: int = 0

    def rows(self, start: int, stop: int) -> AttnContext:
        """The context of queries start..stop-1: per query, only the positions change."""
        return dataclasses.replace(self, q_pos_T=self.q_pos_T[start:stop])

    def keys(self, stop: int) -> AttnContext:
        """The context restricted to keys 0..stop-1 (attention leaves out keys that are future for every query)."""
        if stop >= len(self.k_pos_S):
            return self
        return dataclasses.replace(self, k_pos_S=self.k_pos_S[:stop])

    def at_layer(self, layer: int) -> AttnContext:
        return dataclasses.replace(self, layer=layer)


def causal(bias_HTS: torch.Tensor, q_pos_T: torch.Tensor, k_pos_S: torch.Tensor) -> torch.Tensor:
    """A positional bias with -inf on future keys (key position > query position), fp32, (H, T, S) (H may be 1)."""
    future_TS = k_pos_S[None, :] > q_pos_T[:, None]
    return bias_HTS.float().masked_fill(future_TS, float("-inf"))


def scored_chunk(pos: PositionalScheme, q_BHtD: torch.Tensor, k_BHsD: torch.Tensor, ctx: AttnContext
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, `score` + the causal mask) for a chunk: what a `chunk_mask` returns for a chunk its fast form does not
    cover (the same values as attention's general path)."""
    future_ts = ctx.k_pos_S[None, :] > ctx.q_pos_T[:, None]
    return q_BHtD, pos.score(q_BHtD, k_BHsD, ctx).masked_fill(future_ts, float("-inf"))


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

    # Whether `context` also takes one row of positions per example, (B, T) (PoSE's and SHAPE's per-example draws)
    # for both arguments, returning one context for the batch (RoPE: cos/sin (B, 1, T, D)), or None where it has
    # no such form at these rows. Otherwise the Decoder runs each group of equal rows on the shared path (a scheme
    # whose attention reads no positions takes any row's context).
    rows_in_context: bool = False

    def attention_at(self, layer: int) -> dict:
        """The attention modifiers (lenx.modifiers.Modifiers fields) this scheme brings to attention layer `layer`,
        merged with the config's `attn`: FoX's forget gate and stick-breaking for every layer (pos=fox,
        pos=stickbreaking), a training-time window on some layers (the per-layer hybrids). {}: none (the default).
        A description the attention plan runs, never a kernel choice."""
        return {}

    def embed(self, x_BTC: torch.Tensor, pos_T: torch.Tensor) -> torch.Tensor:
        """Add position embeddings for positions (T,), or (B, T) one row per example, to x (B, T, C)."""
        return x_BTC

    def embed_tokens(self, x_BTC: torch.Tensor, idx_BT: torch.Tensor) -> torch.Tensor:
        """Add what the token ids (B, T) themselves place (Abacus: a digit's place in its number) to x (B, T, C)."""
        return x_BTC

    def context(self, q_pos_T: torch.Tensor, k_pos_S: torch.Tensor) -> AttnContext:
        """The positional state of a forward pass over these query and key positions; it carries the positions.
        Under randomized positions drawn per attention layer (lenx.positions.Randomized) the Decoder calls it once
        per layer with that layer's draw (a bias of the distance alone reads the drawn distances instead:
        lenx.pos.bias.distance_draw_contexts)."""
        return AttnContext(q_pos_T=q_pos_T, k_pos_S=k_pos_S)

    def rotate(self, q_BHTD: torch.Tensor, k_BHSD: torch.Tensor, ctx: AttnContext):
        return q_BHTD, k_BHSD

    # Logits per chunk when scoring on CPU on a path that writes each chunk's mask or logits, where the scheme's own
    # per-chunk work wants another size than attention's default (lenx.attention.CPU_WRITTEN_LOGITS); None: the default.
    cpu_chunk_logits: int | None = None

    def bias(self, ctx: AttnContext, q_start: int | None, dtype: torch.dtype, fast: bool = False
             ) -> torch.Tensor | None:
        """The logit terms that read positions alone (never q or k) for ctx's queries and keys, with -inf on future
        keys, (H or 1, T, S), or None (the default: no such terms). fp32, or `dtype` where the scheme can build it
        cheaper so (attention casts the result to `dtype` either way). `q_start` is set when the positions are the
        Decoder's default (queries at q_start + arange(T), keys at arange(S)): a distance bias is then Toeplitz.
        `fast`: the attention plan allows the scheme's own faster evaluation of the same function (no gradient
        flows, attention is not `reference`; FIRE's linear pieces). Attention calls it once per forward where the
        mask fits one chunk (once per layer when the scheme has a table per layer, `tables` > 1), else once per
        chunk of queries and layer.
        """
        return None

    def chunk_mask(self, q_BHtD: torch.Tensor, k_BHsD: torch.Tensor, ctx: AttnContext, work: Workspace
                   ) -> tuple[torch.Tensor, ...] | None:
        """The scheme's one fast hook: its logit terms (`score`'s, or `bias`'s) for one chunk of queries at default
        positions (queries s - t..s - 1, keys 0..s - 1), no gradient, fp32: (q', mask) with SDPA(q', k, v, mask)
        equal to the general path to fp32 rounding, the mask built with about one write of (B, H, t, s) into
        `work` where `score` gathers per pair (-inf on future keys; q' may carry a term of the key alone,
        (q + u) . k = q . k + u . k). A scheme with a value term (`value`) adds a third item: a function of each
        query's logsumexp (B, H, t) (the fused kernel's row normalisers) giving the term (B, H, t, D). None: the
        default (no such hook); a scheme that has one never declines a chunk the plan sends it (PlanError).
        Tested against the general path in tests/test_attention_paths.py."""
        return None

    def score(self, q_BHTD: torch.Tensor, k_BHSD: torch.Tensor, ctx: AttnContext) -> torch.Tensor | None:
        """Extra logit terms for the queries of `ctx`, fp32, broadcastable to (B, H, T, S), or None.

        Added to q.k / sqrt(D) (and to ctx's distance bias) before the causal mask; called per chunk of
        queries with fp32 q and k, autocast off. Future keys may hold anything finite: they are masked after.
        """
        return None

    def value(self, attn_BHTS: torch.Tensor, ctx: AttnContext) -> torch.Tensor | None:
        """Extra attention output sum_j attn_ij e_ij (B, H, T, D) from the attention weights, or None."""
        return None

    @property
    def reads_positions(self) -> bool:
        """Whether the scheme reads token positions at all (NoPE does not; CoPE and CPE set it false too): when it
        does not, train-time position augmentation (lenx.positions) cannot change what it learns."""
        return type(self) is not PositionalScheme

    @property
    def shift_invariant(self) -> bool:
        """Whether the logits depend on positions only through their differences i - j (exactly, up to rounding):
        then a constant shift of every position (positions=offset) trains the same model. True for NoPE and the
        schemes that read no positions; relative schemes set it (tests/test_positions.py checks every scheme)."""
        return not self.reads_positions

    @property
    def adds_bias(self) -> bool:
        """Whether this scheme implements `bias`: attention then passes SDPA a float mask."""
        return type(self).bias is not PositionalScheme.bias

    @property
    def has_chunk_mask(self) -> bool:
        return type(self).chunk_mask is not PositionalScheme.chunk_mask

    @property
    def adds_logits(self) -> bool:
        """Whether this scheme implements `score`: attention then adds its terms per chunk of queries, in fp32."""
        return type(self).score is not PositionalScheme.score

    @property
    def adds_values(self) -> bool:
        """Whether this scheme implements `value`: attention then needs the weights (no fused kernel)."""
        return type(self).value is not PositionalScheme.value

    def extra_repr(self) -> str:
        return f"train_len={self.train_len}"
