"""How attention runs for one forward pass: the plan, decided once, and the chunked attention it drives.

The positional scheme owns the positional context (`pos.context`: positions, cos/sin, tables; `pos.bias`: the logit
terms of positions alone). Attention owns the plan (`plan`): the path (SDPA's causal kernel with no mask; the same
kernel with ALiBi's bias as exact extra channels of q and k; SDPA with a strided Toeplitz view of a distance bias
over reversed keys; SDPA with a float mask; an explicit softmax when value terms read the weights), the queries per
chunk, the keys each chunk reads, the mask's dtype, and the mask itself when one chunk holds it (built once per
forward, or once per layer for a bias with a table per layer). `lenx.pos.base.reference_paths()` turns the two
fast bias paths (and FIRE's linear pieces) off: the float-mask path they replaced, for tests and benchmarks.
Shapes: B batch, T queries, t a chunk of them, S keys, s the keys a chunk reads, H heads, D head dim.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lenx.extensions import Extension
from lenx.pos.base import AttnContext, PositionalScheme, Workspace, causal

# Logits per attention chunk (batch x heads x queries x keys) when a scheme adds logit terms: 2^25 bounds each
# of a chunk's fp32 (B, H, t, S) tensors to 128 MiB at any length (a dense fp32 bias at 8192 tokens is 1 GiB
# per 4 heads) and still gives SDPA enough query rows to fill a GPU (2^20 ran 4x slower at 8192 on an H100).
CHUNK_LOGITS = 1 << 25


@dataclass(frozen=True)
class Plan:
    """How attention runs over one forward's context (the same for every layer, the mask aside)."""

    # "causal": SDPA is_causal, no mask; "features": SDPA is_causal on q and k with the bias as extra channels
    # (pos.features); "toeplitz": SDPA with a strided view of a distance bias over reversed keys (pos.toeplitz);
    # "flex": FlexAttention with the distance bias as score_mod (attention=flex); "chunk_mask": SDPA with each
    # chunk's mask from pos.chunk_mask in a reused workspace (scoring at default positions; Shaw-KV's value term
    # from SDPA's row normalisers, pos.chunk_values);
    # "mask": SDPA with a float mask; "weights": explicit softmax; "extended": a training-free extension
    path: str
    rows: int  # queries per chunk (a chunk's B x H x rows x S logits stay within CHUNK_LOGITS)
    # Default positions (query i and key j at positions i and j): a chunk reads only the keys up to its last query
    # (the rest are future keys of all its queries), and a distance bias is a Toeplitz matrix.
    contiguous: bool
    # The mask's dtype: the compute dtype when it goes straight to SDPA (which would cast it anyway); fp32 when
    # content score terms are added to it or the weights themselves are read (Shaw's values).
    dtype: torch.dtype
    whole: bool  # one chunk holds the whole (H, T, S) mask: built once, before the layers, not per chunk
    per_layer: bool  # the positional bias differs per layer (a table per layer: FIRE)
    mask_HTS: torch.Tensor | None = None  # the whole mask, when `whole` (set by `for_layer`)
    # A training-free extension active at this length (lenx.extensions): path "extended" when it remaps distances
    # or windows keys; q_scale_T multiplies the queries (log-n scaling), on any path.
    extension: Extension | None = None
    q_scale_T: torch.Tensor | None = None

    def for_layer(self, pos: PositionalScheme, ctx: AttnContext) -> Plan:
        """The plan for ctx's layer: the whole mask built here when one chunk holds it, kept from the layer before
        unless the bias differs per layer."""
        if not self.whole or (self.mask_HTS is not None and not self.per_layer):
            return self
        return dataclasses.replace(self, mask_HTS=positional_mask(pos, ctx, 0 if self.contiguous else None,
                                                                  self.dtype))


