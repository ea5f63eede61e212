"""The transformer block's shape, as a description (config `model.norm`, `model.mlp`, `model.multiple_of`).

gpt2 (the default; every preset before issue 38, and the parameter names their checkpoints carry): LayerNorm and a
GELU MLP (Radford et al. 2019). llama: RMSNorm (Zhang & Sennrich 2019, arXiv:1910.07467) and a SwiGLU MLP
(Shazeer 2020, arXiv:2002.05202), as Llama (Touvron et al. 2023, arXiv:2302.13971, Section 2.2 "Architecture";
its released model.py: RMSNorm eps 1e-6, FeedForward w2(silu(w1 x) * w3 x) with hidden width
multiple_of * ceil(int(2/3 * 4 d) / multiple_of), e.g. 11008 for d = 4096). The block is orthogonal to the
positional scheme: every scheme enters attention (lenx.model.Attention), never the norms or the MLP. QK-norm is the
attention modifier `attn.qk_norm` (lenx.modifiers), usable with either block.
Shapes: B batch, T sequence, C model width, F the MLP's hidden width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lenx.errors import ConfigError, check_int

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
RMS_EPS = 1e-6  # Llama's norm_eps (its released params.json)


def swiglu_hidden(d_model: int, mlp_ratio: float, multiple_of: int) -> int:
    """Llama's SwiGLU width: 2/3 of the GELU MLP's (mlp_ratio x d_model), so that its three matrices hold as many
    parameters as the GELU MLP's two, rounded up to a multiple of `multiple_of` (Llama: 256)."""
    return multiple_of * -(-int(2 * mlp_ratio * d_model / 3) // multiple_of)


class MLP(nn.Sequential):
    """Linear -> GELU -> Linear -> dropout (a Sequential, so checkpoints keep the keys mlp.0 and mlp.2)."""

    def __init__(self, d_model: int, mlp_ratio: float, dropout: float, bias: bool) -> None:
        hidden = int(mlp_ratio * d_model)
        super().__init__(nn.Linear(d_model, hidden, bias=bias), nn.GELU(), nn.Linear(hidden, d_model, bias=bias),
                         nn.Dropout(dropout))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)) -> dropout; gate and up are one (C, 2F) matmul (Llama's w1 and w3, fused)."""

    def __init__(self, d_model: int, hidden: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * hidden, bias=bias)
        self.down = nn.Linear(hidden, d_model, bias=bias)
        self.drop = nn.Dropout(dropout)

    def forward(self, x_BTC: torch.Tensor) -> torch.Tensor:
        gate_BTF, up_BTF = self.gate_up(x_BTC).chunk(2, dim=-1)
        return self.drop(self.down(F.silu(gate_BTF) * up_BTF))


@dataclass(frozen=True)
class BlockShape:
    """Which norm and MLP a block has; `multiple_of` rounds the SwiGLU width (unused by the GELU MLP)."""

    norm: str = "layernorm"
    mlp: str = "gelu"
    multiple_of: int = 256

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ConfigError(f"model.norm must be one of {list(NORMS)}, got {self.norm!r}")
        if self.mlp not in MLPS:
            raise ConfigError(f"model.mlp must be one of {list(MLPS)}, got {self.mlp!r}")
        check_int(self.multiple_of, "model.multiple_of")

    @classmethod
    def from_config(cls, model: dict) -> BlockShape:
        """The shape a model config describes; keys it lacks (the gpt2 presets, older checkpoints) default."""
        return cls(**{k: model[k] for k in ("norm", "mlp", "multiple_of") if k in model})

    @property
    def is_default(self) -> bool:
        return (self.norm, self.mlp) == ("layernorm", "gelu")

    def make_norm(self, d_model: int, bias: bool) -> nn.Module:
        if self.norm == "rmsnorm":
            return nn.RMSNorm(d_model, eps=RMS_EPS)
        return nn.LayerNorm(d_model, bias=bias)

    def make_mlp(self, d_model: int, mlp_ratio: float, dropout: float, bias: bool) -> nn.Module:
        if self.mlp == "swiglu":
            return SwiGLU(d_model, swiglu_hidden(d_model, mlp_ratio, self.multiple_of), dropout, bias)
        return MLP(d_model, mlp_ratio, dropout, bias)


GPT2 = BlockShape()
# names of the residual branches' output projections (GPT-2's init scales them by 1/sqrt(2 n_layers))
RESIDUAL_OUTPUTS = ("attn.proj.weight", "mlp.2.weight", "mlp.down.weight")
