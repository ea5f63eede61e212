"""How attention runs for one forward pass: the plan, decided once, and the kernels it drives.

The positional scheme owns the positional context (`pos.context`: positions, cos/sin, tables; `pos.bias`: the logit
terms of positions alone). Attention owns the plan (`plan`): the path, the queries per chunk, the keys each chunk
reads, the mask's dtype, and the mask itself when one chunk holds it (built once per forward, or once per layer for
a bias with a table per layer). The plan is decided before any kernel runs, from everything that decides it: the
scheme, the positions, the device, whether a gradient is needed, the dropout, and the `attention` setting
(`sdpa`: the fastest exact path; `flex`: FlexAttention for a bias of the distance; `reference`: the float-mask and
explicit-softmax paths the fast ones replaced, for tests and benchmarks). `attend` executes the plan and never
re-routes: a kernel that cannot run where the plan sent it raises `PlanError` (a planning bug, caught by
tests/test_attention_paths.py, which reads the kernels that ran from `traced()`).
Paths: "causal" (SDPA's causal kernel, no mask), "features" (the same kernel with ALiBi's bias as exact extra
channels of q and k), "toeplitz" (SDPA with a strided Toeplitz view of a distance bias over reversed keys), "flex"
(FlexAttention with the distance bias as score_mod), "chunk_mask" (SDPA with each chunk's mask from the scheme's
`chunk_mask`, scoring at default positions), "chunk_values" (the same with Shaw-KV's value term from SDPA's row
normalisers), "mask" (SDPA with a float mask), "weights" (an explicit softmax: value terms read the weights),
"extended" (a training-free extension), "stickbreaking" (stick-breaking scoring at default positions: blocks of
keys in reverse order, in place, stopping where the stick is spent), "banded" (scoring SSMax on ALiBi or T5 on CPU:
the keys far from a chunk through the fused kernel without a mask, merged with the near block by logsumexp).
Modifiers of attention itself (config `attn`, composable with every scheme; `Modifiers`) are part of the plan too:
scalable softmax (Nakanishi 2025, arXiv:2501.19399) multiplies each query's whole logit vector (content and
positional terms) by s_h log n, n the keys it sees, s_h learned per head; learned sinks (gpt-oss, transformers'
`modeling_gpt_oss.eager_attention_forward`) append one learned logit per head to every row, softmax over both, the
sink's column dropped. A path that cannot host a modifier exactly is never chosen for it (`HOSTS`): SSMax scales q
on "causal" (its logits are q.k alone), q and the chunk's mask rows on "chunk_mask", the whole logits on "mask",
"weights" and "extended"; sinks run as an extra key column (zero key and value, the sink as its mask entry) on
"mask", as an extra logit column on "weights" and "extended", and, scoring on CPU, on the fused paths ("causal",
"features", "toeplitz", "chunk_mask") as a rescaling of the output by each row's logsumexp (`LSE_HOSTS`). FoX's
forget gate (c_i - c_j from the layer's input, in ModifierParams) runs as two exact channels of q and k on
"features" (fp32 on CPU, beside ALiBi's channels or alone) and adds to the chunk's mask on "mask", "weights" and
"extended", as a training-time window does; stick-breaking replaces the softmax on "weights";
selective attention (its F carried over the chunks of queries in order) subtracts from the mask, and DAPE adds its
MLP of the content logits and the bias, on "mask" and "weights".
Shapes: B batch, T queries, t a chunk of them, S keys, s the keys a chunk reads, H heads, D head dim.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lenx.extensions import Extension
from lenx.kernels import (
    FEATURE_POSITIONS,
    Workspace,
    cpu_flash,
    linear_bias_channels,
    split_slopes,  # noqa: F401  (public here too)
    toeplitz_mask,
    toeplitz_view,
)
from lenx.modifiers import (  # noqa: F401  (public here too: attention.Modifiers, ...)
    FIELDS,
    HOSTS,
    NO_MODIFIERS,
    ModifierParams,
    Modifiers,
    DAPE_WIDTH,
    dape_term,
    forget_bias,
    forget_channels,
    group_rms_norm,
    hosts,
    selective_penalty,
    modified_softmax,
    scale_logits,
    scale_rows,
    sink_column,
    sink_rescale,
    ssmax_scale,
    STICK_BREAKING,
    check_extended,
    stick_breaking,
    token_shift,
    visible_log_n,
    window_hidden,
)
from lenx.pos.base import AttnContext, PositionalScheme, causal
from lenx.pos.bias import DistanceContext

# Logits per attention chunk (batch x heads x queries x keys) when a scheme adds logit terms: 2^25 bounds each
# of a chunk's fp32 (B, H, t, S) tensors to 128 MiB at any length (a dense fp32 bias at 8192 tokens is 1 GiB
# per 4 heads) and still gives SDPA enough query rows to fill a GPU (2^20 ran 4x slower at 8192 on an H100).
CHUNK_LOGITS = 1 << 25
# CPU scoring on the paths that write each chunk's (B, H, t, s) logits or mask ("mask", "weights", the schemes' chunk
# masks, a Toeplitz view's rows scaled by SSMax): chunks of at most 2^21 logits (8 MiB in fp32), whose tensors stay
# near the caches between their writes and SDPA's read. At 8192 tokens on 2 CPU cores (AVX-512, one thread) this
# ran KERPLE and Sandwich with SSMax 2.3-2.5x, selective attention and DAPE 2.1x, Transformer-XL 1.2x faster than
# 2^25 (results/benchmarks/mechanisms_35/chunks.md); smaller chunks lost to their per-chunk overhead (2^18: KERPLE
# with SSMax 1.9x slower than 2^20), and the unscaled Toeplitz view (nothing written) ran best at 2^25.
CPU_WRITTEN_LOGITS = 1 << 21


ATTENTION = ("sdpa", "flex", "reference")  # the `attention` setting (config, eval.attention)
PATHS = ("causal", "features", "toeplitz", "banded", "flex", "chunk_mask", "chunk_values", "mask", "weights", "extended",
         "stickbreaking")


class PlanError(RuntimeError):
    """A kernel that cannot run where the plan sent it: a bug in `plan`, never a reason to take another path."""


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
    mask_HTS: torch.Tensor | None = None  # the whole mask, when `whole` (set by `for_layer`)
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

    def for_layer(self, pos: PositionalScheme, ctx: AttnContext) -> Plan:
        """The plan for ctx's layer: the whole mask built here when one chunk holds it, kept from the layer before
        unless the bias differs per layer."""
        if not self.whole or (self.mask_HTS is not None and not self.per_layer):
            return self
        return dataclasses.replace(self, mask_HTS=positional_mask(pos, ctx, 0 if self.contiguous else None,
                                                                  self.dtype, self.fast))


def plan(pos: PositionalScheme, ctx: AttnContext, *, batch: int, dtype: torch.dtype, contiguous: bool,
         extension: Extension | None = None, attention: str = "sdpa", dropout: float = 0.0,
         grad: bool | None = None, modifiers: Modifiers = NO_MODIFIERS) -> Plan:
    """The plan for attention over ctx's queries and keys with this scheme, batch size and compute dtype (and a
    training-free extension, where it changes anything at these positions), on ctx's device: `attention` is the
    setting (ATTENTION), `dropout` the attention dropout of this forward, `grad` whether a gradient is needed
    (default: torch's grad mode), `modifiers` the model's attention modifiers. Every choice of path is made here;
    `attend` only executes it."""
    if attention not in ATTENTION:
        raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
    grad = torch.is_grad_enabled() if grad is None else grad
    device = ctx.q_pos_T.device.type
    T, S = len(ctx.q_pos_T), len(ctx.k_pos_S)
    ext = None if extension is None else extension.for_input(ctx.q_pos_T, ctx.k_pos_S)  # e.g. Self-Extend's G
    ext = ext if ext is not None and ext.active(ctx.q_pos_T, ctx.k_pos_S) else None
    q_scale_T = None if ext is None else ext.q_scale(ctx.q_pos_T)
    mods = {} if not modifiers.any else {
        "modifiers": modifiers,
        "log_n_T": visible_log_n(ctx, modifiers.window, modifiers.chunk) if modifiers.ssmax else None}
    if ext is not None and (ext.remaps or ext.windows):  # remapped pairs, windows: logits built here, in fp32
        check_extended(ext.name, modifiers)
        rows = max(1, CHUNK_LOGITS // (batch * pos.n_heads * S))
        if ext.window_tokens and contiguous:  # chunks no longer than the window: each reads ~2 windows of keys
            rows = min(rows, max(64, ext.window_tokens))
        return Plan(path="extended", rows=rows, contiguous=contiguous,
                    dtype=torch.float32, whole=False, per_layer=False, extension=ext, q_scale_T=q_scale_T, **mods)
    # Under torch.compile the float-mask path: inductor (torch 2.13, 2 CPU threads) miscompiled the channels
    # path's training step (a garbage view shape, then a crash; test_compiled_training_matches_eager)
    fast = attention != "reference" and not torch.compiler.is_compiling()
    lse = fast and device == "cpu" and not grad and not dropout and cpu_flash() is not None
    # Scoring at default positions: the scheme's own per-chunk mask (pos.chunk_mask), built in a reused workspace
    chunk_masks = fast and pos.has_chunk_mask and contiguous and not grad
    if pos.adds_values:
        path = "weights"
        if chunk_masks and device == "cpu" and not dropout and cpu_flash() is not None:
            path = "chunk_values"  # Shaw-KV: CPU's fused kernel with its row normalisers, the value term from a band
    elif pos.adds_logits:
        path = "chunk_mask" if chunk_masks else "mask"  # the content terms placed by distance with one write
    elif pos.adds_bias:
        path = "mask"
        table = isinstance(ctx, DistanceContext)  # a bias of i - j given by a per-head table
        if attention == "flex" and table:
            # FlexAttention has no dropout, and no backward on CPU: the SDPA paths there
            path = "flex" if not dropout and not (grad and device == "cpu") else \
                "toeplitz" if contiguous else "mask"
        elif fast and dtype == torch.float32 and device == "cpu" and (contiguous or increasing(ctx.q_pos_T)) \
                and channels_exact(ctx):
            path = "features"  # fp32 on CPU only: the channels' exact sum needs fp32 and in-order accumulation
        elif chunk_masks:
            path = "chunk_mask"  # FIRE: its bias of i and j built in place, chunk by chunk
        elif fast and table and contiguous and not learns(ctx):
            path = "toeplitz"  # a learned bias keeps the mask path: its gradient through the strided view's
            # overlapping entries is a slow scatter (the whole mask, built once per forward, is cheaper to train)
    else:
        path = "causal"
    if modifiers.forget and path in ("causal", "features") and fast and dtype == torch.float32 and device == "cpu":
        path = "features"  # FoX's gate as exact channels of q and k beside the fused causal kernel
    if attention == "flex" and flex_hosts(pos, ctx, modifiers) and not dropout and not (grad and device == "cpu"):
        path = "flex"  # FoX's gate and a window as FlexAttention's score_mod and block mask (beside a distance bias)
    if modifiers == STICK_BREAKING and fast and contiguous and not grad and not dropout and path == "causal":
        path = "stickbreaking"  # scoring plain stick-breaking (no positional terms, rotation aside)
    if path == "features" and not hosts(path, modifiers, lse) and hosts("toeplitz", modifiers, lse) \
            and isinstance(ctx, DistanceContext) and contiguous and not learns(ctx):
        path = "toeplitz"  # ALiBi with SSMax: its table's rows scaled (its channels are exact unscaled only)
    band = far_form(ctx) if path == "toeplitz" and modifiers.ssmax and lse and dtype == torch.float32 else None
    if band is not None and hosts("banded", modifiers, lse):
        path = "banded"  # scoring SSMax on a linear or tail-constant bias: far keys fused, only a band masked
    if modifiers.any and not hosts(path, modifiers, lse):
        # The fast paths hold a bias that cannot be scaled per query (a strided Toeplitz view, FlexAttention's
        # score_mod, ALiBi's channels: exact only unscaled) or a fused kernel whose normaliser is out of reach
        # (sinks, where it gives no logsumexp): the general path, which builds each chunk's logits, runs the modifiers exactly
        # (stick-breaking: the explicit path, its weights are no softmax)
        path = "weights" if pos.adds_values or modifiers.stickbreaking else "mask"
    exact = pos.adds_logits or pos.adds_values or modifiers.stickbreaking
    # DAPE's MLP holds DAPE_WIDTH values per pair (2H inputs): fewer queries per chunk
    per_pair = pos.n_heads * max(1, 2 * DAPE_WIDTH // pos.n_heads) if modifiers.dape else pos.n_heads
    writes = path in ("mask", "weights", "chunk_mask", "chunk_values") or (path == "toeplitz" and modifiers.ssmax)
    budget = min(CHUNK_LOGITS, CPU_WRITTEN_LOGITS) if writes and device == "cpu" and not grad else CHUNK_LOGITS
    return Plan(path=path, rows=max(1, budget // (batch * per_pair * S)), contiguous=contiguous,
                dtype=torch.float32 if exact else dtype,
                whole=path in ("mask", "weights") and pos.n_heads * T * S <= CHUNK_LOGITS,
                per_layer=pos.adds_bias and pos.tables > 1, q_scale_T=q_scale_T, fast=fast and not grad,
                lse=lse and modifiers.sinks, band=band if path == "banded" else None, **mods)


def flex_hosts(pos: PositionalScheme, ctx: AttnContext, modifiers: Modifiers) -> bool:
    """Whether FlexAttention runs these modifiers exactly: FoX's gate (a score_mod) and a window (the block mask),
    alone or with a bias of the distance; nothing else (no content or value terms, no other modifier)."""
    others = dataclasses.replace(modifiers, forget=False, window=None, chunk=None)
    plain = not (pos.adds_bias or pos.adds_logits or pos.adds_values) or (
        isinstance(ctx, DistanceContext) and not pos.adds_logits and not pos.adds_values)
    return (modifiers.forget or modifiers.window is not None or modifiers.chunk is not None) and not others.any \
        and plain


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


def learns(ctx: AttnContext) -> bool:
    """Whether a gradient flows into the positional context (a learned bias while training)."""
    return any(isinstance(v, torch.Tensor) and v.requires_grad for v in vars(ctx).values())


def increasing(pos_T: torch.Tensor) -> bool:
    """Strictly increasing positions (every train-time mode draws them so): SDPA's causal mask by index is then
    the causal mask by position."""
    return len(pos_T) < 2 or bool((pos_T[1:] > pos_T[:-1]).all())


_TRACE: list[list[str]] = []  # the open `traced()` blocks' records


@contextlib.contextmanager
def traced() -> Iterator[list[str]]:
    """Within it, every kernel that runs appends its path to the list yielded (once per call, or per chunk where a
    path runs chunk by chunk): tests assert that what ran is what the plan said. Observes only."""
    seen: list[str] = []
    _TRACE.append(seen)
    try:
        yield seen
    finally:
        _TRACE.remove(seen)


def _ran(path: str) -> None:
    for seen in _TRACE:
        seen.append(path)


def attend(q_BHTD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor, pos: PositionalScheme,
           ctx: AttnContext, plan: Plan, drop: float, raw: tuple[torch.Tensor, torch.Tensor] | None = None,
           params: ModifierParams | None = None) -> torch.Tensor:
    """softmax(q.k/sqrt(D) + positional terms + causal mask) v, (B, H, T, D), on the plan's path (with the plan's
    modifiers, from this layer's `params`). `raw`: q and k before the scheme's rotation (path "extended" rotates
    them again at remapped positions)."""
    if plan.modifiers.any and not hosts(plan.path, plan.modifiers, plan.lse):
        raise PlanError(f"path {plan.path!r} cannot host the attention modifiers {plan.modifiers}")
    match plan.path:
        case "extended":
            return attend_extended(q_BHTD, k_BHSD, v_BHSD, raw, pos, ctx, plan, drop, params)
        case "causal":
            _ran("causal")
            if plan.modifiers.ssmax:  # exact here: the logits are q.k / sqrt(D) alone, all scaled with q
                q_BHTD = q_BHTD * ssmax_scale(params, plan.log_n_T)[..., None].to(q_BHTD.dtype)
            return fused(q_BHTD, k_BHSD, v_BHSD, plan, params, is_causal=True, dropout_p=drop)
        case "flex":
            return attend_flex(q_BHTD, k_BHSD, v_BHSD, ctx, plan, params)
        case "features":
            return attend_features(q_BHTD, k_BHSD, v_BHSD, pos, ctx, drop, plan, params)
        case "toeplitz":
            return attend_toeplitz(q_BHTD, k_BHSD, v_BHSD, pos, ctx, plan, drop, params)
        case "banded":
            return attend_banded(q_BHTD, k_BHSD, v_BHSD, ctx, plan, params)
        case "chunk_mask" | "chunk_values":
            return attend_chunk_masks(q_BHTD, k_BHSD, v_BHSD, pos, ctx, plan, drop, params)
        case "mask" | "weights":
            return attend_general(q_BHTD, k_BHSD, v_BHSD, pos, ctx, plan, drop, params)
        case "stickbreaking":
            return attend_stick_breaking(q_BHTD, k_BHSD, v_BHSD, plan)
    raise PlanError(f"unknown attention path {plan.path!r}")


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


def attend_general(q_BHTD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor, pos: PositionalScheme,
                   ctx: AttnContext, plan: Plan, drop: float, params: ModifierParams | None = None) -> torch.Tensor:
    """The reference paths: chunks of queries, each with its float mask (bias + score terms), through SDPA
    ("mask") or an explicit softmax whose weights the value terms read ("weights")."""
    T, S = q_BHTD.shape[2], k_BHSD.shape[2]
    parts = []
    # selective attention: the sum of relu(z^0) over the queries of the chunks before, carried in query order
    carry = {"BS": q_BHTD.new_zeros(q_BHTD.shape[0], S, dtype=torch.float32)} if plan.modifiers.selective else None
    for a in range(0, T, plan.rows):
        b = min(T, a + plan.rows)
        # Default positions: keys past the chunk's last query are future keys of all its queries; leave them out
        # (on average this halves a long input's attention work).
        s = min(S, b) if plan.contiguous else S
        mask_Hts = None if plan.mask_HTS is None else plan.mask_HTS[:, a:b, :s]
        parts.append(attend_rows(q_BHTD[:, :, a:b], k_BHSD[:, :, :s], v_BHSD[:, :, :s], pos, ctx.rows(a, b).keys(s),
                                 plan, mask_Hts, a, drop, params, carry))
    return torch.cat(parts, dim=2)


def attend_rows(q_BHtD: torch.Tensor, k_BHsD: torch.Tensor, v_BHsD: torch.Tensor, pos: PositionalScheme,
                ctx: AttnContext, plan: Plan, mask_Hts: torch.Tensor | None, q_start: int,
                drop: float, params: ModifierParams | None = None, carry: dict | None = None) -> torch.Tensor:
    """Attention of one chunk of queries (starting at query q_start) over s keys (with the plan's modifiers: SSMax
    scales the chunk's whole logits, the sinks add a column, selective attention subtracts F, whose running sum
    over the chunks before is `carry`, updated here)."""
    mods, t = plan.modifiers, q_BHtD.shape[2]
    with torch.autocast(q_BHtD.device.type, enabled=False):  # positional terms in fp32
        if mask_Hts is None:
            mask_Hts = positional_mask(pos, ctx, q_start if plan.contiguous else None, plan.dtype, plan.fast)
        extra = pos.score(q_BHtD.float(), k_BHsD.float(), ctx) if pos.adds_logits else None
        if mods.dape:  # + MLP([x, a]): x the content logits (with the scheme's content terms), a the bias
            x_BHts = q_BHtD.float() @ k_BHsD.float().transpose(-1, -2) / q_BHtD.shape[-1] ** 0.5
            x_BHts = x_BHts if extra is None else x_BHts + extra
            a_Hts = mask_Hts.float().masked_fill(mask_Hts == float("-inf"), 0.0)
            mask_Hts = mask_Hts.float() + dape_term(x_BHts, a_Hts, params.dape)
        if extra is not None:
            mask_Hts = mask_Hts + extra  # (B, H, t, s) for content-dependent schemes
        if mods.window is not None or mods.chunk is not None:  # keys outside the window or chunk hidden
            mask_Hts = mask_Hts.masked_fill(window_hidden(ctx.q_pos_T, ctx.k_pos_S, mods.window, mods.chunk),
                                            float("-inf"))
        if mods.forget:  # FoX: + c_i - c_j, data-dependent, (B, H, t, s), in fp32
            mask_Hts = mask_Hts.float() + forget_bias(params, q_start, t, k_BHsD.shape[2])
        if mods.selective:  # every head's logits - F, F from the first head's whole logits (B, t, s)
            mask_0 = mask_Hts[..., 0, :, :] if mask_Hts.dim() == 4 else mask_Hts[0][None]
            z0_Bts = q_BHtD[:, 0].float() @ k_BHsD[:, 0].float().transpose(-1, -2) / q_BHtD.shape[-1] ** 0.5 \
                + mask_0.float()
            F_Bts, carry["BS"] = selective_penalty(z0_Bts, ctx, carry["BS"])
            mask_Hts = mask_Hts.float() - F_Bts[:, None]
        c_Ht = ssmax_scale(params, plan.log_n_T[q_start:q_start + t]) if mods.ssmax else None
    _ran(plan.path)
    if plan.path == "mask":  # the fused kernel with a float mask (also carries the bias gradient)
        # 4-D: given a 3-D (H, t, s) mask, CPU SDPA falls back to its unfused math backend (5x slower at 8192)
        mask_BHts = mask_Hts if mask_Hts.dim() == 4 else mask_Hts[None]
        if mods.any:
            with torch.autocast(q_BHtD.device.type, enabled=False):
                if mods.ssmax:  # c (q.k / sqrt(D) + terms) = (c q).k / sqrt(D) + c terms, every term scaled
                    mask_BHts = scale_logits(mask_BHts, c_Ht)
                    q_BHtD = q_BHtD * c_Ht[..., None].to(q_BHtD.dtype)
                if mods.sinks:  # one more key: zero key and value, the sink as its logit (gpt-oss's column)
                    H = q_BHtD.shape[1]
                    mask_BHts = mask_BHts.expand(mask_BHts.shape[0], H, t, -1)
                    mask_BHts = torch.cat([mask_BHts, sink_column(params.sink_H, mask_BHts)], dim=-1)
                    k_BHsD, v_BHsD = (F.pad(x, (0, 0, 0, 1)) for x in (k_BHsD, v_BHsD))
        return F.scaled_dot_product_attention(q_BHtD, k_BHsD, v_BHsD, attn_mask=mask_BHts.to(q_BHtD.dtype),
                                              dropout_p=drop)
    with torch.autocast(q_BHtD.device.type, enabled=False):  # Shaw's value terms need the weights themselves
        logits = q_BHtD.float() @ k_BHsD.float().transpose(-1, -2) / q_BHtD.shape[-1] ** 0.5 + mask_Hts
        if mods.stickbreaking:  # the keys before each query only (attend_current=False); the remainder on v_i
            hidden = (logits == float("-inf")) | (ctx.k_pos_S[None, :] == ctx.q_pos_T[:, None])
            weights, rem_BHt = stick_breaking(logits, hidden)
            attn_BHts = F.dropout(weights, drop)
            own_BHtD = rem_BHt[..., None] * v_BHsD[:, :, q_start:q_start + t].float()
        else:
            attn_BHts = F.dropout(modified_softmax(logits, c_Ht, params, mods), drop)
            own_BHtD = 0.0
        y_BHtD = attn_BHts @ v_BHsD.float() + own_BHtD
        if pos.adds_values:
            y_BHtD = y_BHtD + pos.value(attn_BHts, ctx)
    return y_BHtD.to(v_BHsD.dtype)


# Stick-breaking scoring: queries and keys in blocks of this many (a (B, H, 256, 256) fp32 block is 1 MiB per head)
SB_BLOCK = 256
# exp(x) is exactly 0 in fp32 below -103.3 (the smallest subnormal is e^-103.28): a key whose log-weight is below
# this is no term of the fp32 sum
SB_ZERO = -110.0
# Just above the log of fp32's smallest normal number (e^-87.3365): exp below it is subnormal or 0, where CPU's
# vectorised exp is ~25x slower (measured, flushing denormals or not); e^-87.3 = 1.2e-38 is no term of an fp32 sum
# of weights up to 1 (what is set to 0 here is below 1.2e-38 each, subnormal and flushed while scoring)
SB_TINY = -87.3


def attend_stick_breaking(q_BHTD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor, plan: Plan
                          ) -> torch.Tensor:
    """Stick-breaking scoring at default positions, no gradient, no positional terms, fp32: blocks of queries,
    each against blocks of its keys in reverse order (the nearest first), so that the products over the keys
    between are a running cumulative sum of softplus(z) = -log(1 - sigmoid(z)), computed in place (the sum carried
    from block to block; masks only in the blocks that hold hidden keys). A query's log-weight of a key is z minus
    that running sum, which only falls: once it is
    below SB_ZERO minus a bound of z (|q| |k| / sqrt(D)) for every query of the block, every farther key's weight
    is exactly 0 in fp32 and the block stops there (the stick is spent). The same weights as the "weights" path
    (tests/test_gated_attention.py); its cost falls with how fast a trained model spends its sticks."""
    if not (plan.contiguous and plan.modifiers == STICK_BREAKING):
        raise PlanError("the stickbreaking path scores plain stick-breaking at default positions only")
    T, S, D = q_BHTD.shape[2], k_BHSD.shape[2], q_BHTD.shape[-1]
    with torch.autocast(q_BHTD.device.type, enabled=False):
        q32 = q_BHTD.float() * D ** -0.5
        k_rev, v_rev = k_BHSD.flip(2).float(), v_BHSD.flip(2).float()  # key S - 1 - c at c
        z_bound_BH = q32.norm(dim=-1).amax(-1) * k_rev.norm(dim=-1).amax(-1)  # |z| <= |q| |k| / sqrt(D)
        parts = []
        for a in range(0, T, SB_BLOCK):
            b = min(T, a + SB_BLOCK)
            t, s = b - a, min(S, b)
            q_t = q32[:, :, a:b]
            acc_BHtD = q_t.new_zeros(*q_t.shape[:3], v_BHSD.shape[-1])
            wsum_BHt, used_BHt = q_t.new_zeros(q_t.shape[:3]), q_t.new_zeros(q_t.shape[:3])
            r_t = torch.arange(t, device=q_t.device)
            for c0 in range(0, s, SB_BLOCK):  # reversed columns c0..c1-1: keys s-1-c0 down to s-c1
                c1 = min(s, c0 + SB_BLOCK)
                keys = slice(S - s + c0, S - s + c1)
                z = q_t @ k_rev[:, :, keys].transpose(-1, -2)
                # column c holds key s-1-c, hidden from query a+r (a later key, or its own) where c <= s-1-a-r:
                # only in the blocks from c0 <= s-1-a (the first, at default positions); the others need no mask
                hidden_ts = (c0 + torch.arange(c1 - c0, device=z.device))[None, :] <= (s - 1 - a - r_t)[:, None] \
                    if c0 <= s - 1 - a else None
                if hidden_ts is not None:
                    z.masked_fill_(hidden_ts, 0.0)
                # -log(1 - sigmoid(z)) = softplus(z): the stick spent, summed from the nearest key on (the blocks
                # before carried in through the first column)
                used = F.softplus(z)
                if hidden_ts is not None:
                    used.masked_fill_(hidden_ts, 0.0)
                used[..., 0] += used_BHt
                used = used.cumsum_(-1)
                used_BHt = used[..., -1].clone()
                log_w = z.sub_(used)  # log sigmoid(z) + sum_{k between} log(1 - sigmoid(z_k)) = z - used
                # exp below SB_TINY is (nearly) subnormal, flushed to 0 while scoring (lenx.hardware's
                # denormals_flushed), and CPU's vectorised exp takes a slow path there (-inf included: 4-9x the
                # block's time, measured): those entries are set to 0 after an exp of clamped values
                zero = log_w < SB_TINY
                if hidden_ts is not None:
                    zero |= hidden_ts
                weights = log_w.clamp_(min=SB_TINY).exp_().masked_fill_(zero, 0.0)
                acc_BHtD += weights @ v_rev[:, :, keys]
                wsum_BHt += weights.sum(-1)
                if bool((z_bound_BH[..., None] - used_BHt < SB_ZERO).all()):
                    break  # every farther key's weight is 0 in fp32
            _ran("stickbreaking")
            parts.append(acc_BHtD + (1.0 - wsum_BHt)[..., None] * v_BHSD[:, :, a:b].float())
    return torch.cat(parts, dim=2).to(v_BHSD.dtype)


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


def attend_banded(q_BHTD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor, ctx: AttnContext, plan: Plan,
                  params: ModifierParams) -> torch.Tensor:
    """Scoring a distance bias with SSMax on CPU, default positions: per chunk of queries a..b-1, every logit
    c_i (q.k / sqrt(D) + b(i - j)) with c_i = s_h log(i + 1) folded into the queries. The near keys f..b-1 run the
    fused kernel with the Toeplitz view's rows scaled as the mask (exact); the far keys 0..f-1 without a mask:
    ALiBi (f = a, b = -m d = m (j - a) - m (i - a)) with one channel pair (c_i m_h).(j - a), the row term
    -c_i m_h (i - a) added to the block's logsumexp (both round at ulp(c m (a - j)) or ulp(c m (i - a)), where the
    weight has decayed by e^-c m (i - j) against the near keys'; a channel inside the chunk's own block would round
    at ulp(c m t) on its heaviest keys); a table constant from distance plan.band on (T5's last bucket: f = a -
    band + 1) on the scaled queries alone, c_i b_far added to its logsumexp. The blocks merge by their
    logsumexps (and the sinks rescale by the merged one)."""
    flash = cpu_flash()
    if flash is None or not isinstance(ctx, DistanceContext) or plan.band is None:
        raise PlanError("the banded path needs CPU's fused kernel with its logsumexp and a distance bias")
    B, H, T, D = q_BHTD.shape
    S = k_BHSD.shape[2]
    slopes_H = None if ctx.slopes_H is None else ctx.slopes_H.float()
    k_rev, v_rev = k_BHSD.flip(2), v_BHSD.flip(2)  # key S - 1 - c at c, as the Toeplitz view reads them
    parts = []
    for a in range(0, T, plan.rows):
        b = min(T, a + plan.rows)
        t = b - a
        c_Ht = ssmax_scale(params, plan.log_n_T[a:b])
        q_BHtD = q_BHTD[:, :, a:b].float() * (c_Ht[..., None] * D ** -0.5)
        f = a if slopes_H is not None else max(0, a - plan.band + 1)  # the near keys: f..b-1
        _ran("banded")
        with torch.autocast(q_BHTD.device.type, enabled=False):
            mask = scale_rows(toeplitz_view(ctx.bias_HR, a, t, b, torch.float32)[..., :b - f], c_Ht)
        blocks = [flash(q_BHtD, k_rev[:, :, S - b:S - f].float(), v_rev[:, :, S - b:S - f].float(), attn_mask=mask,
                        scale=1.0)]
        if f > 0 and slopes_H is not None:  # ALiBi's keys before the chunk: one channel pair, centred at a
            cm_Ht = c_Ht * slopes_H[:, None]
            q2 = torch.cat([cm_Ht[None, :, :, None].expand(B, H, t, 1), q_BHtD], -1)
            d_s = torch.arange(-f, 0, device=q_BHTD.device, dtype=torch.float32)
            k2 = torch.cat([d_s[None, None, :, None].expand(B, H, f, 1), k_BHSD[:, :, :f].float()], -1)
            out, lse = flash(q2, k2, F.pad(v_BHSD[:, :, :f].float(), (0, 1)), scale=1.0)
            row_Ht = -cm_Ht * torch.arange(t, device=q_BHTD.device, dtype=torch.float32)
            blocks.append((out[..., :D], lse + row_Ht))
        elif f > 0:  # keys at least plan.band from every query of the chunk: the table's last value
            out, lse = flash(q_BHtD, k_BHSD[:, :, :f].float(), v_BHSD[:, :, :f].float(), scale=1.0)
            blocks.append((out, lse + c_Ht * ctx.bias_HR[:, -1].float()[:, None]))
        out, lse = blocks[0]
        for o2, l2 in blocks[1:]:  # softmax over both blocks' keys: each block's output weighted by its share
            both = torch.logaddexp(lse, l2)
            out = out * (lse - both).exp()[..., None] + o2 * (l2 - both).exp()[..., None]
            lse = both
        if plan.modifiers.sinks:
            out = sink_rescale(out, lse, params.sink_H)
        parts.append(out.to(v_BHSD.dtype))
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


def positional_mask(pos: PositionalScheme, ctx: AttnContext, q_start: int | None, dtype: torch.dtype,
                    fast: bool = False) -> torch.Tensor:
    """The scheme's positional bias with -inf on future keys (zeros and -inf when it has none), (H or 1, T, S),
    in `dtype`. q_start: set for default positions (ctx's queries at q_start + arange(T), keys at arange(S)).
    fast: the plan lets the scheme evaluate its bias its own faster way (Plan.fast)."""
    with torch.autocast(ctx.q_pos_T.device.type, enabled=False):
        if q_start is not None and isinstance(ctx, DistanceContext):  # one vector of distances, no per-pair gather
            return toeplitz_mask(ctx.bias_HR, q_start, len(ctx.q_pos_T), len(ctx.k_pos_S), dtype)
        mask_HTS = pos.bias(ctx, q_start, dtype, fast)
        if mask_HTS is None:
            T, S = len(ctx.q_pos_T), len(ctx.k_pos_S)
            mask_HTS = causal(torch.zeros(1, T, S, device=ctx.q_pos_T.device), ctx.q_pos_T, ctx.k_pos_S)
    return mask_HTS.to(dtype)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype attention's matmuls run in: autocast's where it is on for x's device, else x's own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
