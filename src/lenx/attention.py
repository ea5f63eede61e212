"""How attention runs for one forward pass: the plan, decided once, and the kernels it drives.

The positional scheme owns the positional context (`pos.context`: positions, cos/sin, tables; `pos.bias`: the logit
terms of positions alone). Attention owns the plan (`plan`): the path, the queries per chunk, the keys each chunk
reads, the mask's dtype, and the mask itself when one chunk holds it (built once per forward, or once per layer for
a bias with a table per layer). The plan is decided before any kernel runs, from everything that decides it: the
scheme, the positions, the device, whether a gradient is needed, the dropout, and the `attention` setting
(`sdpa`: the fastest exact path; `flex`: FlexAttention for a bias of the distance; `reference`: the float-mask and
explicit-softmax paths the fast ones replaced, for tests and benchmarks). `attend` executes the plan and never
re-routes: a kernel that cannot run where the plan sent it raises `PlanError` (a planning bug, caught by
tests/test_attention_paths.py, which reads the kernels that ran from `traced()`). This module holds the plan, the
dispatch and the reference paths ("mask", "weights"); the other paths' kernels are in lenx.attn_paths (with the
`Plan` record) and lenx.blockwise ("stickbreaking", "banded").
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

import dataclasses

import torch
import torch.nn.functional as F

from lenx.attn_paths import (  # noqa: F401  (public here too: attention.Plan, attention.attend_features, ...)
    Plan,
    attend_chunk_masks,
    attend_extended,
    attend_features,
    attend_flex,
    attend_toeplitz,
    attend_with_values,
    channels_exact,
    compiled_flex,
    far_form,
    fused,
    rotate_at,
)
from lenx.blockwise import SB_BLOCK, attend_banded, attend_stick_breaking  # noqa: F401  (public here too)
from lenx.extensions import Extension
from lenx.kernels import (  # noqa: F401  (public here too)
    PlanError,
    Workspace,
    _ran,
    cpu_flash,
    split_slopes,
    toeplitz_mask,
    toeplitz_view,
    traced,
)
from lenx.modifiers import (  # noqa: F401  (public here too: attention.Modifiers, ...)
    DAPE_WIDTH,
    FIELDS,
    HOSTS,
    NO_MODIFIERS,
    STICK_BREAKING,
    ModifierParams,
    Modifiers,
    check_extended,
    dape_fuses,
    dape_logits,
    dape_mask,
    dape_term,
    forget_bias,
    forget_channels,
    group_rms_norm,
    hosts,
    modified_softmax,
    scale_logits,
    scale_rows,
    selective_penalty,
    sink_column,
    sink_rescale,
    ssmax_scale,
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
# 2^25 (results/benchmarks/mechanisms_35/README.md, "Fourth round"); smaller chunks lost to their per-chunk overhead (2^18: KERPLE
# with SSMax 1.9x slower than 2^20), and the unscaled Toeplitz view (nothing written) ran best at 2^25.
CPU_WRITTEN_LOGITS = 1 << 21


ATTENTION = ("sdpa", "flex", "reference")  # the `attention` setting (config, eval.attention)
PATHS = ("causal", "features", "toeplitz", "banded", "flex", "chunk_mask", "chunk_values", "mask", "weights", "extended",
         "stickbreaking")


def for_layer(plan: Plan, pos: PositionalScheme, ctx: AttnContext) -> Plan:
    """The plan for ctx's layer: the whole mask built here when one chunk holds it, kept from the layer before
    unless the bias differs per layer."""
    if not plan.whole or (plan.mask_HTS is not None and not plan.per_layer):
        return plan
    return dataclasses.replace(plan, mask_HTS=positional_mask(pos, ctx, 0 if plan.contiguous else None,
                                                              plan.dtype, plan.fast))


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
    # DAPE's MLP as the compiled kernel: CPU scoring over DAPE_FUSED_KEYS keys or more (lenx.modifiers.dape_fused)
    fused_dape = modifiers.dape and dape_fuses(device, grad, S)
    if modifiers.any and not hosts(path, modifiers, lse):
        # The fast paths hold a bias that cannot be scaled per query (a strided Toeplitz view, FlexAttention's
        # score_mod, ALiBi's channels: exact only unscaled) or a fused kernel whose normaliser is out of reach
        # (sinks, where it gives no logsumexp): the general path, which builds each chunk's logits, runs the modifiers exactly
        # (stick-breaking: the explicit path, its weights are no softmax)
        path = "weights" if pos.adds_values or modifiers.stickbreaking else "mask"
        if fused_dape:
            path = "weights"  # the chunk's content logits are built for the MLP anyway: softmax them, no recompute
    exact = pos.adds_logits or pos.adds_values or modifiers.stickbreaking
    # DAPE's MLP holds DAPE_WIDTH values per pair (2H inputs): fewer queries per chunk; as the compiled kernel
    # (CPU scoring, lenx.modifiers.dape_fused) only its 2H input planes
    per_pair = pos.n_heads
    fused_dape = fused_dape and path == "weights"  # (the mask path, attention=reference: the authors' form)
    if modifiers.dape:
        per_pair = 2 * pos.n_heads if fused_dape else pos.n_heads * max(1, 2 * DAPE_WIDTH // pos.n_heads)
    writes = path in ("mask", "weights", "chunk_mask", "chunk_values") or (path == "toeplitz" and modifiers.ssmax)
    # the scheme's own size on its fast paths (FIRE: larger chunks, fewer of its per-chunk searches)
    written = (pos.cpu_chunk_logits if fast else None) or CPU_WRITTEN_LOGITS
    budget = min(CHUNK_LOGITS, written) if writes and device == "cpu" and not grad else CHUNK_LOGITS
    whole = path in ("mask", "weights") and pos.n_heads * T * S <= CHUNK_LOGITS
    # a bias of positions alone with its own chunk mask (FIRE), on the general path while scoring at default positions
    chunk_bias = path in ("mask", "weights") and pos.has_chunk_mask and pos.adds_bias and not pos.adds_logits \
        and not pos.adds_values and fast and not grad and contiguous and not whole
    return Plan(path=path, rows=max(1, budget // (batch * per_pair * S)), contiguous=contiguous,
                dtype=torch.float32 if exact else dtype, whole=whole, chunk_bias=chunk_bias,
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


def learns(ctx: AttnContext) -> bool:
    """Whether a gradient flows into the positional context (a learned bias while training)."""
    return any(isinstance(v, torch.Tensor) and v.requires_grad for v in vars(ctx).values())


def increasing(pos_T: torch.Tensor) -> bool:
    """Strictly increasing positions (every train-time mode draws them so): SDPA's causal mask by index is then
    the causal mask by position."""
    return len(pos_T) < 2 or bool((pos_T[1:] > pos_T[:-1]).all())


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


def attend_general(q_BHTD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor, pos: PositionalScheme,
                   ctx: AttnContext, plan: Plan, drop: float, params: ModifierParams | None = None) -> torch.Tensor:
    """The reference paths: chunks of queries, each with its float mask (bias + score terms), through SDPA
    ("mask") or an explicit softmax whose weights the value terms read ("weights")."""
    T, S = q_BHTD.shape[2], k_BHSD.shape[2]
    parts = {}
    # selective attention: the sum of relu(z^0) over the queries of the chunks before, carried in query order
    carry = {"BS": q_BHTD.new_zeros(q_BHTD.shape[0], S, dtype=torch.float32)} if plan.modifiers.selective else None
    # A bias scheme's own chunk mask (FIRE's: one pass over the pairs per head instead of a log, bucketize and
    # gather per pair; the same values, tested) built in one reused workspace (plan.chunk_bias). The largest chunk
    # first where no carry needs query order: the smaller ones reuse its freed buffers (taken in query order,
    # each larger chunk allocated afresh: at 8192 tokens the peak was 1.26-1.34x RoPE's instead of 1.08-1.13x)
    work = Workspace() if plan.chunk_bias else None
    starts = range(0, T, plan.rows)
    for a in (starts if carry is not None else reversed(starts)):
        b = min(T, a + plan.rows)
        # Default positions: keys past the chunk's last query are future keys of all its queries; leave them out
        # (on average this halves a long input's attention work).
        s = min(S, b) if plan.contiguous else S
        q_BHtD, k_BHsD, v_BHsD, chunk = q_BHTD[:, :, a:b], k_BHSD[:, :, :s], v_BHSD[:, :, :s], ctx.rows(a, b).keys(s)
        mask_Hts = None if plan.mask_HTS is None else plan.mask_HTS[:, a:b, :s]
        if work is not None:
            if s != b:  # (as attend_chunk_masks: the plan sent a chunk the scheme's mask does not describe)
                raise PlanError(f"plan.chunk_bias: queries {a}..{b - 1} over {s} keys are not a chunk at default "
                                "positions")
            with torch.autocast(q_BHTD.device.type, enabled=False):
                mask_Hts = pos.chunk_mask(q_BHtD.float(), k_BHsD.float(), chunk, work)[1][0]
        parts[a] = attend_rows(q_BHtD, k_BHsD, v_BHsD, pos, chunk, plan, mask_Hts, a, drop, params, carry)
    return torch.cat([parts[a] for a in sorted(parts)], dim=2)


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
        has_content = False  # the weights path's mask_Hts holds the whole logits (q.k / sqrt(D), content terms)
        if mods.dape:  # + MLP([x, a]): x the content logits (with the scheme's content terms), a the bias
            # q scaled before the product (t x D values, not t x s logits): the same up to one rounding
            x_BHts = (q_BHtD.float() * q_BHtD.shape[-1] ** -0.5) @ k_BHsD.float().transpose(-1, -2)
            x_BHts = x_BHts if extra is None else x_BHts + extra
            if plan.path == "weights":  # x + a + MLP: the logits are built for the MLP anyway, not recomputed
                mask_Hts, has_content, extra = dape_logits(x_BHts, mask_Hts, params.dape), True, None
            else:
                mask_Hts = dape_mask(x_BHts, mask_Hts, params.dape)
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
        logits = mask_Hts if has_content else \
            q_BHtD.float() @ k_BHsD.float().transpose(-1, -2) / q_BHtD.shape[-1] ** 0.5 + mask_Hts
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
