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
from lenx.pos.rope_scaling import RopeScaling, rope_cache


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


class Rotary(PositionalScheme):
    """A scheme that rotates q and k by RoPE's frequencies, which a RoPE scaling (configs/pos/scaling/) rescales:
    RoPE and xPos. `frequencies(seq_len)` gives the (scaled) inverse frequencies and attention factor at a length.

    `rotary_fraction` < 1 rotates only the first fraction of each head's channels (GPT-NeoX, arXiv:2204.06745).
    `scaling` is a RopeScaling (Hydra instantiates the `scaling` node); None: the frequencies as trained. With its
    factor null, the scaling is recomputed for each sequence length (s = T / original length).
    """

    shift_invariant = True  # q_i.k_j turns by angles of i - j

    def __init__(self, *, base: float = 10000.0, scaling: RopeScaling | None = None, rotary_fraction: float = 1.0,
                 **dims) -> None:
        super().__init__(**dims)
        self.base = float(base)
        rot = int(self.head_dim * rotary_fraction)
        rot -= rot % 2
        if rot <= 0 or self.head_dim % 2:
            raise ConfigError(
                f"{type(self).__name__} needs an even number of rotary channels: head_dim={self.head_dim}, "
                f"rotary_fraction={rotary_fraction} gives {int(self.head_dim * rotary_fraction)}"
            )
        self.rotary_dim = rot
        self.scaling = RopeScaling() if scaling is None else scaling
        if not isinstance(self.scaling, RopeScaling):
            raise ConfigError(f"scaling must be a RoPE scaling (a configs/pos/scaling/ node with a _target_), "
                              f"got {type(scaling).__name__}")
        # The length the frequencies were trained at (HF original_max_position_embeddings): the scaling's
        # original_len when set (fine-tuning a model trained shorter), else this run's training length.
        self.original_len = self.scaling.original_len or self.train_len
        self.frequencies(self.original_len)  # validated once, at construction, before any training or scoring

    def frequencies(self, seq_len: int) -> tuple[torch.Tensor, float]:
        return self.scaling(self.rotary_dim, self.base, self.original_len, seq_len)

    def extra_repr(self) -> str:
        return (f"base={self.base}, rotary_dim={self.rotary_dim}, original_len={self.original_len}, "
                f"scaling={self.scaling}")


class RoPE(Rotary):
    """q and k rotated by angle p * theta_i, so q_i . k_j depends on i - j only."""

    rows_in_context = True  # `context` takes a row of positions per example (B, T)

    def context(self, q_pos_T, k_pos_S):
        if q_pos_T.dim() == 2:
            return self.rows_context(q_pos_T)
        inv_freq, attn_factor = self.frequencies(int(q_pos_T.max()) + 1)
        cos_TF, sin_TF = rope_cache(q_pos_T, inv_freq.to(q_pos_T.device), attn_factor)
        return AttnContext(q_pos_T=q_pos_T, k_pos_S=k_pos_S, cos_TD=torch.cat((cos_TF, cos_TF), -1),
                           sin_TD=torch.cat((sin_TF, sin_TF), -1))

    def rows_context(self, pos_BT):
        """Per-example positions in one context: cos/sin (B, 1, T, D), which `rotate` broadcasts over the heads.
        None where the rows' lengths give different frequencies (a scaling with factor null reads the length)."""
        lasts = (pos_BT.max(1).values + 1).unique().tolist()
        inv_freq, attn_factor = self.frequencies(int(lasts[-1]))
        for n in lasts[:-1]:
            other, factor = self.frequencies(int(n))
            if factor != attn_factor or not torch.equal(other, inv_freq):
                return None
        B, T = pos_BT.shape
        cos_NF, sin_NF = rope_cache(pos_BT.flatten(), inv_freq.to(pos_BT.device), attn_factor)
        cos_B1TD, sin_B1TD = (torch.cat((x, x), -1).view(B, 1, T, -1) for x in (cos_NF, sin_NF))
        # q_pos_T / k_pos_S: the first row, for the plan's T and S (RoPE adds no logit terms that read them)
        return AttnContext(q_pos_T=pos_BT[0], k_pos_S=pos_BT[0], cos_TD=cos_B1TD, sin_TD=sin_B1TD)

    def rotate(self, q_BHTD, k_BHSD, ctx):
        return apply_rotary(q_BHTD, ctx.cos_TD, ctx.sin_TD), apply_rotary(k_BHSD, ctx.cos_TD, ctx.sin_TD)