def plan(pos: PositionalScheme, ctx: AttnContext, *, batch: int, dtype: torch.dtype, contiguous: bool,
         extension: Extension | None = None, flex: bool = False) -> Plan:
    """The plan for attention over ctx's queries and keys with this scheme, batch size and compute dtype (and a
    training-free extension, where it changes anything at these positions). flex: use FlexAttention for a bias
    of the distance (`attention=flex`)."""
    T, S = len(ctx.q_pos_T), len(ctx.k_pos_S)
    ext = None if extension is None else extension.for_input(ctx.q_pos_T, ctx.k_pos_S)  # e.g. Self-Extend's G
    ext = ext if ext is not None and ext.active(ctx.q_pos_T, ctx.k_pos_S) else None
    q_scale_T = None if ext is None else ext.q_scale(ctx.q_pos_T)
    if ext is not None and (ext.remaps or ext.windows):  # remapped pairs, windows: logits built here, in fp32
        rows = max(1, CHUNK_LOGITS // (batch * pos.n_heads * S))
        if ext.window_tokens and contiguous:  # chunks no longer than the window: each reads ~2 windows of keys
            rows = min(rows, max(64, ext.window_tokens))
        return Plan(path="extended", rows=rows, contiguous=contiguous,
                    dtype=torch.float32, whole=False, per_layer=False, extension=ext, q_scale_T=q_scale_T)
    # Under torch.compile the float-mask path: inductor (torch 2.13, 2 CPU threads) miscompiled the channels
    # path's training step (a garbage view shape, then a crash; test_compiled_training_matches_eager)
    eager = not torch.compiler.is_compiling()
    # Scoring at default positions: the scheme's own per-chunk mask (pos.chunk_mask), built in a reused workspace
    chunk_masks = eager and pos.has_chunk_mask and contiguous and not torch.is_grad_enabled()
    if pos.adds_values:
        path = "weights"
        if chunk_masks and pos.has_chunk_values:
            path = "chunk_mask"  # Shaw-KV: the fused kernel with its row normalisers, the value term from a band
    elif pos.adds_logits:
        path = "mask"
        if chunk_masks:
            path = "chunk_mask"  # the content terms placed by distance with one write
    elif pos.adds_bias:
        path = "mask"
        if flex and pos.has_toeplitz:
            path = "flex"
        elif eager and pos.has_features and dtype == torch.float32 and ctx.q_pos_T.device.type == "cpu" and (
                contiguous or increasing(ctx.q_pos_T)):
            path = "features"  # fp32 on CPU only: the channels' exact sum needs fp32 and in-order accumulation
        elif chunk_masks:
            path = "chunk_mask"  # FIRE: its bias of i and j built in place, chunk by chunk
        elif eager and pos.has_toeplitz and contiguous and not learns(ctx):
            path = "toeplitz"  # a learned bias keeps the mask path: its gradient through the strided view's
            # overlapping entries is a slow scatter (the whole mask, built once per forward, is cheaper to train)
    else:
        path = "causal"
    exact = pos.adds_logits or pos.adds_values
    return Plan(path=path, rows=max(1, CHUNK_LOGITS // (batch * pos.n_heads * S)), contiguous=contiguous,
                dtype=torch.float32 if exact else dtype,
                whole=path in ("mask", "weights") and pos.n_heads * T * S <= CHUNK_LOGITS,
                per_layer=pos.adds_bias and pos.tables > 1, q_scale_T=q_scale_T)


def learns(ctx: AttnContext) -> bool:
    """Whether a gradient flows into the positional context (a learned bias while training)."""
    return any(isinstance(v, torch.Tensor) and v.requires_grad for v in vars(ctx).values())


def increasing(pos_T: torch.Tensor) -> bool:
    """Strictly increasing positions (every train-time mode draws them so): SDPA's causal mask by index is then
    the causal mask by position."""
    return len(pos_T) < 2 or bool((pos_T[1:] > pos_T[:-1]).all())


def attend(q_BHTD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor, pos: PositionalScheme,
           ctx: AttnContext, plan: Plan, drop: float, raw: tuple[torch.Tensor, torch.Tensor] | None = None
           ) -> torch.Tensor:
    """softmax(q.k/sqrt(D) + positional terms + causal mask) v, (B, H, T, D), as the plan says. `raw`: q and k
    before the scheme's rotation (path "extended" rotates them again at remapped positions)."""
    if plan.path == "extended":
        return attend_extended(q_BHTD, k_BHSD, v_BHSD, raw, pos, ctx, plan, drop)
    if plan.path == "causal":
        return F.scaled_dot_product_attention(q_BHTD, k_BHSD, v_BHSD, is_causal=True, dropout_p=drop)
    if plan.path == "flex":
        # FlexAttention has no dropout, and no backward on CPU: the SDPA paths there
        if not drop and not (q_BHTD.requires_grad and q_BHTD.device.type == "cpu"):
            return attend_flex(q_BHTD, k_BHSD, v_BHSD, ctx)
        plan = dataclasses.replace(plan, path="toeplitz" if plan.contiguous else "mask")
    if plan.path == "features":
        out = attend_features(q_BHTD, k_BHSD, v_BHSD, pos, ctx, drop)
        if out is not None:
            return out
        plan = dataclasses.replace(plan, path="toeplitz" if plan.contiguous and pos.has_toeplitz else "mask")
    T, S = q_BHTD.shape[2], k_BHSD.shape[2]
    if plan.path == "toeplitz":
        return attend_toeplitz(q_BHTD, k_BHSD, v_BHSD, pos, ctx, plan, drop)
    if plan.path == "chunk_mask":
        return attend_chunk_masks(q_BHTD, k_BHSD, v_BHSD, pos, ctx, plan, drop)
    parts = []
    for a in range(0, T, plan.rows):
        b = min(T, a + plan.rows)
        # Default positions: keys past the chunk's last query are future keys of all its queries; leave them out
        # (on average this halves a long input's attention work).
        s = min(S, b) if plan.contiguous else S
        mask_Hts = None if plan.mask_HTS is None else plan.mask_HTS[:, a:b, :s]
        parts.append(attend_rows(q_BHTD[:, :, a:b], k_BHSD[:, :, :s], v_BHSD[:, :, :s], pos, ctx.rows(a, b).keys(s),
                                 plan, mask_Hts, a, drop))
    return torch.cat(parts, dim=2)


def attend_rows(q_BHtD: torch.Tensor, k_BHsD: torch.Tensor, v_BHsD: torch.Tensor, pos: PositionalScheme,
                ctx: AttnContext, plan: Plan, mask_Hts: torch.Tensor | None, q_start: int,
                drop: float) -> torch.Tensor:
    """Attention of one chunk of queries (starting at query q_start) over s keys."""
    with torch.autocast(q_BHtD.device.type, enabled=False):  # positional terms in fp32
        if mask_Hts is None:
            mask_Hts = positional_mask(pos, ctx, q_start if plan.contiguous else None, plan.dtype)
        extra = pos.score(q_BHtD.float(), k_BHsD.float(), ctx) if pos.adds_logits else None
        if extra is not None:
            mask_Hts = mask_Hts + extra  # (B, H, t, s) for content-dependent schemes
    if plan.path == "mask":  # the fused kernel with a float mask (also carries the bias gradient)
        # 4-D: given a 3-D (H, t, s) mask, CPU SDPA falls back to its unfused math backend (5x slower at 8192)
        mask_BHts = mask_Hts if mask_Hts.dim() == 4 else mask_Hts[None]
        return F.scaled_dot_product_attention(q_BHtD, k_BHsD, v_BHsD, attn_mask=mask_BHts.to(q_BHtD.dtype),
                                              dropout_p=drop)
    with torch.autocast(q_BHtD.device.type, enabled=False):  # Shaw's value terms need the weights themselves
        logits = q_BHtD.float() @ k_BHsD.float().transpose(-1, -2) / q_BHtD.shape[-1] ** 0.5 + mask_Hts
        attn_BHts = F.dropout(logits.softmax(-1), drop)
        y_BHtD = attn_BHts @ v_BHsD.float() + pos.value(attn_BHts, ctx)
    return y_BHtD.to(v_BHsD.dtype)


def attend_features(q_BHTD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor, pos: PositionalScheme,
                    ctx: AttnContext, drop: float) -> torch.Tensor | None:
    """SDPA's fused causal kernel with the scheme's bias as extra channels, first, of q and k (pos.features):
    [f_q, q / sqrt(D)] . [f_k, k] = bias + q.k / sqrt(D) (scale 1); v padded with zeros to the same width, as
    the fused kernel needs. None when the scheme declines these positions (the caller then builds a mask)."""
    feats = pos.features(ctx)
    if feats is None:
        return None
    B, H, T, D = q_BHTD.shape
    fq_HTc, fk_HSc = feats
    c = fq_HTc.shape[-1]
    q2 = torch.cat([fq_HTc.to(q_BHTD.dtype).expand(B, H, T, c), q_BHTD * D ** -0.5], dim=-1)
    k2 = torch.cat([fk_HSc.to(k_BHSD.dtype).expand(B, H, k_BHSD.shape[2], c), k_BHSD], dim=-1)
    y = F.scaled_dot_product_attention(q2, k2, F.pad(v_BHSD, (0, c)), is_causal=True, dropout_p=drop, scale=1.0)
    return y[..., :D]


@functools.cache
def compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def attend_flex(q_BHTD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor, ctx: AttnContext) -> torch.Tensor:
    """FlexAttention (torch.nn.attention.flex_attention, compiled) with the distance bias as its score_mod and
    causality by position as its block mask: fused, with no mask tensor, on CUDA as on CPU. Each new length
    compiles once (seconds on a GPU, ~30 s on a CPU)."""
    from torch.nn.attention.flex_attention import create_block_mask

    T, S = q_BHTD.shape[2], k_BHSD.shape[2]
    bias_HR, q_pos_T, k_pos_S = ctx.bias_HR, ctx.q_pos_T, ctx.k_pos_S
    last = bias_HR.shape[1] - 1

    def score_mod(score, b, h, i, j):
        return score + bias_HR[h, (q_pos_T[i] - k_pos_S[j]).clamp(0, last)]

    def causal(b, h, i, j):
        return k_pos_S[j] <= q_pos_T[i]

    block = create_block_mask(causal, None, None, T, S, device=q_BHTD.device)
    return compiled_flex()(q_BHTD, k_BHSD, v_BHSD, score_mod=score_mod, block_mask=block)


def attend_toeplitz(q_BHTD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor, pos: PositionalScheme,
                    ctx: AttnContext, plan: Plan, drop: float) -> torch.Tensor:
    """Default positions and a bias of i - j alone: chunks of queries, each against its keys in reverse order
    with the scheme's strided Toeplitz view as the mask (pos.toeplitz): no (H, t, s) tensor is written."""
    T, S = q_BHTD.shape[2], k_BHSD.shape[2]
    k_rev, v_rev = k_BHSD.flip(2), v_BHSD.flip(2)  # key S - 1 - c at c: a chunk's keys 0..s-1 are the last s
    parts = []
    for a in range(0, T, plan.rows):
        b = min(T, a + plan.rows)
        s = min(S, b)
        with torch.autocast(q_BHTD.device.type, enabled=False):  # the bias in fp32, then in the compute dtype
            mask = pos.toeplitz(ctx, a, b - a, s, q_BHTD.dtype)
        parts.append(F.scaled_dot_product_attention(q_BHTD[:, :, a:b], k_rev[:, :, S - s:], v_rev[:, :, S - s:],
                                                    attn_mask=mask, dropout_p=drop))
    return torch.cat(parts, dim=2)


def attend_chunk_masks(q_BHTD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor, pos: PositionalScheme,
                       ctx: AttnContext, plan: Plan, drop: float) -> torch.Tensor:
    """Default positions, no gradient: chunks of queries, each with the mask pos.chunk_mask builds in one
    workspace (no per-pair index or gather, no fresh buffers), the largest chunk first; a chunk it leaves is
    scored on the mask path."""
    T, S = q_BHTD.shape[2], k_BHSD.shape[2]
    general, work = dataclasses.replace(plan, path="weights" if pos.adds_values else "mask"), Workspace()
    parts = {}
    for a in reversed(range(0, T, plan.rows)):
        b = min(T, a + plan.rows)
        s = min(S, b)
        q_BHtD, k_BHsD, v_BHsD, chunk = q_BHTD[:, :, a:b], k_BHSD[:, :, :s], v_BHSD[:, :, :s], ctx.rows(a, b).keys(s)
        with torch.autocast(q_BHTD.device.type, enabled=False):  # the terms in fp32, as `score`'s and `bias`'s
            fast = pos.chunk_mask(q_BHtD.float(), k_BHsD.float(), chunk, work) if s == b else None
        if fast is not None and pos.adds_values:  # fp32 throughout, as the weights path
            fast = attend_with_values(fast, k_BHsD.float(), v_BHsD.float(), pos, chunk, drop)
        elif fast is not None:
            q2, mask = (x.to(q_BHtD.dtype) for x in fast)
            fast = F.scaled_dot_product_attention(q2, k_BHsD, v_BHsD, attn_mask=mask, dropout_p=drop)
        parts[a] = attend_rows(q_BHtD, k_BHsD, v_BHsD, pos, chunk, general, None, a, drop) if fast is None else fast
    return torch.cat([parts[a].to(v_BHSD.dtype) for a in sorted(parts)], dim=2)


def attend_with_values(fast, k_BHsD, v_BHsD, pos: PositionalScheme, ctx: AttnContext, drop: float):
    """SDPA with the chunk's mask plus the scheme's value term from the row normalisers (`chunk_values`), fp32;
    None where the fused kernel does not return them (only CPU's flash kernel does, without dropout)."""
    q_BHtD, mask = fast
    flash = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)  # (torch >= 2.3)
    if drop or q_BHtD.device.type != "cpu" or flash is None:
        return None
    out_BHtD, lse_BHt = flash(q_BHtD, k_BHsD, v_BHsD, attn_mask=mask)  # SDPA's output and row logsumexp
    return out_BHtD + pos.chunk_values(q_BHtD, k_BHsD, lse_BHt, ctx)


def attend_extended(q_BHTD, k_BHSD, v_BHSD, raw, pos: PositionalScheme, ctx: AttnContext, plan: Plan,
                    drop: float) -> torch.Tensor:
    """Attention under an extension that remaps distances or windows keys, chunk by chunk of queries, in fp32:
    q.k / sqrt(D) with the scheme's rotation at each pair's own positions (the far pairs' rotated again at
    their remapped positions), its distance bias at the remapped distance, -inf on future and unseen keys."""
    from lenx.pos.bias import DistanceContext

    ext, (q_raw, k_raw) = plan.extension, raw
    T, S, D = q_BHTD.shape[2], k_BHSD.shape[2], q_BHTD.shape[-1]
    parts = []
    for a in range(0, T, plan.rows):
        b = min(T, a + plan.rows)
        window = ext.key_range(a, b) if plan.contiguous else None
        if window is not None:  # sinks and the chunk's window only: the cost falls with the window
            keys = torch.cat([torch.arange(window[0]), torch.arange(window[1], min(S, b))]).to(q_BHTD.device)
        else:
            keys = torch.arange(min(S, b) if plan.contiguous else S, device=q_BHTD.device)
        i_t, j_s = ctx.q_pos_T[a:b], ctx.k_pos_S[keys]
        pairs = ext.pairs(i_t, j_s)
        with torch.autocast(q_BHTD.device.type, enabled=False):
            logits = q_BHTD[:, :, a:b].float() @ k_BHSD[:, :, keys].float().transpose(-1, -2) / D ** 0.5
            far = pairs.far_ts if pairs.far_ts is not None and bool(pairs.far_ts.any()) else None
            if far is not None and type(pos).rotate is not PositionalScheme.rotate:  # rotary: rotate at q', k'
                q_far, k_far = rotate_at(pos, q_raw[:, :, a:b], k_raw[:, :, keys], pairs.q_far_t, pairs.k_far_s,
                                         int(ctx.q_pos_T.max()))
                logits = torch.where(far, q_far.float() @ k_far.float().transpose(-1, -2) / D ** 0.5, logits)
            if isinstance(ctx, DistanceContext):  # a distance bias, read at the (remapped) distance
                d_ts = i_t[:, None] - j_s[None, :]
                if far is not None:
                    d_ts = torch.where(far, pairs.q_far_t[:, None] - pairs.k_far_s[None, :], d_ts)
                logits = logits + ctx.bias_at(d_ts)
            hidden_ts = j_s[None, :] > i_t[:, None]
            if pairs.visible_ts is not None:
                hidden_ts = hidden_ts | ~pairs.visible_ts
            weights = F.dropout(logits.masked_fill(hidden_ts, float("-inf")).softmax(-1), drop)
            parts.append((weights @ v_BHSD[:, :, keys].float()).to(v_BHSD.dtype))
    return torch.cat(parts, dim=2)


def rotate_at(pos: PositionalScheme, q_BHtD: torch.Tensor, k_BHsD: torch.Tensor, q_pos_t: torch.Tensor,
              k_pos_s: torch.Tensor, last: int) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k (as projected) rotated by the scheme at the given positions. One context over both position sets
    and the sequence's last position, so that a scaling that reads the length, and xPos's centring, are those of
    the sequence scored."""
    t = len(q_pos_t)
    where = torch.cat([q_pos_t, k_pos_s, q_pos_t.new_tensor([last])])
    ctx = pos.context(where, where)
    pad = q_BHtD.new_zeros(q_BHtD.shape[:2] + (1, q_BHtD.shape[-1]))
    both = torch.cat([q_BHtD, k_BHsD, pad], dim=2)
    q_rot, k_rot = pos.rotate(both, both, ctx)
    return q_rot[:, :, :t], k_rot[:, :, t:-1]


def positional_mask(pos: PositionalScheme, ctx: AttnContext, q_start: int | None, dtype: torch.dtype
                    ) -> torch.Tensor:
    """The scheme's positional bias with -inf on future keys (zeros and -inf when it has none), (H or 1, T, S),
    in `dtype`. q_start: set for default positions (ctx's queries at q_start + arange(T), keys at arange(S))."""
    with torch.autocast(ctx.q_pos_T.device.type, enabled=False):
        mask_HTS = pos.bias(ctx, q_start, dtype)
        if mask_HTS is None:
            T, S = len(ctx.q_pos_T), len(ctx.k_pos_S)
            mask_HTS = causal(torch.zeros(1, T, S, device=ctx.q_pos_T.device), ctx.q_pos_T, ctx.k_pos_S)
    return mask_HTS.to(dtype)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype attention's matmuls run in: autocast's where it is on for x's device, else x's own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
