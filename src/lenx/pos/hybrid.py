"""Per-layer schemes: RoPE on most attention layers, NoPE on every n-th, with an optional training-time sliding
window on the RoPE layers.

SmolLM3 (HF transformers `SmolLM3Config.no_rope_layers`: layer i rotates unless (i + 1) % no_rope_layer_interval
== 0, interval 4; no window), Cohere2 / Command R7B's "RNoPE-SWA" (Yang et al. 2025, arXiv:2501.18795: sliding
window attention with RoPE on three layers of four, full attention without positions on the fourth; transformers'
`Cohere2Config.sliding_window_pattern` 4) and Llama 4's iRoPE (NoPE every 4th layer; its RoPE layers use chunked,
not sliding, attention, which lenx does not have yet) share this shape; SWAN-GPT (arXiv:2504.08719) too.
The window is an attention modifier (lenx.modifiers.Modifiers.window) this scheme brings to its RoPE layers
(`attention_at`); the plan runs it as a mask, so it trains in and scores at every length.
"""

from __future__ import annotations

from lenx.errors import ConfigError
from lenx.pos.base import AttnContext
from lenx.pos.rope import RoPE


class RoPENoPE(RoPE):
    """RoPE on every layer but each `nope_every`-th (layers i with (i + 1) % nope_every == 0 have no positions, as
    SmolLM3's and Cohere2's patterns), and a sliding window of `window` tokens (or `window_fraction` of the
    training length) on the RoPE layers; null for both: no window (SmolLM3)."""

    def __init__(self, *, nope_every: int = 4, window: int | None = None, window_fraction: float | None = None,
                 **kw) -> None:
        super().__init__(**kw)
        if isinstance(nope_every, bool) or not isinstance(nope_every, int) or nope_every < 1:
            raise ConfigError(f"nope_every must be a positive integer (every n-th layer has no positions), got "
                              f"{nope_every!r}")
        if window is not None and window_fraction is not None:
            raise ConfigError("set window (tokens) or window_fraction (of the training length), not both")
        if window_fraction is not None:
            if not isinstance(window_fraction, (int, float)) or isinstance(window_fraction, bool) \
                    or not 0 < window_fraction <= 1:
                raise ConfigError(f"window_fraction must be in (0, 1], got {window_fraction!r}")
            window = max(1, int(self.train_len * window_fraction))
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ConfigError(f"window must be a positive number of tokens or null, got {window!r}")
        self.nope_every, self.window = nope_every, window
        if self.n_layers < nope_every:
            raise ConfigError(f"nope_every={nope_every} with {self.n_layers} layers leaves no NoPE layer: this "
                              "would be plain RoPE; lower nope_every")

    def nope(self, layer: int) -> bool:
        """Whether attention layer `layer` has no positions (SmolLM3's no_rope_layers[layer] == 0)."""
        return (layer + 1) % self.nope_every == 0

    def attention_at(self, layer: int) -> dict:
        return {} if self.nope(layer) or self.window is None else {"window": self.window}

    def rotate(self, q_BHTD, k_BHSD, ctx: AttnContext):
        return (q_BHTD, k_BHSD) if self.nope(ctx.layer) else super().rotate(q_BHTD, k_BHSD, ctx)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, nope_every={self.nope_every}, window={self.window}"
