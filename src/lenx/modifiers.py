"""Attention modifiers: mechanisms of attention itself, composable with every positional scheme (config `attn`).

Scalable softmax (Nakanishi 2025, arXiv:2501.19399) and learned sinks (gpt-oss, transformers'
`modeling_gpt_oss.eager_attention_forward`): their description (`Modifiers`), which attention paths host each one
exactly (`HOSTS`, read by lenx.attention's plan), each layer's learned parameters (`ModifierParams`), and the
operations the paths apply (SSMax's per-query scale, the sinks' column).
Shapes: H heads, t queries (of a chunk), s keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lenx.errors import ConfigError
from lenx.pos.base import AttnContext


@dataclass(frozen=True)
class Modifiers:
    """Mechanisms that change attention itself, trained in, composable with every positional scheme (config
    `attn`; their learned parameters live in each layer's Attention module, hence in the state_dict):
    ssmax: scalable softmax (Nakanishi 2025, arXiv:2501.19399): softmax(s_h log(n) z), z the query's whole logit
      vector (q.k / sqrt(D) plus the scheme's terms), n the number of keys it sees, s_h one learned scalar per head
      initialised to 1 (OLMo-core PR #808, allenai/OLMo-core; the paper's Eq. on the softmax input).
    sinks: learned attention sinks as gpt-oss (transformers' modeling_gpt_oss.py, eager_attention_forward): one
      learned logit per head appended to every row, softmax over both, its column dropped; init N(0, 0.02), the
      model's initializer_range. Under both, the sink logit is not scaled by SSMax (it is no q.k term)."""

    ssmax: bool = False
    sinks: bool = False

    @property
    def any(self) -> bool:
        return self.ssmax or self.sinks

    @classmethod
    def from_config(cls, attn, where: str = "attn") -> Modifiers:
        """The modifiers of a config node `attn` ({ssmax: bool, sinks: bool}; None: none), checked: one line."""
        if attn is None:
            return cls()
        if not isinstance(attn, dict):
            raise ConfigError(f"{where} must be a mapping of ssmax / sinks to true or false, got {attn!r}")
        for key, value in attn.items():
            if key not in ("ssmax", "sinks"):
                raise ConfigError(f"{where}.{key} is not an attention modifier (ssmax, sinks)")
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.{key} must be true or false, got {value!r}")
        return cls(**attn)


NO_MODIFIERS = Modifiers()
# The paths that host each modifier exactly; `plan` never sends a modifier elsewhere, `attend` checks it.
HOSTS = {"ssmax": ("causal", "mask", "weights", "extended"), "sinks": ("mask", "weights", "extended")}


@dataclass(frozen=True)
class ModifierParams:
    """One layer's learned parameters of the plan's modifiers (None where off): s_h of SSMax, the sink logits."""

    ssmax_H: torch.Tensor | None = None
    sink_H: torch.Tensor | None = None


def hosts(path: str, modifiers: Modifiers) -> bool:
    """Whether `path` runs these modifiers exactly (HOSTS)."""
    return all(path in HOSTS[name] for name in ("ssmax", "sinks") if getattr(modifiers, name))


def visible_log_n(ctx: AttnContext) -> torch.Tensor:
    """log n of each query, n the keys at or before its position (i + 1 at default positions), fp32 (T,)."""
    keys_S = ctx.k_pos_S.sort().values
    return torch.searchsorted(keys_S, ctx.q_pos_T, right=True).float().log()


def ssmax_scale(params: ModifierParams, log_n_t: torch.Tensor) -> torch.Tensor:
    """SSMax's s_h log n per head and query, fp32 (H, t)."""
    return params.ssmax_H.float()[:, None] * log_n_t[None, :]


def scale_logits(logits: torch.Tensor, c_Ht: torch.Tensor) -> torch.Tensor:
    """Logits (..., H, t, s) times c per head and query (SSMax), hidden keys (-inf) kept hidden whatever c's
    sign and without nan (-inf * 0 at n = 1, where log n = 0; nor in c's gradient, as torch.where would give)."""
    hidden = logits == float("-inf")
    return (logits.masked_fill(hidden, 0.0) * c_Ht[..., None]).masked_fill(hidden, float("-inf"))


def sink_column(sink_H: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The sinks as one more column of logits shaped like `like` (..., H, t, s): (..., H, t, 1), fp32."""
    return sink_H.float()[:, None, None].expand(*like.shape[:-1], 1)


def modified_softmax(logits: torch.Tensor, c_Ht: torch.Tensor | None, params: ModifierParams | None,
                     mods: Modifiers) -> torch.Tensor:
    """softmax over the last dim of fp32 logits (-inf on hidden keys), SSMax's c_Ht (or None) scaling them and the
    sinks' column added and dropped as gpt-oss's eager_attention_forward; plain softmax without modifiers."""
    if mods.ssmax:
        logits = scale_logits(logits, c_Ht)
    if not mods.sinks:
        return logits.softmax(-1)
    return torch.cat([logits, sink_column(params.sink_H, logits)], dim=-1).softmax(-1)[..., :-1]
