"""Train-time position augmentation: which positions a training window's tokens get (`configs/positions/`).

The encodings stay as they are; only the positions the Decoder is given during training change, so every mode
composes with every scheme and RoPE scaling. Every draw comes from a generator seeded by (seed, step, micro-batch)
(and the example's row, or the attention layer, where the mode draws per example or per layer), so a run is
reproducible from its seed and a resumed run draws what the uninterrupted one drew. The default of each mode is
what its authors' released code draws; lenx's earlier draws are named variants (`*_shared`, `*_batch`).

- `contiguous`: 0..T-1, today's training, bitwise (the Decoder's default positions and its Toeplitz fast path).
- `randomized` (Ruoss et al. 2023, arXiv:2305.16843; google-deepmind/randomized_positional_encodings): T distinct
  positions uniform in [0, max_len) without replacement, sorted, shared by the batch's examples
  (`noisy_fixed_positional_encodings`: one `jrandom.choice` of shape (T,), `jnp.sort`). Where the draw happens is
  the authors' `models/transformer.py`: sin/cos and learned encodings draw once at the input
  (`TransformerEmbedder.add_positional_encodings`, NOISY_SIN_COS / NOISY_LEARNT); RoPE draws again in every
  attention layer (`MultiHeadDotProductAttention.__call__`, NOISY_ROTARY: a fresh `hk.next_rng_key()` per layer,
  the same key for q and k); ALiBi draws per layer too, and draws *distances*, not positions
  (`compute_noisy_alibi_encodings_biases`): T - 1 distinct distances from [1, max_len), sorted, d_1 < ... < d_{T-1},
  placed Toeplitz by `relative_shift` (the pair at offset m = i - j reads d_m, d_0 = 0). lenx: the embedding reads
  the input draw (`LayerDraws.embed_T`); each attention layer l builds its context from its own draw
  (`LayerDraws.positions(l)`, `.distances(l)`, through `Decoder.layer_draw_contexts`): a scheme whose bias
  is a function of the distance alone (ALiBi, and by the same rule T5, KERPLE, Sandwich) reads the drawn distances
  Toeplitz; every other scheme (RoPE and the rotary family, FIRE, Shaw, Transformer-XL, DeBERTa) the layer's
  drawn positions. Departures, documented: the authors' noisy relative encoding (Transformer-XL with drawn
  distances, `compute_attention_with_noisy_relative_encodings`) raises NotImplementedError for causal attention,
  so lenx's score-based relative schemes take per-layer positions; their ALiBi adds 0.5 m_h to every strictly
  past key to break left/right symmetry in a non-causal encoder (in the plain ALiBi too), which a causal decoder
  does not need, and lenx's ALiBi (Press et al.) leaves out. `randomized_shared` is lenx's earlier draw: one
  position vector per forward for the input and every layer, distance biases reading differences of positions.
- `pose` (Zhu et al. 2023, arXiv:2309.10400): the window split into `chunks` pieces of contiguous positions with
  skips between them, so that relative distances up to target_len - 1 occur while training on T tokens. With two
  chunks (the authors' released code, `train_preprocess_function_pose` with its `lt = 0` revision): the first chunk
  has length U{1..ceil(T/2)} and keeps positions 0.., the second is shifted by a skip U{0..target_len - T}; the
  code draws (rt1, rt) inside its loop over examples, so each example of a batch has its own: lenx draws a row
  per example, positions of shape (B, T). More chunks (the paper's general form): cut points drawn without
  replacement, skips sorted U{0..target_len - T}. The released code also takes the second chunk's tokens from
  later in the document; lenx keeps the window's text contiguous and changes positions only (a random window of a
  token stream has no document to skip within). `pose_batch`: lenx's earlier draw, one row shared by the batch.
- `offset` (SHAPE, Kiyono et al. 2021, arXiv:2106.03143; butsugiri/shape, onmt/modules/embeddings.py
  `PositionalEncoding.forward`): o + 0..T-1, o drawn per sequence (`torch.randint(0, pe_size, size=(bsz,))`), here
  from U{0..max_len - T}, i.e. K = max_len - T + 1 offsets (SHAPE's K, `--pe_noise_size`, is the exclusive bound
  of its draw). At evaluation SHAPE's code shifts every position by K (`self.pe[step + max_noise_size:...]`, also
  for validation): `eval_offset` null is that K, and the Decoder's default positions start there
  (`Decoder.position_offset`) for validation, perplexity, probes and tasks alike; a scheme that is shift invariant
  ignores it (same logits, its contiguous fast paths). `eval_offset: 0` scores at 0..L-1 as lenx did. SHAPE is a
  sinusoidal method: a learned table is sized to eval_offset + max_len rows so that no window is refused, but its
  rows past max_len - 1 are never trained (use eval_offset: 0 with pos=learned). `offset_batch`: lenx's earlier
  mode, one offset per batch and scoring at 0.
`max_len` / `target_len` null mean seq_len x the largest eval multiplier: the positions evaluation will reach.
Scoring under a mode (eval.positions=train, `for_eval`) reads one draw per batch of windows (per layer for
`randomized`): per-example rows would only reassign the same distribution among a batch's windows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from lenx.errors import ConfigError, OutOfRangeError, check_int, instantiate_node

TAG = 0x9E3779B9  # the last seed word of every draw (kept: the shared draws are bitwise lenx's earlier ones)


ROW, LAYER = 1, 2  # what a draw's generator is for, after TAG: an example's row, an attention layer's draw


def _rng(seed: int, step: int, micro: int, *extra: int) -> np.random.Generator:
    return np.random.default_rng((seed, step, micro, TAG, *extra))


class Positions:
    """A position mode: `draw(T, rng)` gives T strictly increasing positions, or None for the default 0..T-1."""

    name = "contiguous"

    def span(self, train_len: int) -> int:
        """How many positions (0..span-1) the mode can give a window of train_len tokens, at training or at
        evaluation (SHAPE's evaluation offset)."""
        return train_len

    def draw(self, T: int, rng: np.random.Generator) -> np.ndarray | None:
        return None

    def shared(self, T: int, seed: int, step: int, micro: int = 0) -> torch.Tensor | None:
        """One draw for the forward at (seed, optimizer step, micro-batch), shared by its examples, (T,)."""
        drawn = self.draw(T, _rng(seed, step, micro))
        return None if drawn is None else torch.from_numpy(np.asarray(drawn, dtype=np.int64))

    def for_step(self, T: int, seed: int, step: int, micro: int = 0, batch: int = 1, first: int = 0):
        """The positions of the training forward at (seed, optimizer step, micro-batch), reproducible from those
        alone: None (0..T-1), (T,) shared by the batch, (batch, T) one row per example (row r drawn from
        (seed, step, micro, first + r): `first` is the process's first example under DDP), or LayerDraws."""
        return self.shared(T, seed, step, micro)

    def for_eval(self, T: int, seed: int, step: int, micro: int = 0):
        """The positions for scoring a batch of windows under the mode (eval.positions=train): one draw per batch
        ((T,), or LayerDraws); T past the mode's range is an OutOfRangeError, which scoring records as a result."""
        return self.shared(T, seed, step, micro)

    def eval_start(self, train_len: int) -> int:
        """Where the Decoder's default positions start (validation and evaluation): 0 but for SHAPE's offset."""
        return 0

    def resolve(self, train_len: int, eval_multipliers: list[int]) -> Positions:
        """This mode with null lengths set from the run (seq_len x the largest eval multiplier), checked."""
        return self

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in vars(self).items())})"


