"""The kernels behind attention's plan (lenx.attention decides the path; these execute it, and never re-route: a
kernel that cannot run where the plan sent it raises `PlanError`): the fused paths ("features": ALiBi's bias and
FoX's gate as channels of q and k; "toeplitz": a strided view of a distance bias over reversed keys;
"chunk_mask" / "chunk_values": each chunk's mask from the scheme; "flex": FlexAttention's score_mod), the
extensions' path ("extended"), `fused` (SDPA, or CPU's flash kernel where sinks rescale its output), and `Plan`,
what attention's plan decided (lenx.blockwise holds the block-wise scoring paths "stickbreaking" and "banded",
lenx.kernels `traced` and `PlanError`). Shapes: B batch, T queries, t a chunk of them, S keys,
s the keys a chunk reads, H heads, D head dim.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lenx.kernels import (
    FEATURE_POSITIONS,
    PlanError,
    Workspace,
    _ran,
    cpu_flash,
    linear_bias_channels,
    toeplitz_view,
)
from lenx.modifiers import (
    NO_MODIFIERS,
    ModifierParams,
    Modifiers,
    forget_bias,
    forget_channels,
    modified_softmax,
    scale_rows,
    sink_rescale,
    ssmax_scale,
    window_hidden,
)
from lenx.pos.base import AttnContext, PositionalScheme
from lenx.pos.bias import DistanceContext

if TYPE_CHECKING:
    from lenx.extensions import Extension


@dataclass(frozen=True)
class Plan:
    """How attention runs over one forward's context (the same for every layer, the mask aside)."""

    path: str  # one of PATHS (the module docstring)
    rows: int  # queries per chunk (a chunk's B x H x rows x S logits stay within CHUNK_LOGITS; CPU_WRITTEN_LOGITS)
    # Default positions (query i and key j at positions i and j): a chunk reads only the keys up to its last query
    # (the rest are future keys of all its queries), and a distance bias is a Toeplitz matrix.
    contiguous: bool
    # The mask's dtype: the compute dtype when it goes straight to SDPA (which would cast it anyway); fp32 when
    # content score terms are added to it or the weights themselves are read (Shaw's values).
    dtype: torch.dtype
    whole: bool  # one chunk holds the whole (H, T, S) mask: built once, before the layers, not per chunk
    per_layer: bool  # the positional bias differs per layer (a table per layer: FIRE)
    mask_HTS: torch.Tensor | None = None  # the whole mask, when `whole` (set by attention.for_layer)
    # A training-free extension active at this length (lenx.extensions): path "extended" when it remaps distances
    # or windows keys; q_scale_T multiplies the queries (log-n scaling), on any path.
    extension: Extension | None = None
    q_scale_T: torch.Tensor | None = None
    # The scheme's own faster evaluation of its bias may run (FIRE's linear pieces: no gradient, not `reference`)
    fast: bool = False
    # Attention modifiers (Modifiers) and, for SSMax, log n of each query: n the keys at or before its position
    modifiers: Modifiers = NO_MODIFIERS
    log_n_T: torch.Tensor | None = None
    # The fused kernel gives each row's logsumexp (CPU scoring: no gradient, no dropout): the sinks may run on the
    # fused paths (modifiers.LSE_HOSTS)
    lse: bool = False
    # Path "banded": keys at this distance or more from every query of a chunk take the bias's far form (ALiBi's
    # line as channels: 1; a table constant from this distance on: T5's last bucket)
    band: int | None = None
    # Paths "mask" / "weights" scoring at default positions, the whole mask not built: each chunk's bias from the
    # scheme's own chunk_mask (a bias of positions alone: FIRE) instead of its per-pair `bias`
    chunk_bias: bool = False


# Which kernel: a bias given as data (lenx.pos.bias.DistanceContext) and the positions decide.
def far_form(ctx: AttnContext) -> int | None:
    """For path "banded": 1 where the bias is ALiBi's line (ctx.slopes_H: every key before a chunk as one channel
    pair), the distance from which a bias table is constant where that is under half the keys (T5's last bucket),
    else None (the Toeplitz path as it is)."""
    if not isinstance(ctx, DistanceContext) or ctx.drawn_R is not None:
        return None
    if ctx.slopes_H is not None:
        return 1
    same_R = (ctx.bias_HR == ctx.bias_HR[:, -1:]).all(0)
    tail = int(same_R.flip(0).int().cumprod(0).sum())  # the trailing run of distances equal to the last
    start = ctx.bias_HR.shape[1] - tail
    return start if 0 < start < len(ctx.k_pos_S) // 2 else None


