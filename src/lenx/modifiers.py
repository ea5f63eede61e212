"""Attention modifiers: mechanisms of attention itself, composable with positional schemes (config `attn`, or
brought by a scheme: pos=fox, pos=stickbreaking, the per-layer hybrids' windows).

Scalable softmax (Nakanishi 2025, arXiv:2501.19399), learned sinks (gpt-oss, transformers'
`modeling_gpt_oss.eager_attention_forward`), FoX's forget gate (Lin et al. 2025, arXiv:2503.02130), stick-breaking
in place of softmax (Tan et al. 2025, arXiv:2410.17980) and a training-time sliding window: their description
(`Modifiers`), which attention paths host each one exactly (`HOSTS`, read by lenx.attention's plan), each layer's
learned parameters and inputs (`ModifierParams`), and the operations the paths apply.
Shapes: B batch, H heads, T queries, t queries (of a chunk), s keys.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lenx.errors import ConfigError
from lenx.pos.base import AttnContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Modifiers:
    """Mechanisms that change attention itself, trained in, composable with every positional scheme (config
    `attn`; their learned parameters live in each layer's Attention module, hence in the state_dict):
    ssmax: scalable softmax (Nakanishi 2025, arXiv:2501.19399): softmax(s_h log(n) z), z the query's whole logit
      vector (q.k / sqrt(D) plus the scheme's terms), n the number of keys it sees, s_h one learned scalar per head
      initialised to 1 (OLMo-core PR #808, allenai/OLMo-core; the paper's Eq. on the softmax input).
    sinks: learned attention sinks as gpt-oss (transformers' modeling_gpt_oss.py, eager_attention_forward): one
      learned logit per head appended to every row, softmax over both, its column dropped; init N(0, 0.02), the
      model's initializer_range. Under both, the sink logit is not scaled by SSMax (it is no q.k term).
    forget: FoX's forget gate (Lin et al. 2025, arXiv:2503.02130; zhixuan-lin/forgetting-transformer,
      ForgettingAttentionLayer with fgate_type "full"): logits + c_i - c_j, c the cumulative sum over tokens of
      log sigmoid(w_h.x + b_h), x the attention layer's input, one gate per head (`fgate`: Linear(C, H) with bias).
    stickbreaking: stick-breaking attention (Tan et al. 2025, arXiv:2410.17980; shawntan/stickbreaking-attention,
      sb_ref.py and its tests' ref_fwd): a_ij = sigmoid(z_ij) prod_{j<k<i} (1 - sigmoid(z_ik)) over the keys before
      the query (attend_current=False, the authors' default), z the whole logits; the remainder 1 - sum_j a_ij
      weighs the query's own value (o + rem v_i, as the authors' reference). No softmax: SSMax and sinks do not
      apply to it.
    selective: selective attention (Leviathan et al. 2025, arXiv:2410.02703, Section 3.3; no authors' code:
      x-transformers' `selective_attn`, lucidrains/x-transformers attend.py, is the public reference followed):
      every head's logits minus F_ij = sum over earlier queries k (j < k < i) of relu(z^0_kj), z^0 the first
      head's whole logits; the first token (key 0) and a query's own key are never masked.
    dape: DAPE (Zheng et al. 2024, arXiv:2405.14722; chuanyang-Zheng/DAPE `AliBi_DAPE`, `ParallelKerpleLog_DAPE`):
      logits x + a + MLP([x, a]) per query-key pair, x the content logits q.k / sqrt(D) of every head, a the
      scheme's positional bias (0 on future keys, as the authors' tril), the MLP Linear(2H, 32) -> LeakyReLU ->
      Linear(32, H) of each layer with PyTorch's default init (the authors' nn.Sequential `mlp2`).
    qk_norm, kv_shift, output_norm, output_gate: the "Pro" block of FoX (Lin et al. 2025, arXiv:2503.02130;
      zhixuan-lin/forgetting-transformer ForgettingAttentionLayer): RMSNorm of each head's q and k with a weight per
      channel (GroupRMSNorm, eps 1e-5) before the rotation; k and v each mixed with the previous token's by a
      data-dependent weight per head, alpha = sigmoid(Linear(C, H, no bias)(x)), k_t <- alpha_t k_{t-1} +
      (1 - alpha_t) k_t (ShiftLinear, k_{-1} = 0); RMSNorm of each head's output (eps 1e-6); the output times
      sigmoid(Linear(C, C, no bias)(x)) before the output projection (glu_linear). They act outside the attention
      kernel (every path hosts them).
    chunk: chunked attention (Llama 4's attention_chunk_size; transformers' chunked_overlay): query i sees the
      keys j <= i with j // chunk == i // chunk (by position); None: no chunks.
    window: a training-time sliding window (Beltagy et al. 2020, arXiv:2004.05150; Mistral's sliding_window): query
      i sees the keys at positions i - window < j <= i; None: every earlier key."""

    ssmax: bool = False
    sinks: bool = False
    forget: bool = False
    stickbreaking: bool = False
    selective: bool = False
    dape: bool = False
    qk_norm: bool = False
    kv_shift: bool = False
    output_norm: bool = False
    output_gate: bool = False
    window: int | None = None
    chunk: int | None = None

    @property
    def any(self) -> bool:
        return any(getattr(self, n) for n in FLAGS) or any(getattr(self, n) is not None for n in SIZES)

    @property
    def label(self) -> str:
        """How rows name a model trained with these modifiers, appended to its scheme: "+ssmax", "+window32"."""
        flags = "".join(f"+{n}" for n in FLAGS if getattr(self, n))
        return flags + "".join(f"+{n}{getattr(self, n)}" for n in SIZES if getattr(self, n) is not None)

    def merged(self, other: dict, where: str) -> Modifiers:
        """These modifiers with those a scheme brings (`other`: a scheme's `attention_at(layer)`), checked."""
        for n in SIZES:
            if other.get(n) is not None and getattr(self, n) is not None and other[n] != getattr(self, n):
                raise ConfigError(f"attn.{n}={getattr(self, n)} and {where}'s {n} {other[n]} disagree: set one of them")
        return Modifiers.from_config({**dataclasses.asdict(self), **{k: v for k, v in other.items()
                                                                      if v or k in SIZES and v is not None}}, where)

    @classmethod
    def from_config(cls, attn, where: str = "attn") -> Modifiers:
        """The modifiers of a config node `attn` ({ssmax, sinks, forget, stickbreaking: bool, window: int or
        null}; None: none), checked: one line."""
        if attn is None:
            return cls()
        if not isinstance(attn, dict):
            raise ConfigError(f"{where} must be a mapping of {', '.join(FIELDS)} to values, got {attn!r}")
        for key, value in attn.items():
            if key not in FIELDS:
                raise ConfigError(f"{where}.{key} is not an attention modifier ({', '.join(FIELDS)})")
            if key in SIZES:
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                    raise ConfigError(f"{where}.{key} must be a positive number of tokens or null, got {value!r}")
            elif not isinstance(value, bool):
                raise ConfigError(f"{where}.{key} must be true or false, got {value!r}")
        if attn.get("stickbreaking") and (attn.get("ssmax") or attn.get("sinks")):
            raise ConfigError(f"{where}: stick-breaking attention has no softmax, so ssmax and sinks (which act on "
                              "a softmax) do not apply to it")
        return cls(**attn)


FIELDS = tuple(f.name for f in dataclasses.fields(Modifiers))
SIZES = ("window", "chunk")  # the modifiers that are a number of tokens (None: off)
FLAGS = tuple(n for n in FIELDS if n not in SIZES)  # the modifiers that are on or off
LAYER_OPTIONS = ("qk_norm", "kv_shift", "output_norm", "output_gate")  # outside the kernel (FoX's "Pro" block)
STICK_BREAKING = Modifiers(stickbreaking=True)  # plain stick-breaking (its scoring path, lenx.attention)
NO_MODIFIERS = Modifiers()
# The paths that host each modifier exactly; `plan` never sends a modifier elsewhere, `attend` checks it.
# SSMax: q scaled on "causal" (logits q.k alone), the chunk's mask rows and q on "toeplitz" and "chunk_mask"; FoX's gate as exact
# channels (c_i, 1).(1, -c_j) of q and k on "features" (fp32 on CPU, as ALiBi's channels).
HOSTS = {"ssmax": ("causal", "toeplitz", "banded", "chunk_mask", "mask", "weights", "extended"), "sinks": ("mask", "weights", "extended"),
         "forget": ("features", "mask", "weights", "extended", "flex"), "stickbreaking": ("weights", "stickbreaking"),
         "selective": ("mask", "weights"), "dape": ("mask", "weights"),
         "window": ("mask", "weights", "extended", "flex"), "chunk": ("mask", "weights", "extended", "flex")}
# ... and the paths that host a modifier where the fused kernel gives each row's logsumexp (CPU scoring: no
# gradient, no dropout): the sinks then rescale the fused output by sigmoid(lse - s_h) (`sink_rescale`)
LSE_HOSTS = {"sinks": ("causal", "features", "toeplitz", "banded", "chunk_mask")}


@dataclass(frozen=True)
class ModifierParams:
    """One layer's learned parameters and inputs of the plan's modifiers (None where off): s_h of SSMax, the sink
    logits, FoX's cumulative log forget gate c (B, H, T) of this forward."""

    ssmax_H: torch.Tensor | None = None
    sink_H: torch.Tensor | None = None
    log_forget_BHT: torch.Tensor | None = None
    dape: tuple[torch.Tensor, ...] | None = None  # DAPE's MLP: w1 (2H, W), b1 (W,), w2 (W, H), b2 (H,)


def hosts(path: str, modifiers: Modifiers, lse: bool = False) -> bool:
    """Whether `path` runs these modifiers exactly (HOSTS; LSE_HOSTS too where `lse`: the fused kernel's row
    logsumexp is at hand)."""
    active = [n for n in HOSTS if (getattr(modifiers, n) is not None if n in SIZES else getattr(modifiers, n))]
    # (the FoX "Pro" options, LAYER_OPTIONS, act on q, k, v and the output outside the kernel: no path to host)
    return all(path in HOSTS[name] or lse and path in LSE_HOSTS.get(name, ()) for name in active)


def group_rms_norm(x_BTC: torch.Tensor, weight_C: torch.Tensor, n_heads: int, eps: float) -> torch.Tensor:
    """RMSNorm of each head's channels of x (B, T, C), times a weight per channel: FoX's GroupRMSNorm (fla's
    group_norm_fn with is_rms_norm), in fp32, cast back."""
    B, T, C = x_BTC.shape
    xf = x_BTC.float().view(B, T, n_heads, C // n_heads)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf.view(B, T, C) * weight_C.float()).to(x_BTC.dtype)


def token_shift(x_BTC: torch.Tensor, alpha_BTH: torch.Tensor, n_heads: int) -> torch.Tensor:
    """alpha_t x_{t-1} + (1 - alpha_t) x_t per head (x_{-1} = 0): FoX's ShiftLinear after its projection."""
    B, T, C = x_BTC.shape
    x = x_BTC.view(B, T, n_heads, C // n_heads)
    prev = F.pad(x, (0, 0, 0, 0, 1, -1))  # x_{t-1}, zeros at t = 0
    a = alpha_BTH[..., None].float()
    return (prev.float() * a + x.float() * (1.0 - a)).to(x_BTC.dtype).view(B, T, C)


def check_extended(extension: str, modifiers: Modifiers) -> None:
    """Refuse, in one line, an extension that remaps or windows keys (path "extended") on a model whose modifiers
    that path cannot host (stick-breaking, selective attention)."""
    if not hosts("extended", modifiers):
        raise ConfigError(f"extension {extension} does not apply to a model trained with {modifiers.label[1:]}: "
                          "it remaps or windows the logits of a softmax over each query's own keys, which "
                          "stick-breaking has not, and selective attention's F sums over all earlier queries")


def visible_log_n(ctx: AttnContext, window: int | None = None, chunk: int | None = None) -> torch.Tensor:
    """log n of each query, n the keys it sees: at or before its position (i + 1 at default positions), within
    the window and the chunk where there are ones, fp32 (T,)."""
    keys_S = ctx.k_pos_S.sort().values
    n_T = torch.searchsorted(keys_S, ctx.q_pos_T, right=True)
    if window is not None:
        n_T = n_T - torch.searchsorted(keys_S, ctx.q_pos_T - window, right=True)
    if chunk is not None:  # keys before the query's chunk
        n_T = n_T - torch.searchsorted(keys_S, ctx.q_pos_T // chunk * chunk, right=False)
    return n_T.float().log()


def forget_bias(params: ModifierParams, q_start: int, t: int, keys: torch.Tensor | int) -> torch.Tensor:
    """FoX's decay bias c_i - c_j for queries q_start..q_start+t-1 and the keys (the first `keys`, or those indexed),
    fp32 (B, H, t, s); c the cumulative log forget gate (the authors' log_lambda)."""
    c_BHT = params.log_forget_BHT
    c_k = c_BHT[:, :, :keys] if isinstance(keys, int) else c_BHT[:, :, keys]
    return c_BHT[:, :, q_start:q_start + t, None] - c_k[:, :, None, :]


def window_hidden(q_pos_t: torch.Tensor, k_pos_s: torch.Tensor, window: int | None, chunk: int | None = None
                  ) -> torch.Tensor:
    """Keys outside each query's sliding window (i - j >= window) or chunk (j // chunk != i // chunk), bool
    (t, s) (all False where both are None)."""
    hidden = torch.zeros(len(q_pos_t), len(k_pos_s), dtype=torch.bool, device=q_pos_t.device)
    if window is not None:
        hidden |= q_pos_t[:, None] - k_pos_s[None, :] >= window
    if chunk is not None:
        hidden |= q_pos_t[:, None] // chunk != k_pos_s[None, :] // chunk
    return hidden


def selective_penalty(z0_Bts: torch.Tensor, ctx: AttnContext, carry_BS: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective attention's F for one chunk of queries (in order: `carry_BS` holds the sum of relu(z^0) over every
    earlier chunk's queries, (B, S) over all keys) and the carry for the next chunk. z0: the first head's fp32
    logits for the chunk (B, t, s), -inf on hidden keys. As x-transformers' selective_attn: relu, the first key's
    column and each query's own key zeroed, shifted one query down, cumulative over queries. F: (B, t, s)."""
    s = z0_Bts.shape[-1]
    own_ts = ctx.k_pos_S[None, :] == ctx.q_pos_T[:, None]
    gate = F.relu(z0_Bts.masked_fill(own_ts | (z0_Bts == float("-inf")), 0.0))
    gate = torch.cat([gate[..., :1] * 0.0, gate[..., 1:]], dim=-1)  # the first token is never masked
    before = F.pad(gate, (0, 0, 1, -1)).cumsum(-2)  # earlier queries of this chunk
    F_Bts = carry_BS[:, None, :s] + before
    return F_Bts, carry_BS + F.pad(gate.sum(-2), (0, carry_BS.shape[-1] - s))


DAPE_WIDTH = 32  # the authors' mlp_width (AliBi_DAPE's default, their configs' mlp_width)


def dape_term(x_BHts: torch.Tensor, a_Hts: torch.Tensor, mlp: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """DAPE's MLP([x, a]) over the heads of each pair, fp32 (B, H, t, s): x the content logits, a the positional
    bias (future keys 0), concatenated over heads (x first, as the authors' torch.cat((x, tile(a)), dim=1))."""
    w1, b1, w2, b2 = (p.float() for p in mlp)
    a_BHts = a_Hts.expand(x_BHts.shape[0], x_BHts.shape[1], *x_BHts.shape[2:])
    feats = torch.cat([x_BHts, a_BHts], dim=1).permute(0, 2, 3, 1)  # (B, t, s, 2H)
    return (F.leaky_relu(feats @ w1 + b1) @ w2 + b2).permute(0, 3, 1, 2)


def dape_mask(x_BHts: torch.Tensor, mask_Hts: torch.Tensor, mlp: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The chunk's mask plus DAPE's MLP([x, a]), fp32 (B, H, t, s), a the mask with its hidden keys (-inf) at 0, as
    the authors compute it (`dape_term`: a concatenation and two matmuls): the float-mask path, whose fused kernel
    adds q.k itself."""
    a_Hts = mask_Hts.float().masked_fill(mask_Hts == float("-inf"), 0.0)
    return mask_Hts.float() + dape_term(x_BHts, a_Hts, mlp)


def dape_logits(x_BHts: torch.Tensor, mask_Hts: torch.Tensor, mlp: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The chunk's whole logits x + a + MLP([x, a]) (hidden keys -inf), fp32 (B, H, t, s): the weights path's. Scoring
    on CPU over DAPE_FUSED_KEYS keys or more, one compiled pointwise kernel (`dape_fused`); else `dape_mask` + x."""
    if dape_fuses(x_BHts.device.type, torch.is_grad_enabled(), x_BHts.shape[-1]) and mask_Hts.dim() == 3:
        out = dape_fused(x_BHts, mask_Hts, mlp)
        if out is not None:
            return out
    return x_BHts + dape_mask(x_BHts, mask_Hts, mlp)


# DAPE's MLP costs 4-5x the fused attention it modifies when run as the authors run it (a (B, t, s, 2H) concatenation
# and two matmuls of inner size 2H and 32: memory-bound, the (B, t, s, 32) hidden layer written and read back). As
# one pointwise kernel (each pair's 2H inputs, 32 hidden units and H outputs in registers) it reads 2H planes and
# writes H: Inductor (torch.compile) generates it on CPU from the unrolled form below, its fusion limits raised so
# that nothing in between is written. Scoring only (no gradient) on CPU, over chunks of DAPE_FUSED_KEYS keys or more
# (long contexts; the tests' short ones keep the eager form): the first call compiles (~1-2 minutes on 2 cores,
# then cached on disk by Inductor); a failure to compile (no C++ compiler) falls back to `dape_term` with one warning.
DAPE_FUSED_KEYS = 512
DAPE_FUSED: dict = {"on": True, "fn": None}
# Inductor's C++ is compiled with -ffp-contract=off by default: every w * x + acc a multiply and an add. Contracted
# into fused multiply-adds (one rounding instead of two), the kernel ran 4.1 -> 2.9 ms over 32 x 8192 pairs.
_DAPE_INDUCTOR = {"max_fusion_size": 100_000, "realize_opcount_threshold": 100_000, "realize_reads_threshold": 100_000,
                  "realize_acc_reads_threshold": 100_000, "cpp.enable_floating_point_contract_flag": "fast"}


def dape_fuses(device: str, grad: bool, keys: int) -> bool:
    """Whether DAPE's MLP runs as the compiled kernel here: CPU scoring over DAPE_FUSED_KEYS keys or more,
    compiling not failed before."""
    return DAPE_FUSED["on"] and device == "cpu" and not grad and keys >= DAPE_FUSED_KEYS


def dape_unrolled(x_BHts: torch.Tensor, mask_Hts: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor,
                  w2: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """`dape_logits`'s value written per hidden unit and head (what Inductor fuses into one kernel): pre_m = b1_m +
    sum_h w1[h, m] x_h + w1[H + h, m] a_h, out_h = x_h + mask_h + b2_h + sum_m w2[m, h] leaky_relu(pre_m)."""
    H = x_BHts.shape[1]
    a_Hts = mask_Hts.masked_fill(mask_Hts == float("-inf"), 0.0)
    xs, avs, outs = [x_BHts[:, h] for h in range(H)], [a_Hts[h] for h in range(H)], [None] * H
    for m in range(w1.shape[1]):
        pre = b1[m] + xs[0] * w1[0, m]
        for h in range(1, H):
            pre = pre + xs[h] * w1[h, m]
        for h in range(H):
            pre = pre + avs[h] * w1[H + h, m]
        act = torch.maximum(pre, pre * 0.01)  # leaky_relu (slope 0.01 < 1): two operations, not three
        outs = [act * w2[m, h] if o is None else o + act * w2[m, h] for h, o in enumerate(outs)]
    return torch.stack([xs[h] + mask_Hts[h] + b2[h] + o for h, o in enumerate(outs)], dim=1)


def dape_fused(x_BHts: torch.Tensor, mask_Hts: torch.Tensor, mlp: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
    """`dape_unrolled` compiled (one kernel, dynamic shapes: every chunk's size), or None where it cannot be."""
    try:  # (an older torch may refuse an option: the same fallback)
        if DAPE_FUSED["fn"] is None:
            log.info("lenx: compiling DAPE's MLP kernel (its first use on this machine takes ~1-2 minutes; Inductor "
                     "then reads it from its disk cache)")
            DAPE_FUSED["fn"] = torch.compile(dape_unrolled, dynamic=True, options=_DAPE_INDUCTOR)
        return DAPE_FUSED["fn"](x_BHts.float(), mask_Hts.float(), *(p.float() for p in mlp))
    except Exception as e:  # noqa: BLE001  (Inductor's failures have no common type; the eager form computes the same)
        DAPE_FUSED["on"] = False
        warnings.warn(f"lenx: DAPE's MLP could not be compiled ({type(e).__name__}: {str(e)[:200]}); scoring "
                      "runs it as the authors' matmuls (slower)", stacklevel=2)
        return None


def stick_breaking(logits: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stick-breaking weights and remainder of fp32 logits (..., t, s), `hidden` the keys a query does not see (its
    own position included: attend_current=False): a_ij = sigmoid(z_ij) prod over visible k between j and i of
    (1 - sigmoid(z_ik)), in log space as sb_ref.py (log_z + the reverse cumulative sum of log_beta, here a suffix
    sum in O(s) instead of the reference's einsum with a triangular matrix). Returns (a, 1 - sum_j a_ij)."""
    z = logits.masked_fill(hidden, 0.0)
    log_beta = F.logsigmoid(-z).masked_fill(hidden, 0.0)
    # log a_ij = log sigmoid(z_ij) + sum_{j<k<i} log_beta_ik = z_ij + sum_{k>=j} log_beta_ik (log sigmoid(z) =
    # z + log sigmoid(-z)): the suffix sums over the visible keys, one logsigmoid and one exp per pair
    suffix = log_beta.flip(-1).cumsum(-1).flip(-1)
    weights = (z + suffix).masked_fill(hidden, float("-inf")).exp()
    return weights, 1.0 - weights.sum(-1)


def ssmax_scale(params: ModifierParams, log_n_t: torch.Tensor) -> torch.Tensor:
    """SSMax's s_h log n per head and query, fp32 (H, t)."""
    return params.ssmax_H.float()[:, None] * log_n_t[None, :]


def scale_logits(logits: torch.Tensor, c_Ht: torch.Tensor) -> torch.Tensor:
    """Logits (..., H, t, s) times c per head and query (SSMax), hidden keys (-inf) kept hidden whatever c's
    sign and without nan (-inf * 0 at n = 1, where log n = 0; nor in c's gradient, as torch.where would give)."""
    hidden = logits == float("-inf")
    return (logits.masked_fill(hidden, 0.0) * c_Ht[..., None]).masked_fill(hidden, float("-inf"))


def scale_rows(mask: torch.Tensor, c_Ht: torch.Tensor) -> torch.Tensor:
    """`scale_logits` of a mask (..., H, t, s) no other code reads afterwards: in place where it is contiguous (no
    row shares memory with another, unlike the strided views of lenx.kernels), one pass; the rows whose c is not
    positive (-inf * c would not stay -inf) by `scale_logits`. Under a gradient, `scale_logits` throughout (c's
    gradient would read the -inf entries: 0 * -inf = nan)."""
    if torch.is_grad_enabled() and (mask.requires_grad or c_Ht.requires_grad):
        return scale_logits(mask, c_Ht)
    bad_Ht = c_Ht <= 0
    fix = scale_logits(mask[..., bad_Ht, :], c_Ht[bad_Ht]) if bool(bad_Ht.any()) else None  # (..., n, s)
    out = mask.mul_(c_Ht[..., None]) if mask.is_contiguous() else mask * c_Ht[..., None]
    if fix is not None:
        out[..., bad_Ht, :] = fix
    return out


def sink_column(sink_H: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The sinks as one more column of logits shaped like `like` (..., H, t, s): (..., H, t, 1), fp32."""
    return sink_H.float()[:, None, None].expand(*like.shape[:-1], 1)


def sink_rescale(out_BHtD: torch.Tensor, lse_BHt: torch.Tensor, sink_H: torch.Tensor) -> torch.Tensor:
    """A softmax's output with the sinks' column added to its denominator, from the output without it and each
    row's logsumexp: sum_j e^z_j v_j / (Z + e^s) = out Z / (Z + e^s) = out sigmoid(lse - s), fp32 factor."""
    factor_BHt = torch.sigmoid(lse_BHt.float() - sink_H.float()[:, None])
    return out_BHtD * factor_BHt[..., None].to(out_BHtD.dtype)


def forget_channels(c_BHT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FoX's c_i - c_j as channels of q and k: (c_i, 1) . (1, -c_j), fp32 (B, H, T, 2) each. Summed first and in
    order, c_i + (-c_j) rounds once, as the mask path's c_i - c_j."""
    ones = torch.ones_like(c_BHT)
    return torch.stack([c_BHT, ones], -1), torch.stack([ones, -c_BHT], -1)


def modified_softmax(logits: torch.Tensor, c_Ht: torch.Tensor | None, params: ModifierParams | None,
                     mods: Modifiers) -> torch.Tensor:
    """softmax over the last dim of fp32 logits (-inf on hidden keys), SSMax's c_Ht (or None) scaling them and the
    sinks' column added and dropped as gpt-oss's eager_attention_forward; plain softmax without modifiers."""
    if mods.ssmax:
        logits = scale_logits(logits, c_Ht)
    if not mods.sinks:
        return logits.softmax(-1)
    return torch.cat([logits, sink_column(params.sink_H, logits)], dim=-1).softmax(-1)[..., :-1]
