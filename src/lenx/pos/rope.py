"""Rotary position embedding (RoPE; Su et al. 2021, arXiv:2104.09864) with pluggable context-extension scaling.

The rotation uses the half-split layout of GPT-NeoX / Hugging Face Llama (`rotate_half`), so inverse frequencies
and scaling parameters mean exactly what they mean in HF transformers. Angles are computed in fp32 with autocast
off and the rotation happens in fp32 before casting back (torchtitan's rule: bf16 angles lose whole radians at
long positions).
"""

from __future__ import annotations

import torch

from lenx.errors import ConfigError
from lenx.pos.base import AttnContext, PositionalScheme
from lenx.pos.rope_scaling import rope_cache, rope_parameters


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x_BHTD: torch.Tensor, cos_TD: torch.Tensor, sin_TD: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos_TD.shape[-1] channels of x; the rest pass through (partial rotary, GPT-NeoX)."""
    r = cos_TD.shape[-1]
    x_rot, x_pass = x_BHTD[..., :r], x_BHTD[..., r:]
    xf = x_rot.float()
    out = (xf * cos_TD + rotate_half(xf) * sin_TD).to(x_BHTD.dtype)
    return torch.cat((out, x_pass), dim=-1) if x_pass.shape[-1] else out


class Scaling:
    """A RoPE scaling config bound to a rotary dim and base: scaling(seq_len) -> (inv_freq, attention factor).

    `config` is a dict {method, original_len, **params} from configs/pos/scaling/ (None: method "none").
    original_len is the length the frequencies were trained at (HF original_max_position_embeddings); null means
    this run's seq_len; set it when fine-tuning a model trained at a shorter length under a scaling.
    """

    def __init__(self, config: dict | None, *, rotary_dim: int, base: float, train_len: int) -> None:
        params = dict(config or {"method": "none"})
        self.method = params.pop("method", "none")
        self.original_len = params.pop("original_len", None) or train_len
        self.params, self.rotary_dim, self.base = params, rotary_dim, base
        self(self.original_len)  # validated once, at construction, before any training or scoring starts

    def __call__(self, seq_len: int) -> tuple[torch.Tensor, float]:
        return rope_parameters(self.method, head_dim=self.rotary_dim, base=self.base, train_len=self.original_len,
                               seq_len=seq_len, **self.params)

    def __repr__(self) -> str:
        return f"{self.method}(original_len={self.original_len}, {self.params})"


class RoPE(PositionalScheme):
    """q and k rotated by angle p * theta_i, so q_i . k_j depends on i - j only.

    `scaling` is a dict {method: ..., **params} from configs/pos/scaling/ (None or method "none": plain RoPE).
    With factor null, the scaling is recomputed for each sequence length T (s = T / original length).
    `rotary_fraction` < 1 rotates only the first fraction of each head's channels (GPT-NeoX, arXiv:2204.06745).
    """

    def __init__(self, *, base: float = 10000.0, scaling: dict | None = None, rotary_fraction: float = 1.0,
                 **dims) -> None:
        super().__init__(**dims)
        self.base = float(base)
        rot = int(self.head_dim * rotary_fraction)
        rot -= rot % 2
        if rot <= 0 or self.head_dim % 2:
            raise ConfigError(
                f"RoPE needs an even number of rotary channels: head_dim={self.head_dim}, "
                f"rotary_fraction={rotary_fraction} gives {int(self.head_dim * rotary_fraction)}"
            )
        self.rotary_dim = rot
        self.scaling = Scaling(scaling, rotary_dim=rot, base=self.base, train_len=self.train_len)

    @property
    def original_len(self) -> int:
        return self.scaling.original_len

    def context(self, q_pos_T, k_pos_S):
        inv_freq, attn_factor = self.scaling(int(q_pos_T.max()) + 1)
        cos_TF, sin_TF = rope_cache(q_pos_T, inv_freq.to(q_pos_T.device), attn_factor)
        return AttnContext(cos_TD=torch.cat((cos_TF, cos_TF), -1), sin_TD=torch.cat((sin_TF, sin_TF), -1))

    def rotate(self, q_BHTD, k_BHSD, ctx):
        return apply_rotary(q_BHTD, ctx.cos_TD, ctx.sin_TD), apply_rotary(k_BHSD, ctx.cos_TD, ctx.sin_TD)

    def extra_repr(self) -> str:
        return f"base={self.base}, rotary_dim={self.rotary_dim}, scaling={self.scaling}"