def channels_exact(ctx: AttnContext) -> bool:
    """Whether ctx's bias is linear in i - j (slopes given) at positions where its channels sum exactly."""
    if not isinstance(ctx, DistanceContext) or ctx.slopes_H is None or ctx.drawn_R is not None:
        return False  # (drawn distances: not linear in i - j)
    return int(torch.maximum(ctx.q_pos_T.max(), ctx.k_pos_S.max())) < FEATURE_POSITIONS


def fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Plan, params: ModifierParams | None,
          **sdpa) -> torch.Tensor:
    """SDPA on a fused path (keyword arguments `sdpa` as F.scaled_dot_product_attention's); with the plan's sinks,
    CPU's fused kernel, whose row logsumexp rescales its output (`sink_rescale`: exact, one factor per row)."""
    if not plan.modifiers.sinks:
        return F.scaled_dot_product_attention(q, k, v, **sdpa)
    if not plan.lse or sdpa.get("dropout_p"):
        raise PlanError(f"path {plan.path!r} hosts the sinks only with the CPU kernel's logsumexp, no dropout")
    out, lse = cpu_flash()(q, k, v, is_causal=sdpa.get("is_causal", False), attn_mask=sdpa.get("attn_mask"),
                           scale=sdpa.get("scale"))
    return sink_rescale(out, lse, params.sink_H)


def attend_features(q_BHTD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor, pos: PositionalScheme,
                    ctx: AttnContext, drop: float, plan: Plan | None = None, params: ModifierParams | None = None
                    ) -> torch.Tensor:
    """SDPA's fused causal kernel with the scheme's linear bias and FoX's gate as extra channels, first, of q and
    k: [f_q, g_q, q / sqrt(D)] . [f_k, g_k, k] = bias + (c_i - c_j) + q.k / sqrt(D) (scale 1), the bias's
    channels first (their partial sum is exact, `linear_bias_channels`), the gate's next (`forget_channels`); v
    padded with zeros to the same width, as the fused kernel needs (the plan has checked `channels_exact`)."""
    B, H, T, D = q_BHTD.shape
    S = k_BHSD.shape[2]
    q_parts, k_parts = [], []
    if pos.adds_bias:
        if not channels_exact(ctx):
            raise PlanError(f"{type(pos).__name__}'s bias is not exact as channels at the positions the plan sent "
                            "to the features path")
        fq_HTc, fk_HSc = linear_bias_channels(ctx.slopes_H, ctx.q_pos_T, ctx.k_pos_S)
        q_parts.append(fq_HTc.expand(B, H, T, -1))
        k_parts.append(fk_HSc.expand(B, H, S, -1))
    forget = plan is not None and plan.modifiers.forget
    if forget:
        gq_BHTc, gk_BHSc = forget_channels(params.log_forget_BHT)
        q_parts.append(gq_BHTc)
        k_parts.append(gk_BHSc)
    if not q_parts:
        raise PlanError("the features path needs a linear bias or FoX's gate")
    _ran("features")
    c = sum(x.shape[-1] for x in q_parts)
    q2 = torch.cat([x.to(q_BHTD.dtype) for x in q_parts] + [q_BHTD * D ** -0.5], dim=-1)
    k2 = torch.cat([x.to(k_BHSD.dtype) for x in k_parts] + [k_BHSD], dim=-1)
    v2 = F.pad(v_BHSD, (0, c))
    if plan is None:
        return F.scaled_dot_product_attention(q2, k2, v2, is_causal=True, dropout_p=drop, scale=1.0)[..., :D]
    return fused(q2, k2, v2, plan, params, is_causal=True, dropout_p=drop, scale=1.0)[..., :D]