class Contiguous(Positions):
    """0..T-1: today's training, bitwise."""


MAX_POSITIONS = 2**31


class _Ranged(Positions):
    """A mode whose positions lie in [0, max_len) (null: seq_len x the largest eval multiplier)."""

    length_key = "max_len"

    def __init__(self, *, max_len: int | None = None) -> None:
        if max_len is not None:
            check_int(max_len, f"positions.{self.length_key}")
            if max_len > MAX_POSITIONS:
                raise ConfigError(f"positions.{self.length_key}={max_len} is more than the {MAX_POSITIONS} "
                                  "(2**31) positions lenx draws from; use a smaller value")
        self.max_len = max_len

    def resolve(self, train_len, eval_multipliers):
        n = self.max_len if self.max_len is not None else train_len * max(eval_multipliers or [1])
        if n < train_len:
            raise ConfigError(f"positions.{self.length_key}={n} is shorter than seq_len={train_len}: {self.name} "
                              f"needs at least seq_len positions to draw from")
        out = type(self).__new__(type(self))
        out.__dict__.update(vars(self), max_len=n)
        return out

    def span(self, train_len):
        return self.max_len if self.max_len is not None else train_len

    def check_eval(self, T: int) -> None:
        if T > self.max_len:
            raise OutOfRangeError(f"{T} tokens need more than the {self.max_len} positions of positions={self.name}")

    def for_eval(self, T, seed, step, micro=0):
        self.check_eval(T)
        return self.shared(T, seed, step, micro)


