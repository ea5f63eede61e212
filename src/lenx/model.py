"""A small pre-LN decoder-only transformer with a pluggable positional scheme.

Shapes: B batch, T sequence (queries), t a chunk of queries, S keys, H heads, D head dim, C model width,
V vocabulary.
The model never limits the input length: only a learned position table may refuse a position (OutOfRangeError).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lenx.errors import ConfigError, check_int
from lenx.pos.base import AttnContext, PositionalScheme

# Logits per attention chunk (batch x heads x queries x keys) when a scheme adds logit terms: 2^25 bounds each
# of a chunk's fp32 (B, H, t, S) tensors to 128 MiB at any length (a dense fp32 bias at 8192 tokens is 1 GiB
# per 4 heads) and still gives SDPA enough query rows to fill a GPU (2^20 ran 4x slower at 8192 on an H100).
CHUNK_LOGITS = 1 << 25


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = dropout

    def forward(self, x_BTC: torch.Tensor, pos: PositionalScheme, ctx: AttnContext,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Causal self-attention with the scheme's rotation, bias and score terms, (B, T, C) -> (B, T, C).

        `mask`: an explicit additive mask (H, T, S) with -inf on future keys, replacing ctx's bias and the
        causal mask (small inputs, tests); by default both are built per chunk of queries from ctx.
        """
        B, T, C = x_BTC.shape
        q_BHTD, k_BHTD, v_BHTD = self.qkv(x_BTC).view(B, T, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q_BHTD, k_BHTD = pos.rotate(q_BHTD, k_BHTD, ctx)
        drop = self.dropout if self.training else 0.0
        if mask is None and not masked_path(pos, ctx):  # SDPA's causal fast path, no mask
            y_BHTD = F.scaled_dot_product_attention(q_BHTD, k_BHTD, v_BHTD, is_causal=True, dropout_p=drop)
        else:
            S = k_BHTD.shape[2]
            rows = max(1, CHUNK_LOGITS // (B * self.n_heads * S))
            parts = []
            for a in range(0, T, rows):
                sub = ctx.rows(a, a + rows)
                # With default positions (key j at position j), keys past the chunk's last query are future keys
                # of all its queries: leave them out (on average this halves a long input's attention work).
                s = S if mask is not None or sub.q_start is None else min(S, sub.q_start + len(sub.q_pos_T))
                parts.append(attend_rows(q_BHTD[:, :, a:a + rows], k_BHTD[:, :, :s], v_BHTD[:, :, :s], pos,
                                         sub.keys(s), None if mask is None else mask[..., a:a + rows, :], drop))
            y_BHTD = torch.cat(parts, dim=2)
        return self.proj(y_BHTD.transpose(1, 2).reshape(B, T, C))


def attend_rows(q_BHtD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor, pos: PositionalScheme,
                ctx: AttnContext, mask_Hts: torch.Tensor | None, drop: float) -> torch.Tensor:
    """softmax(q.k/sqrt(D) + positional terms + causal mask) v for one chunk of t queries over S keys."""
    if mask_Hts is None:
        with torch.autocast(q_BHtD.device.type, enabled=False):  # positional terms in fp32
            if ctx.mask_HTS is not None:
                mask_Hts = ctx.mask_HTS
            else:  # straight to SDPA: in its dtype; fp32 when more terms are added
                mask_Hts = positional_mask(ctx, pos, torch.float32 if exact_mask(pos) else q_BHtD.dtype)
            extra = pos.score(q_BHtD.float(), k_BHSD.float(), ctx) if content_score(pos) else None
            if extra is not None:
                mask_Hts = mask_Hts + extra  # (B, H, t, S) for content-dependent schemes
    if not pos.adds_values:  # the fused kernel with a float mask (also carries the bias gradient)
        # 4-D: given a 3-D (H, t, S) mask, CPU SDPA falls back to its unfused math backend (5x slower at 8192)
        mask_BHts = mask_Hts if mask_Hts.dim() == 4 else mask_Hts[None]
        return F.scaled_dot_product_attention(q_BHtD, k_BHSD, v_BHSD, attn_mask=mask_BHts.to(q_BHtD.dtype),
                                              dropout_p=drop)
    with torch.autocast(q_BHtD.device.type, enabled=False):  # Shaw's value terms need the weights themselves
        logits = q_BHtD.float() @ k_BHSD.float().transpose(-1, -2) / q_BHtD.shape[-1] ** 0.5 + mask_Hts
        attn_BHtS = F.dropout(logits.softmax(-1), drop)
        y_BHtD = attn_BHtS @ v_BHSD.float() + pos.value(attn_BHtS, ctx)
    return y_BHtD.to(v_BHSD.dtype)


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float, dropout: float, bias: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model, bias=bias)
        self.attn = Attention(d_model, n_heads, dropout, bias)
        self.ln2 = nn.LayerNorm(d_model, bias=bias)
        hidden = int(mlp_ratio * d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, hidden, bias=bias), nn.GELU(),
                                 nn.Linear(hidden, d_model, bias=bias), nn.Dropout(dropout))

    def forward(self, x_BTC, pos, ctx):
        x_BTC = x_BTC + self.attn(self.ln1(x_BTC), pos, ctx)
        return x_BTC + self.mlp(self.ln2(x_BTC))