@functools.cache
def compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def attend_flex(q_BHTD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor, ctx: AttnContext,
                plan: Plan | None = None, params: ModifierParams | None = None) -> torch.Tensor:
    """FlexAttention (torch.nn.attention.flex_attention, compiled) with the distance bias (and FoX's c_i - c_j)
    as its score_mod and causality by position (and a trained window) as its block mask: fused, with no mask
    tensor, on CUDA as on CPU. Each new length compiles once (seconds on a GPU, ~30 s on a CPU)."""
    from torch.nn.attention.flex_attention import create_block_mask

    T, S = q_BHTD.shape[2], k_BHSD.shape[2]
    q_pos_T, k_pos_S = ctx.q_pos_T, ctx.k_pos_S
    mods = NO_MODIFIERS if plan is None else plan.modifiers
    if not isinstance(ctx, DistanceContext) and not mods.forget and mods.window is None and mods.chunk is None:
        raise PlanError("the flex path needs a bias of the distance, FoX's gate, a window or chunks")
    bias_HR = ctx.bias_HR if isinstance(ctx, DistanceContext) else None
    last = None if bias_HR is None else bias_HR.shape[1] - 1
    c_BHT = params.log_forget_BHT if mods.forget else None
    window, chunk = mods.window, mods.chunk

    def score_mod(score, b, h, i, j):
        if bias_HR is not None:
            score = score + bias_HR[h, (q_pos_T[i] - k_pos_S[j]).clamp(0, last)]
        if c_BHT is not None:
            score = score + (c_BHT[b, h, i] - c_BHT[b, h, j])
        return score

    def causal(b, h, i, j):
        seen = k_pos_S[j] <= q_pos_T[i]
        if window is not None:
            seen = seen & (q_pos_T[i] - k_pos_S[j] < window)
        if chunk is not None:
            seen = seen & (q_pos_T[i] // chunk == k_pos_S[j] // chunk)
        return seen

    block = create_block_mask(causal, None, None, T, S, device=q_BHTD.device)
    _ran("flex")
    return compiled_flex()(q_BHTD, k_BHSD, v_BHSD, score_mod=score_mod, block_mask=block)


def attend_toeplitz(q_BHTD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor, pos: PositionalScheme,
                    ctx: AttnContext, plan: Plan, drop: float, params: ModifierParams | None = None
                    ) -> torch.Tensor:
    """Default positions and a bias of i - j alone (ctx a DistanceContext): chunks of queries, each against its
    keys in reverse order with a strided Toeplitz view of the table as the mask: no (H, t, s) tensor is
    written (with SSMax, the view's rows scaled into one, `scale_rows`, and the queries scaled)."""
    if not isinstance(ctx, DistanceContext):
        raise PlanError(f"{type(pos).__name__} has no table of distances for the plan's toeplitz path")
    T, S = q_BHTD.shape[2], k_BHSD.shape[2]
    k_rev, v_rev = k_BHSD.flip(2), v_BHSD.flip(2)  # key S - 1 - c at c: a chunk's keys 0..s-1 are the last s
    parts = []
    for a in range(0, T, plan.rows):
        b = min(T, a + plan.rows)
        s = min(S, b)
        q_BHtD = q_BHTD[:, :, a:b]
        with torch.autocast(q_BHTD.device.type, enabled=False):  # the bias in fp32, then in the compute dtype
            mask = toeplitz_view(ctx.bias_HR, a, b - a, s, torch.float32 if plan.modifiers.ssmax else q_BHTD.dtype)
            if plan.modifiers.ssmax:  # every term of a query's logits times c: its rows written once, scaled
                c_Ht = ssmax_scale(params, plan.log_n_T[a:b])
                q_BHtD, mask = q_BHtD * c_Ht[..., None].to(q_BHtD.dtype), scale_rows(mask, c_Ht).to(q_BHTD.dtype)
        _ran("toeplitz")
        parts.append(fused(q_BHtD, k_rev[:, :, S - s:], v_rev[:, :, S - s:], plan, params,
                           attn_mask=mask, dropout_p=drop))
    return torch.cat(parts, dim=2)


def attend_chunk_masks(q_BHTD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor, pos: PositionalScheme,
                       ctx: AttnContext, plan: Plan, drop: float, params: ModifierParams | None = None
                       ) -> torch.Tensor:
    """Default positions, no gradient: chunks of queries, each with the mask pos.chunk_mask builds in one
    workspace (no per-pair index or gather, no fresh buffers), the largest chunk first; on path "chunk_values"
    the scheme's value term from the fused kernel's row normalisers (pos.chunk_values). SSMax scales the chunk's
    mask rows and its queries (every logit term), the sinks rescale the output (`fused`)."""
    T, S = q_BHTD.shape[2], k_BHSD.shape[2]
    work = Workspace()
    parts = {}
    for a in reversed(range(0, T, plan.rows)):
        b = min(T, a + plan.rows)
        s = min(S, b)
        q_BHtD, k_BHsD, v_BHsD, chunk = q_BHTD[:, :, a:b], k_BHSD[:, :, :s], v_BHSD[:, :, :s], ctx.rows(a, b).keys(s)
        with torch.autocast(q_BHTD.device.type, enabled=False):  # the terms in fp32, as `score`'s and `bias`'s
            fast = pos.chunk_mask(q_BHtD.float(), k_BHsD.float(), chunk, work) if s == b else None
        if fast is None:
            raise PlanError(f"{type(pos).__name__}.chunk_mask declined queries {a}..{b - 1} of {T} (keys {s}) on "
                            "the plan's chunk path")
        _ran(plan.path)
        if plan.path == "chunk_values":  # fp32 throughout, as the weights path
            if len(fast) != 3:
                raise PlanError(f"{type(pos).__name__}.chunk_mask gave no value term on the chunk_values path")
            parts[a] = attend_with_values(fast, k_BHsD.float(), v_BHsD.float())
        else:
            q2, mask = fast[:2]
            if plan.modifiers.ssmax:
                with torch.autocast(q_BHTD.device.type, enabled=False):
                    c_Ht = ssmax_scale(params, plan.log_n_T[a:b])
                    q2, mask = q2 * c_Ht[..., None], scale_rows(mask, c_Ht)  # (the chunk's own mask)
            q2, mask = q2.to(q_BHtD.dtype), mask.to(q_BHtD.dtype)
            parts[a] = fused(q2, k_BHsD, v_BHsD, plan, params, attn_mask=mask, dropout_p=drop)
    return torch.cat([parts[a].to(v_BHSD.dtype) for a in sorted(parts)], dim=2)


def attend_with_values(fast, k_BHsD, v_BHsD) -> torch.Tensor:
    """CPU's fused kernel with the chunk's mask, plus the scheme's value term from its row normalisers (the third
    item of `chunk_mask`), fp32 (the plan sends only CPU, dropout-free scoring here)."""
    q_BHtD, mask, value_term = fast
    out_BHtD, lse_BHt = cpu_flash()(q_BHtD, k_BHsD, v_BHsD, attn_mask=mask)  # SDPA's output and row logsumexp
    return out_BHtD + value_term(lse_BHt)


def attend_extended(q_BHTD, k_BHSD, v_BHSD, raw, pos: PositionalScheme, ctx: AttnContext, plan: Plan,
                    drop: float, params: ModifierParams | None = None) -> torch.Tensor:
    """Attention under an extension that remaps distances or windows keys, chunk by chunk of queries, in fp32:
    q.k / sqrt(D) with the scheme's rotation at each pair's own positions (the far pairs' rotated again at
    their remapped positions), its distance bias at the remapped distance, -inf on future and unseen keys.
    With the plan's modifiers: SSMax's n is each query's keys left visible (a window's too), the sinks a column."""
    _ran("extended")
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
                                         int(ctx.q_pos_T.max()), ctx.layer)
                logits = torch.where(far, q_far.float() @ k_far.float().transpose(-1, -2) / D ** 0.5, logits)
            if isinstance(ctx, DistanceContext):  # a distance bias, read at the (remapped) distance
                d_ts = i_t[:, None] - j_s[None, :]
                if far is not None:
                    d_ts = torch.where(far, pairs.q_far_t[:, None] - pairs.k_far_s[None, :], d_ts)
                logits = logits + ctx.bias_at(d_ts)
            hidden_ts = j_s[None, :] > i_t[:, None]
            if pairs.visible_ts is not None:
                hidden_ts = hidden_ts | ~pairs.visible_ts
            if plan.modifiers.window is not None or plan.modifiers.chunk is not None:  # the trained window / chunks
                hidden_ts = hidden_ts | window_hidden(i_t, j_s, plan.modifiers.window, plan.modifiers.chunk)
            if plan.modifiers.forget:
                logits = logits + forget_bias(params, a, b - a, keys)
            logits = logits.masked_fill(hidden_ts, float("-inf"))
            if plan.modifiers.any:
                c_Ht = ssmax_scale(params, (~hidden_ts).sum(-1).float().log()) if plan.modifiers.ssmax else None
                weights = F.dropout(modified_softmax(logits, c_Ht, params, plan.modifiers), drop)
            else:
                weights = F.dropout(logits.softmax(-1), drop)
            parts.append((weights @ v_BHSD[:, :, keys].float()).to(v_BHSD.dtype))
    return torch.cat(parts, dim=2)


def rotate_at(pos: PositionalScheme, q_BHtD: torch.Tensor, k_BHsD: torch.Tensor, q_pos_t: torch.Tensor,
              k_pos_s: torch.Tensor, last: int, layer: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k (as projected) rotated by the scheme at the given positions, as attention layer `layer` rotates
    them. One context over both position sets and the sequence's last position, so that a scaling that reads the
    length, and xPos's centring, are those of the sequence scored."""
    t = len(q_pos_t)
    where = torch.cat([q_pos_t, k_pos_s, q_pos_t.new_tensor([last])])
    ctx = pos.context(where, where).at_layer(layer)
    pad = q_BHtD.new_zeros(q_BHtD.shape[:2] + (1, q_BHtD.shape[-1]))
    both = torch.cat([q_BHtD, k_BHsD, pad], dim=2)
    q_rot, k_rot = pos.rotate(both, both, ctx)
    return q_rot[:, :, :t], k_rot[:, :, t:-1]
