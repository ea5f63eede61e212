"""Scoring kernels that run keys in blocks and combine the blocks exactly (attention's plan sends them there; they
never re-route): "stickbreaking" (stick-breaking attention, Tan et al. 2025, arXiv:2410.17980: blocks of keys in
reverse order, the stick carried over and an exact early stop) and "banded" (scalable softmax, Nakanishi 2025,
arXiv:2501.19399, on ALiBi or T5: the near keys with a scaled mask, the far ones through the fused kernel without
one, merged by their logsumexps).
Shapes: B batch, T queries, t a chunk of them, S keys, s the keys a chunk reads, H heads, D head dim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from lenx.kernels import PlanError, _ran, cpu_flash, toeplitz_view
from lenx.modifiers import STICK_BREAKING, ModifierParams, scale_rows, sink_rescale, ssmax_scale
from lenx.pos.base import AttnContext
from lenx.pos.bias import DistanceContext

if TYPE_CHECKING:
    from lenx.attn_paths import Plan


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