class _PerExample(_Ranged):
    """A mode whose authors draw for each example: for_step gives (batch, T), row r from its own generator."""

    def for_step(self, T, seed, step, micro=0, batch=1, first=0):
        rows = [self.draw(T, _rng(seed, step, micro, ROW, first + r)) for r in range(batch)]
        return torch.from_numpy(np.stack(rows).astype(np.int64))


@dataclass(frozen=True)
class LayerDraws:
    """Randomized positions drawn per attention layer (`Randomized`, the authors' rule): the input's draw and,
    on demand, each layer's positions and distances, all shared by the batch, on `device`."""

    mode: Randomized
    T: int
    key: tuple[int, int, int]  # (seed, step, micro-batch)
    device: torch.device | str = "cpu"
    stop: int | None = None  # a prefix of the draws (`draws[:n]`: greedy decoding feeds growing prefixes)

    def to(self, device) -> LayerDraws:
        return dataclasses.replace(self, device=device)

    def __getitem__(self, part: slice) -> LayerDraws:
        if not isinstance(part, slice) or part.start not in (None, 0) or part.step not in (None, 1):
            raise TypeError("LayerDraws take prefixes only: draws[:n]")
        n = len(range(self.T)[:part.stop]) if self.stop is None else len(range(self.stop)[:part.stop])
        return dataclasses.replace(self, stop=n)

    def _tensor(self, drawn: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(drawn, dtype=np.int64)[:self.stop]).to(self.device)

    @property
    def embed_T(self) -> torch.Tensor:
        """The input's draw (sin/cos, learned: `add_positional_encodings`), (T,): the shared mode's draw."""
        return self._tensor(self.mode.draw(self.T, _rng(*self.key)))

    def positions(self, layer: int) -> torch.Tensor:
        """Layer `layer`'s T sorted distinct positions from [0, max_len) (NOISY_ROTARY), (T,)."""
        return self._tensor(self.mode.draw(self.T, _rng(*self.key, LAYER, layer, 0)))

    def distances(self, layer: int) -> torch.Tensor:
        """Layer `layer`'s distances: 0, then T - 1 sorted distinct draws from [1, max_len)
        (`compute_noisy_alibi_encodings_biases`), (T,): offset m = i - j reads entry m."""
        rng = _rng(*self.key, LAYER, layer, 1)
        # = rng.choice(np.arange(1, max_len), ...) draw for draw, without allocating the max_len - 1 candidates
        return self._tensor(np.concatenate([[0], 1 + np.sort(rng.choice(self.mode.max_len - 1, size=self.T - 1,
                                                                        replace=False))]))


class Randomized(_Ranged):
    """T distinct positions uniform in [0, max_len), sorted, drawn again in every attention layer; distance
    biases draw sorted distances instead (Ruoss et al. 2023, arXiv:2305.16843; module docstring)."""

    name = "randomized"

    def draw(self, T, rng):
        return np.sort(rng.choice(self.max_len, size=T, replace=False))

    def for_step(self, T, seed, step, micro=0, batch=1, first=0):
        return LayerDraws(self, T, (seed, step, micro))

    def for_eval(self, T, seed, step, micro=0):
        self.check_eval(T)
        return LayerDraws(self, T, (seed, step, micro))


class RandomizedShared(Randomized):
    """lenx's earlier randomized positions: one draw per forward for the input and every layer (distance biases
    read differences of the drawn positions), bitwise the draws `randomized` made before it drew per layer."""

    name = "randomized_shared"

    def for_step(self, T, seed, step, micro=0, batch=1, first=0):
        return self.shared(T, seed, step, micro)

    def for_eval(self, T, seed, step, micro=0):
        self.check_eval(T)
        return self.shared(T, seed, step, micro)


class Offset(_PerExample):
    """o + 0..T-1, o uniform in {0..max_len - T} per sequence; default positions at evaluation shifted by SHAPE's
    K = max_len - T + 1 (`eval_offset` null) (Kiyono et al. 2021, arXiv:2106.03143; module docstring)."""

    name = "offset"

    def __init__(self, *, max_len: int | None = None, eval_offset: int | None = None) -> None:
        super().__init__(max_len=max_len)
        if eval_offset is not None:
            check_int(eval_offset, "positions.eval_offset", minimum=0)
            if eval_offset > MAX_POSITIONS:
                raise ConfigError(f"positions.eval_offset={eval_offset} is more than the {MAX_POSITIONS} (2**31) "
                                  "positions lenx supports; use a smaller value")
        self.eval_offset = eval_offset

    def draw(self, T, rng):
        return int(rng.integers(0, self.max_len - T + 1)) + np.arange(T)

    def eval_start(self, train_len):
        if self.eval_offset is not None:
            return self.eval_offset
        return 0 if self.max_len is None else self.max_len - train_len + 1  # SHAPE's K: one past the last offset

    def span(self, train_len):
        if self.max_len is None:
            return train_len
        return self.max_len + self.eval_start(train_len)  # evaluation reads eval_offset + 0..max_len - 1


