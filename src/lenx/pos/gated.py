"""Schemes whose order comes from attention itself, not from positions: the Forgetting Transformer, stick-breaking
attention and selective attention. Each is NoPE plus an attention modifier (lenx.modifiers), brought by
`attention_at`; the mechanisms themselves are descriptions the attention plan runs (`attn.forget`,
`attn.stickbreaking`, `attn.selective` add the same mechanism to any other scheme).
"""

from __future__ import annotations

from lenx.errors import ConfigError
from lenx.modifiers import LAYER_OPTIONS
from lenx.pos.base import PositionalScheme


class Forgetting(PositionalScheme):
    """The Forgetting Transformer, FoX (Lin et al. 2025, arXiv:2503.02130; zhixuan-lin/forgetting-transformer,
    ForgettingAttentionLayer with fgate_type "full", use_rope false as in the paper's FoX): NoPE with a
    data-dependent forget gate per head, logits + c_i - c_j, c the cumulative sum of log sigmoid(w_h.x_t + b_h)
    over the tokens, x the attention layer's input (lenx.modifiers.Modifiers.forget). `pro: true` (pos=fox_pro):
    the paper's "FoX (Pro)" layer, with QK-norm, k/v shift, output norm and output gate (Modifiers' LAYER_OPTIONS;
    the authors' Pro models also differ outside attention, which lenx's block does not follow)."""

    reads_positions = False  # the order is the gate's cumulative sum over tokens, not a position

    def __init__(self, *, pro: bool = False, **dims) -> None:
        super().__init__(**dims)
        if not isinstance(pro, bool):
            raise ConfigError(f"pro must be true or false, got {pro!r}")
        self.pro = pro

    def attention_at(self, layer: int) -> dict:
        return {"forget": True, **({n: True for n in LAYER_OPTIONS} if self.pro else {})}


class StickBreaking(PositionalScheme):
    """Stick-breaking attention (Tan et al. 2025, arXiv:2410.17980; shawntan/stickbreaking-attention `sb_ref.py`):
    NoPE with each query's weights broken off a stick from the nearest key backwards, a_ij = sigmoid(z_ij)
    prod_{j<k<i} (1 - sigmoid(z_ik)), the remainder on the query's own value (lenx.modifiers.Modifiers.
    stickbreaking). No softmax: the training-free extensions that remap softmax logits do not apply."""

    reads_positions = False

    def attention_at(self, layer: int) -> dict:
        return {"stickbreaking": True}


class Selective(PositionalScheme):
    """Selective attention (Leviathan et al. 2025, arXiv:2410.02703): NoPE where each token may mask earlier tokens
    from every later query, logits - F_ij with F_ij = sum_{j<k<i} relu(z^0_kj), z^0 the first head's logits
    (lenx.modifiers.Modifiers.selective; no authors' code: x-transformers' selective_attn is the reference). On
    another scheme: `attn.selective=true`."""

    reads_positions = False

    def attention_at(self, layer: int) -> dict:
        return {"selective": True}
