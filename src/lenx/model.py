"""A small pre-LN decoder-only transformer with a pluggable positional scheme.

Shapes: B batch, T sequence (queries), S keys, H heads, D head dim, C model width, V vocabulary.
The model never limits the input length: only a learned position table may refuse a position (OutOfRangeError).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lenx.errors import ConfigError
from lenx.pos.base import AttnContext, PositionalScheme


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = dropout

    def forward(self, x_BTC: torch.Tensor, pos: PositionalScheme, ctx: AttnContext, mask: torch.Tensor | None):
        B, T, C = x_BTC.shape
        q_BHTD, k_BHTD, v_BHTD = self.qkv(x_BTC).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q_BHTD, k_BHTD = pos.rotate(q_BHTD, k_BHTD, ctx)
        drop = self.dropout if self.training else 0.0
        if mask is None:  # no bias: SDPA's causal fast path, no materialised mask
            y_BHTD = F.scaled_dot_product_attention(q_BHTD, k_BHTD, v_BHTD, is_causal=True, dropout_p=drop)
        else:
            y_BHTD = F.scaled_dot_product_attention(q_BHTD, k_BHTD, v_BHTD, attn_mask=mask.to(q_BHTD.dtype),
                                                    dropout_p=drop)
        return self.proj(y_BHTD.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float, dropout: float, bias: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model, bias=bias)
        self.attn = Attention(d_model, n_heads, dropout, bias)
        self.ln2 = nn.LayerNorm(d_model, bias=bias)
        hidden = int(mlp_ratio * d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden, bias=bias), nn.GELU(),
                                 nn.Linear(hidden, d_model, bias=bias), nn.Dropout(dropout))

    def forward(self, x_BTC, pos, ctx, mask):
        x_BTC = x_BTC + self.attn(self.ln1(x_BTC), pos, ctx, mask)
        return x_BTC + self.mlp(self.ln2(x_BTC))


def causal_bias_mask(bias_HTS: torch.Tensor, q_pos_T: torch.Tensor, k_pos_S: torch.Tensor) -> torch.Tensor:
    """The positional bias with -inf on future keys (j > i), fp32, (H, T, S)."""
    future_TS = k_pos_S[None, :] > q_pos_T[:, None]
    return bias_HTS.float().masked_fill(future_TS, float("-inf"))


class Decoder(nn.Module):
    """Token embedding -> pos.embed -> n_layers pre-LN blocks -> LayerNorm -> tied unembedding."""

    def __init__(self, *, vocab_size: int, d_model: int, n_layers: int, n_heads: int,
                 pos: Callable[..., PositionalScheme], train_len: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, bias: bool = False, tie_embeddings: bool = True) -> None:
        super().__init__()
        for name, v in dict(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                            train_len=train_len).items():
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}")
        if d_model % n_heads:
            raise ConfigError(f"n_heads={n_heads} does not divide d_model={d_model}")
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = pos(d_model=d_model, n_heads=n_heads, head_dim=d_model // n_heads, train_len=train_len)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, mlp_ratio, dropout, bias) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model, bias=bias)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_embeddings:
            self.head.weight = self.tok.weight
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 * n_layers)
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / (2 * n_layers) ** 0.5)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx_BT: torch.Tensor, pos_T: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V) for token ids (B, T); positions default to 0..T-1."""
        T = idx_BT.shape[1]
        if pos_T is None:
            pos_T = torch.arange(T, device=idx_BT.device)
        x_BTC = self.drop(self.pos.embed(self.tok(idx_BT), pos_T))
        ctx = self.pos.context(pos_T, pos_T)  # once per forward, shared by every layer
        mask = None if ctx.bias_HTS is None else causal_bias_mask(ctx.bias_HTS, pos_T, pos_T)
        for block in self.blocks:
            x_BTC = block(x_BTC, self.pos, ctx, mask)
        return self.head(self.ln_f(x_BTC))

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok.weight.numel() if non_embedding else n