class OffsetBatch(Offset):
    """lenx's earlier offsets: one o per batch, scoring at 0 (`eval_offset` 0)."""

    name = "offset_batch"

    def __init__(self, *, max_len: int | None = None, eval_offset: int | None = 0) -> None:
        super().__init__(max_len=max_len, eval_offset=eval_offset)

    def for_step(self, T, seed, step, micro=0, batch=1, first=0):
        return self.shared(T, seed, step, micro)


class PoSE(_PerExample):
    """Positional skip-wise training (Zhu et al. 2023, arXiv:2309.10400): chunks of contiguous positions with
    skips between them, covering distances up to target_len - 1 (max_len here is the paper's target length),
    drawn per example as the released code does."""

    name = "pose"
    length_key = "target_len"

    def __init__(self, *, target_len: int | None = None, chunks: int = 2) -> None:
        super().__init__(max_len=target_len)
        self.chunks = check_int(chunks, "positions.chunks", minimum=2)

    def draw(self, T, rng):
        if T < self.chunks:
            raise ConfigError(f"positions={self.name} with {self.chunks} chunks needs windows of at least that many "
                              f"tokens, got {T}")
        room = self.max_len - T  # the total skip
        if self.chunks == 2:  # the released code: first chunk U{1..ceil(T/2)} at 0.., second shifted by U{0..room}
            cuts = np.array([int(rng.integers(1, (T + 1) // 2 + 1))])
            skips = np.array([0, int(rng.integers(0, room + 1))])
        else:  # the paper's general form: random cut points, non-decreasing skips with the first chunk at 0
            cuts = np.sort(rng.choice(np.arange(1, T), size=self.chunks - 1, replace=False))
            skips = np.concatenate([[0], np.sort(rng.integers(0, room + 1, size=self.chunks - 1))])
        chunk = np.searchsorted(cuts, np.arange(T), side="right")  # which chunk each token is in
        return np.arange(T) + skips[chunk]


class PoSEBatch(PoSE):
    """lenx's earlier PoSE: one (cut, skip) per batch, shared by its examples."""

    name = "pose_batch"

    def for_step(self, T, seed, step, micro=0, batch=1, first=0):
        return self.shared(T, seed, step, micro)


CONTIGUOUS = {"_target_": "lenx.positions.Contiguous"}


def build(cfg: dict) -> Positions:
    """The position mode of a run config (`positions`; absent in older configs: contiguous)."""
    mode = instantiate_node(cfg.get("positions") or CONTIGUOUS, "positions")
    if not isinstance(mode, Positions):
        raise ConfigError(f"positions: {cfg['positions'].get('_target_')} is not a lenx.positions.Positions")
    return mode


def resolved(cfg: dict) -> Positions:
    """The run's position mode with its null length set (seq_len x the largest eval multiplier)."""
    return build(cfg).resolve(cfg["seq_len"], (cfg.get("eval") or {}).get("multipliers") or [1])


def configure(cfg: dict) -> Positions:
    """The run's position mode with its null length set, in cfg too (seq_len x the largest eval multiplier), so
    that the checkpoint records the number its model was sized and trained for."""
    mode = resolved(cfg)
    if isinstance(mode, _Ranged) and cfg.get("positions"):
        cfg["positions"] = {**cfg["positions"], mode.length_key: mode.max_len}
    return mode


def eval_offset(cfg: dict) -> int:
    """Where the run's model starts its default positions (`Decoder.position_offset`): SHAPE's evaluation offset
    for positions=offset, else 0."""
    return resolved(cfg).eval_start(cfg["seq_len"]) if cfg.get("positions") else 0


def table_size(cfg: dict) -> dict:
    """cfg's pos config with a learned table (`max_positions: null`) sized to every position the mode can give."""
    pos, span = cfg["pos"], build(cfg).span(cfg["seq_len"])
    if "max_positions" in pos and pos["max_positions"] is None and span > cfg["seq_len"]:
        return {**pos, "max_positions": span}
    return pos
