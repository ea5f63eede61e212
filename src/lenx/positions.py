"""Train-time position augmentation: which positions a training window's tokens get (`configs/positions/`).

The encodings stay as they are; only the positions the Decoder is given during training change, so every mode
composes with every scheme and RoPE scaling. A mode draws one position vector per training forward (shared by the
batch's sequences), from a generator seeded by (seed, step, micro-batch), so a run is reproducible from its seed
and a resumed run draws what the uninterrupted one drew. Validation and evaluation use contiguous positions.

- `contiguous`: 0..T-1, today's training, bitwise (the Decoder's default positions and its Toeplitz fast path).
- `randomized` (Ruoss et al. 2023, arXiv:2305.16843): T distinct positions drawn uniformly from [0, max_len)
  without replacement and sorted, as the authors' `noisy_fixed_positional_encodings` does (one draw per forward,
  shared by the batch).
- `pose` (Zhu et al. 2023, arXiv:2309.10400): the window split into `chunks` pieces of contiguous positions with
  skips between them, so that relative distances up to target_len - 1 occur while training on T tokens. With two
  chunks (the authors' released code, `train_preprocess_function_pose` with its `lt = 0` revision): the first chunk
  has length U{1..ceil(T/2)} and keeps positions 0.., the second is shifted by a skip U{0..target_len - T}. More
  chunks (the paper's general form): cut points drawn without replacement, skips sorted U{0..target_len - T}.
  The released code also takes the second chunk's tokens from later in the document; lenx keeps the window's text
  contiguous and changes positions only (a random window of a token stream has no document to skip within).
- `offset` (random shifts as in SHAPE, Kiyono et al. 2021, arXiv:2106.03143): o + 0..T-1 with o drawn from
  U{0..max_len - T}.
`max_len` / `target_len` null mean seq_len x the largest eval multiplier: the positions evaluation will reach.
"""

from __future__ import annotations

import numpy as np
import torch

from lenx.errors import ConfigError, OutOfRangeError, check_int


class Positions:
    """A position mode: `draw(T, rng)` gives T strictly increasing positions, or None for the default 0..T-1."""

    name = "contiguous"

    def span(self, train_len: int) -> int:
        """How many positions (0..span-1) the mode can give a window of train_len tokens."""
        return train_len

    def draw(self, T: int, rng: np.random.Generator) -> np.ndarray | None:
        return None

    def for_step(self, T: int, seed: int, step: int, micro: int = 0) -> torch.Tensor | None:
        """The positions of the forward at (seed, optimizer step, micro-batch), reproducible from those alone."""
        drawn = self.draw(T, np.random.default_rng((seed, step, micro, 0x9E3779B9)))
        return None if drawn is None else torch.from_numpy(np.asarray(drawn, dtype=np.int64))

    def for_eval(self, T: int, seed: int, step: int, micro: int = 0) -> torch.Tensor | None:
        """for_step for scoring under the mode (eval.positions=train); T past the mode's range is an
        OutOfRangeError, which scoring records as a result."""
        return self.for_step(T, seed, step, micro)

    def resolve(self, train_len: int, eval_multipliers: list[int]) -> Positions:
        """This mode with null lengths set from the run (seq_len x the largest eval multiplier), checked."""
        return self

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in vars(self).items())})"


class Contiguous(Positions):
    """0..T-1: today's training, bitwise."""


class _Ranged(Positions):
    """A mode whose positions lie in [0, max_len) (null: seq_len x the largest eval multiplier)."""

    length_key = "max_len"

    def __init__(self, *, max_len: int | None = None) -> None:
        if max_len is not None:
            check_int(max_len, f"positions.{self.length_key}")
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

    def for_eval(self, T, seed, step, micro=0):
        if T > self.max_len:
            raise OutOfRangeError(f"{T} tokens need more than the {self.max_len} positions of positions={self.name}")
        return self.for_step(T, seed, step, micro)


class Randomized(_Ranged):
    """T distinct positions uniform in [0, max_len), sorted (Ruoss et al. 2023, arXiv:2305.16843)."""

    name = "randomized"

    def draw(self, T, rng):
        return np.sort(rng.choice(self.max_len, size=T, replace=False))


class Offset(_Ranged):
    """o + 0..T-1, o uniform in {0..max_len - T} (random shifts: SHAPE, Kiyono et al. 2021, arXiv:2106.03143)."""

    name = "offset"

    def draw(self, T, rng):
        return int(rng.integers(0, self.max_len - T + 1)) + np.arange(T)


class PoSE(_Ranged):
    """Positional skip-wise training (Zhu et al. 2023, arXiv:2309.10400): chunks of contiguous positions with
    skips between them, covering distances up to target_len - 1 (max_len here is the paper's target length)."""

    name = "pose"
    length_key = "target_len"

    def __init__(self, *, target_len: int | None = None, chunks: int = 2) -> None:
        super().__init__(max_len=target_len)
        self.chunks = check_int(chunks, "positions.chunks", minimum=2)

    def draw(self, T, rng):
        if T < self.chunks:
            raise ConfigError(f"positions=pose with {self.chunks} chunks needs windows of at least that many tokens, "
                              f"got {T}")
        room = self.max_len - T  # the total skip
        if self.chunks == 2:  # the released code: first chunk U{1..ceil(T/2)} at 0.., second shifted by U{0..room}
            cuts = np.array([int(rng.integers(1, (T + 1) // 2 + 1))])
            skips = np.array([0, int(rng.integers(0, room + 1))])
        else:  # the paper's general form: random cut points, non-decreasing skips with the first chunk at 0
            cuts = np.sort(rng.choice(np.arange(1, T), size=self.chunks - 1, replace=False))
            skips = np.concatenate([[0], np.sort(rng.integers(0, room + 1, size=self.chunks - 1))])
        chunk = np.searchsorted(cuts, np.arange(T), side="right")  # which chunk each token is in
        return np.arange(T) + skips[chunk]


CONTIGUOUS = {"_target_": "lenx.positions.Contiguous"}


def build(cfg: dict) -> Positions:
    """The position mode of a run config (`positions`; absent in older configs: contiguous)."""
    from lenx.errors import instantiate_node

    mode = instantiate_node(cfg.get("positions") or CONTIGUOUS, "positions")
    if not isinstance(mode, Positions):
        raise ConfigError(f"positions: {cfg['positions'].get('_target_')} is not a lenx.positions.Positions")
    return mode


def configure(cfg: dict) -> Positions:
    """The run's position mode with its null length set, in cfg too (seq_len x the largest eval multiplier), so
    that the checkpoint records the number its model was sized and trained for."""
    mode = build(cfg).resolve(cfg["seq_len"], (cfg.get("eval") or {}).get("multipliers") or [1])
    if isinstance(mode, _Ranged) and cfg.get("positions"):
        cfg["positions"] = {**cfg["positions"], mode.length_key: mode.max_len}
    return mode


def table_size(cfg: dict) -> dict:
    """cfg's pos config with a learned table (`max_positions: null`) sized to every position the mode can give."""
    pos, span = cfg["pos"], build(cfg).span(cfg["seq_len"])
    if "max_positions" in pos and pos["max_positions"] is None and span > cfg["seq_len"]:
        return {**pos, "max_positions": span}
    return pos
