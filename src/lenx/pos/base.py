"""The positional interface, and NoPE as its base class.

Every scheme enters attention at one (or more) of three points (the x-transformers taxonomy):
  embed(x, pos)          add to the token embeddings (absolute schemes: sinusoidal, learned);
  context(q_pos, k_pos)  positional state built ONCE per forward and shared by all layers (cos/sin for rotary
                         schemes, an additive logit bias for ALiBi/T5/KERPLE/FIRE, ...);
  rotate(q, k, ctx)      transform queries and keys per layer (RoPE, xPos).
Each hook defaults to "do nothing", so NoPE (Kazemnejad et al. 2023, arXiv:2305.19466) is this class itself.
Positions are absolute integer indices; relative schemes derive distances from them.
Shape letters: B batch, T queries, S keys, H heads, D head dim, C model width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class AttnContext:
    """What attention needs from the positional scheme for one forward pass (shared by all layers)."""

    cos_TD: torch.Tensor | None = None  # rotary cos, fp32, (T, D) (keys use the same positions as queries)
    sin_TD: torch.Tensor | None = None  # rotary sin, fp32, (T, D)
    bias_HTS: torch.Tensor | None = None  # additive logit bias for j <= i, (H, T, S); causal masking is added later


class PositionalScheme(nn.Module):
    """NoPE: no positional information at all; the causal mask alone orders the tokens.

    Subclasses receive the model's dimensions as keyword arguments and take their own hyperparameters from
    the config (`_partial_: true` in configs/pos/*.yaml). Tensors derived from config are non-persistent buffers,
    so a state_dict holds learned parameters only and a checkpoint reloads under another scaling.
    """

    def __init__(self, *, d_model: int, n_heads: int, head_dim: int, train_len: int) -> None:
        super().__init__()
        self.d_model, self.n_heads, self.head_dim, self.train_len = d_model, n_heads, head_dim, train_len

    def embed(self, x_BTC: torch.Tensor, pos_T: torch.Tensor) -> torch.Tensor:
        return x_BTC

    def context(self, q_pos_T: torch.Tensor, k_pos_S: torch.Tensor) -> AttnContext:
        return AttnContext()

    def rotate(self, q_BHTD: torch.Tensor, k_BHSD: torch.Tensor, ctx: AttnContext):
        return q_BHTD, k_BHSD

    def extra_repr(self) -> str:
        return f"train_len={self.train_len}"
