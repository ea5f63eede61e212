"""A small pre-LN decoder-only transformer with a pluggable positional scheme: Attention, MLP, Block, Decoder.

How attention runs (fused causal kernel, masked chunks of queries, the mask's dtype) is lenx.attention's plan; what
the positions contribute is the scheme's (lenx.pos).
Shapes: B batch, T sequence (queries), S keys, H heads, D head dim, C model width, V vocabulary.
The model never limits the input length: only a learned position table may refuse a position (OutOfRangeError).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lenx import attention
from lenx.errors import ConfigError, check_int
from lenx.hardware import denormals_flushed
from lenx.pos.base import AttnContext, PositionalScheme


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = dropout

    def forward(self, x_BTC: torch.Tensor, pos: PositionalScheme, ctx: AttnContext,
                plan: attention.Plan) -> torch.Tensor:
        """Causal self-attention with the scheme's rotation, bias and score terms, (B, T, C) -> (B, T, C)."""
        B, T, C = x_BTC.shape
        q_BHTD, k_BHTD, v_BHTD = self.qkv(x_BTC).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if plan.q_scale_T is not None:  # log-n scaling of the queries (an extension)
            q_BHTD = q_BHTD * plan.q_scale_T[:, None].to(q_BHTD.dtype)
        raw = (q_BHTD, k_BHTD)
        q_BHTD, k_BHTD = pos.rotate(q_BHTD, k_BHTD, ctx)
        y_BHTD = attention.attend(q_BHTD, k_BHTD, v_BHTD, pos, ctx, plan, self.dropout if self.training else 0.0,
                                  raw)
        return self.proj(y_BHTD.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Sequential):
    """Linear -> GELU -> Linear -> dropout (a Sequential, so checkpoints keep the keys mlp.0 and mlp.2)."""

    def __init__(self, d_model: int, mlp_ratio: float, dropout: float, bias: bool) -> None:
        hidden = int(mlp_ratio * d_model)
        super().__init__(nn.Linear(d_model, hidden, bias=bias), nn.GELU(), nn.Linear(hidden, d_model, bias=bias),
                         nn.Dropout(dropout))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float, dropout: float, bias: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model, bias=bias)
        self.attn = Attention(d_model, n_heads, dropout, bias)
        self.ln2 = nn.LayerNorm(d_model, bias=bias)
        self.mlp = MLP(d_model, mlp_ratio, dropout, bias)

    def forward(self, x_BTC, pos, ctx, plan):
        x_BTC = x_BTC + self.attn(self.ln1(x_BTC), pos, ctx, plan)
        return x_BTC + self.mlp(self.ln2(x_BTC))


class Decoder(nn.Module):
    """Token embedding -> pos.embed -> n_layers pre-LN blocks -> LayerNorm -> tied unembedding."""

    def __init__(self, *, vocab_size: int, d_model: int, n_layers: int, n_heads: int,
                 pos: Callable[..., PositionalScheme], train_len: int, mlp_ratio: float = 4.0,
                 dropout: float = 0.0, bias: bool = False, tie_embeddings: bool = True) -> None:
        super().__init__()
        for name, v in dict(vocab_size=vocab_size, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                            train_len=train_len).items():
            check_int(v, name)
        if d_model % n_heads:
            raise ConfigError(f"n_heads={n_heads} does not divide d_model={d_model}")
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = pos(d_model=d_model, n_heads=n_heads, head_dim=d_model // n_heads, train_len=train_len,
                       n_layers=n_layers)
        self.drop = nn.Dropout(dropout)
        self.extension = None  # a training-free extension (lenx.extensions), set to score a trained model under it
        self.attention = "sdpa"  # or "flex": FlexAttention for distance biases (config `attention`)
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
        B, T = idx_BT.shape
        contiguous = pos_T is None
        if contiguous:
            pos_T = torch.arange(T, device=idx_BT.device)
        x_BTC = self.drop(self.pos.embed(self.tok(idx_BT), pos_T))
        ctx = self.pos.context(pos_T, pos_T)  # once per forward, shared by every layer
        plan = attention.plan(self.pos, ctx, batch=B, dtype=attention.compute_dtype(x_BTC), contiguous=contiguous,
                              extension=self.extension, flex=self.attention == "flex")
        # scoring on CPU: far keys' softmax terms underflow into slow denormals (lenx.hardware.denormals_flushed)
        with denormals_flushed(idx_BT.device.type == "cpu" and not torch.is_grad_enabled()):
            for layer, block in enumerate(self.blocks):
                ctx_l = ctx.at_layer(layer)
                plan = plan.for_layer(self.pos, ctx_l)  # the whole mask, where one chunk holds it: once per forward
                x_BTC = block(x_BTC, self.pos, ctx_l, plan)
        return self.head(self.ln_f(x_BTC))

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok.weight.numel() if non_embedding else n
