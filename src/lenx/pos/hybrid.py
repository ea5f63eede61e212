"""Per-layer schemes: RoPE on most attention layers, NoPE on every n-th, with an optional training-time sliding
window or chunks on the RoPE layers.

SmolLM3 (HF transformers `SmolLM3Config.no_rope_layers`: layer i rotates unless (i + 1) % no_rope_layer_interval
== 0, interval 4; no window), Cohere2 / Command R7B's "RNoPE-SWA" (Yang et al. 2025, arXiv:2501.18795: sliding
window attention with RoPE on three layers of four, full attention without positions on the fourth; transformers'
`Cohere2Config.sliding_window_pattern` 4) and Llama 4's iRoPE (NoPE every 4th layer, chunked attention on the
RoPE layers, attention-temperature tuning on the NoPE layers; transformers' Llama4TextAttention) share this shape;
SWAN-GPT (arXiv:2504.08719) too. The window and the chunks are attention modifiers (lenx.modifiers.Modifiers) this
scheme brings to its RoPE layers (`attention_at`); the plan runs them as a mask, so they train in and score at
every length.
"""

from __future__ import annotations

import torch

from lenx.errors import ConfigError
from lenx.pos.base import AttnContext
from lenx.pos.rope import RoPE


def tokens_or_fraction(tokens, fraction, train_len: int, name: str) -> int | None:
    """A size given in tokens (`name`) or as a fraction of the training length (`name`_fraction), checked."""
    if tokens is not None and fraction is not None:
        raise ConfigError(f"set {name} (tokens) or {name}_fraction (of the training length), not both")
    if fraction is not None:
        if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < fraction <= 1:
            raise ConfigError(f"{name}_fraction must be in (0, 1], got {fraction!r}")
        return max(1, int(train_len * fraction))
    if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
        raise ConfigError(f"{name} must be a positive number of tokens or null, got {tokens!r}")
    return tokens


class RoPENoPE(RoPE):
    """RoPE on every layer but each `nope_every`-th (layers i with (i + 1) % nope_every == 0 have no positions, as
    SmolLM3's, Cohere2's and Llama 4's patterns), with a sliding window of `window` tokens (or `window_fraction` of
    the training length: Cohere2) or chunks of `chunk` tokens (or `chunk_fraction`: Llama 4's chunked attention)
    on the RoPE layers; null for all: neither (SmolLM3). `temperature_floor`: Llama 4's attention-temperature tuning
    on the NoPE layers (transformers' Llama4TextAttention, attn_temperature_tuning; arXiv:2501.19399's idea): the
    queries at position p times 1 + temperature_scale log(1 + floor((p + 1) / temperature_floor)), Llama 4's
    floor 8192 and scale 0.1; null: none."""

    def __init__(self, *, nope_every: int = 4, window: int | None = None, window_fraction: float | None = None,
                 chunk: int | None = None, chunk_fraction: float | None = None,
                 temperature_floor: int | None = None, temperature_scale: float = 0.1, **kw) -> None:
        super().__init__(**kw)
        if isinstance(nope_every, bool) or not isinstance(nope_every, int) or nope_every < 1:
            raise ConfigError(f"nope_every must be a positive integer (every n-th layer has no positions), got "
                              f"{nope_every!r}")
        window = tokens_or_fraction(window, window_fraction, self.train_len, "window")
        chunk = tokens_or_fraction(chunk, chunk_fraction, self.train_len, "chunk")
        if window is not None and chunk is not None:
            raise ConfigError("set a window (Cohere2) or chunks (Llama 4) on the RoPE layers, not both")
        if temperature_floor is not None and (isinstance(temperature_floor, bool)
                                              or not isinstance(temperature_floor, int) or temperature_floor < 1):
            raise ConfigError(f"temperature_floor must be a positive number of tokens or null, got "
                              f"{temperature_floor!r}")
        self.nope_every, self.window, self.chunk = nope_every, window, chunk
        self.temperature_floor, self.temperature_scale = temperature_floor, float(temperature_scale)
        if temperature_floor is not None:
            self.rows_in_context = False  # the temperature reads each query's position: one row at a time
        if self.n_layers < nope_every:
            raise ConfigError(f"nope_every={nope_every} with {self.n_layers} layers leaves no NoPE layer: this "
                              "would be plain RoPE; lower nope_every")

    @property
    def shift_invariant(self) -> bool:
        return self.temperature_floor is None  # the NoPE layers' temperature reads the query's position

    def nope(self, layer: int) -> bool:
        """Whether attention layer `layer` has no positions (SmolLM3's no_rope_layers[layer] == 0)."""
        return (layer + 1) % self.nope_every == 0

    def attention_at(self, layer: int) -> dict:
        if self.nope(layer):
            return {}
        return {k: v for k, v in (("window", self.window), ("chunk", self.chunk)) if v is not None}

    def rotate(self, q_BHTD, k_BHSD, ctx: AttnContext):
        if not self.nope(ctx.layer):
            return super().rotate(q_BHTD, k_BHSD, ctx)
        if self.temperature_floor is None:
            return q_BHTD, k_BHSD
        # Llama 4: log1p(floor((p + 1) / floor_scale)) * attn_scale + 1, in fp32, the queries cast back
        p_T = ctx.q_pos_T.float()
        scale_T = torch.log1p(torch.floor((p_T + 1.0) / self.temperature_floor)) * self.temperature_scale + 1.0
        return (q_BHTD * scale_T[:, None]).to(q_BHTD.dtype), k_BHSD

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, nope_every={self.nope_every}, window={self.window}, chunk={self.chunk}, "
                f"temperature_floor={self.temperature_floor}")