def positional_mask(ctx: AttnContext, pos: PositionalScheme, dtype: torch.dtype) -> torch.Tensor:
    """ctx's distance bias (or zeros) and a positional score, -inf on future keys, (H or 1, T, S): built in fp32,
    cast to dtype."""
    T, S = len(ctx.q_pos_T), len(ctx.k_pos_S)
    if ctx.bias_HR is not None and ctx.q_start is not None:
        mask_HTS = toeplitz_mask(ctx.bias_HR, ctx.q_start, T, S, torch.float32 if pos.positional_score else dtype)
    else:
        bias_HTS = ctx.bias_HTS
        if bias_HTS is None:
            bias_HTS = torch.zeros(1, T, S, device=ctx.q_pos_T.device)
        mask_HTS = causal_bias_mask(bias_HTS, ctx.q_pos_T, ctx.k_pos_S)
    if pos.positional_score:
        mask_HTS = mask_HTS + pos.score(None, None, ctx)
    return mask_HTS.to(dtype)


def masked_path(pos: PositionalScheme, ctx: AttnContext) -> bool:
    """Whether attention needs a float mask (a distance bias or score terms) rather than SDPA's causal flag."""
    return ctx.bias_HR is not None or pos.adds_logits


def content_score(pos: PositionalScheme) -> bool:
    """Whether pos.score reads the queries or keys, so attention calls it per chunk and layer."""
    return pos.adds_logits and not pos.positional_score


def exact_mask(pos: PositionalScheme) -> bool:
    """Whether the mask must stay fp32: content score terms are added to it, or Shaw's values read the weights."""
    return content_score(pos) or pos.adds_values


def toeplitz_mask(bias_HR: torch.Tensor, q_start: int, T: int, S: int, dtype: torch.dtype) -> torch.Tensor:
    """The causal mask with a distance bias for queries at q_start..q_start+T-1 and keys at 0..S-1, (H, T, S).

    Entry (i, j) depends on i - j alone, so every row is a window onto one vector of the T + S - 1 distances
    q_start + T - 1 down to q_start - S + 1 (-inf where negative: future keys). One copy of (H, T, S) and no
    per-entry gather (at 8192 tokens on CPU the gather took half of ALiBi's evaluation time).
    """
    d_K = torch.arange(q_start + T - 1, q_start - S, -1, device=bias_HR.device)
    g_HK = F.embedding(d_K.clamp(0, bias_HR.shape[1] - 1), bias_HR.T).T.float()
    g_HK = g_HK.masked_fill(d_K < 0, float("-inf")).to(dtype)
    return g_HK.unfold(1, S, 1).flip(1).contiguous()  # window w of the unfold is row T - 1 - w


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype attention's matmuls run in: autocast's where it is on for x's device, else x's own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def causal_bias_mask(bias_HTS: torch.Tensor, q_pos_T: torch.Tensor, k_pos_S: torch.Tensor) -> torch.Tensor:
    """The positional bias with -inf on future keys (j > i), fp32, (H, T, S) (H may be 1)."""
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
            check_int(v, name)
        if d_model % n_heads:
            raise ConfigError(f"n_heads={n_heads} does not divide d_model={d_model}")
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = pos(d_model=d_model, n_heads=n_heads, head_dim=d_model // n_heads, train_len=train_len,
                       n_layers=n_layers)
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
        default = pos_T is None
        if default:
            pos_T = torch.arange(T, device=idx_BT.device)
        x_BTC = self.drop(self.pos.embed(self.tok(idx_BT), pos_T))
        # Once per forward, shared by every layer; the Decoder owns the positions attention masks with.
        ctx = dataclasses.replace(self.pos.context(pos_T, pos_T), q_pos_T=pos_T, k_pos_S=pos_T,
                                  q_start=0 if default else None)
        whole_mask = masked_path(self.pos, ctx) and self.pos.n_heads * T * T <= CHUNK_LOGITS
        # Attention takes the masked path and the whole mask fits one chunk: build it here, once, not in every
        # layer (once per layer for a positional score with a table per layer, FIRE). In the compute dtype when it
        # goes straight to SDPA (which would cast it anyway); in fp32 when content score terms are added to it.
        dtype = torch.float32 if exact_mask(self.pos) else compute_dtype(x_BTC)
        if whole_mask and not self.pos.layerwise_mask:
            ctx = dataclasses.replace(ctx, mask_HTS=positional_mask(ctx, self.pos, dtype))
        for layer, block in enumerate(self.blocks):
            ctx_l = dataclasses.replace(ctx, layer=layer)
            if whole_mask and self.pos.layerwise_mask:
                ctx_l = dataclasses.replace(ctx_l, mask_HTS=positional_mask(ctx_l, self.pos, dtype))
            x_BTC = block(x_BTC, self.pos, ctx_l)
        return self.head(self.ln_f(x_BTC))

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok.weight.numel() if non_embedding else n
