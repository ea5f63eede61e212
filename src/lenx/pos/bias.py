"""Schemes that add a bias to the attention logits, built once per forward from absolute positions."""

from __future__ import annotations

import math

import torch

from lenx.pos.base import AttnContext, PositionalScheme


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi head slopes (Press et al. 2022, arXiv:2108.12409), fp32, shape (n_heads,).

    For n a power of two: the geometric sequence starting at 2^(-8/n) with that same ratio. Otherwise, as the
    paper's reference code does: the slopes of the closest lower power of two, then every other slope of the
    next power of two, until n slopes.
    """
    if n_heads <= 0:
        raise ValueError(f"n_heads must be positive, got {n_heads}")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = power_of_two(n_heads)
    else:
        lower = 2 ** math.floor(math.log2(n_heads))
        slopes = power_of_two(lower) + power_of_two(2 * lower)[0::2][: n_heads - lower]
    return torch.tensor(slopes, dtype=torch.float32)


class ALiBi(PositionalScheme):
    """Linear bias -m_h * (i - j) on the logit of query i and key j <= i; no embeddings (arXiv:2108.12409)."""

    def __init__(self, **dims) -> None:
        super().__init__(**dims)
        self.register_buffer("slopes_H", alibi_slopes(self.n_heads), persistent=False)

    def context(self, q_pos_T, k_pos_S):
        distance_TS = (q_pos_T[:, None] - k_pos_S[None, :]).to(torch.float32)  # i - j, >= 0 where attended
        return AttnContext(bias_HTS=-self.slopes_H[:, None, None] * distance_TS)
