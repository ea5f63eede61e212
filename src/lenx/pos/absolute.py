"""Absolute schemes: a vector per position added to the token embeddings."""

from __future__ import annotations

import math

import torch
from torch import nn

from lenx.errors import ConfigError, OutOfRangeError
from lenx.pos.base import PositionalScheme

INIT_STD = 0.02  # the model's embedding init (lenx.model.Decoder._init)


def sinusoidal_table(pos_T: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """PE(p, 2i) = sin(p / base^(2i/dim)), PE(p, 2i+1) = cos(...), fp32, shape (T, dim).

    Vaswani et al. 2017 (arXiv:1706.03762), section 3.5; sin and cos interleaved as in the paper.
    """
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=pos_T.device) * (-math.log(base) / dim))
    angles_TF = pos_T.to(torch.float32)[:, None] * inv_freq[None, :]
    table = torch.empty(pos_T.shape[0], dim, dtype=torch.float32, device=pos_T.device)
    table[:, 0::2] = torch.sin(angles_TF)
    table[:, 1::2] = torch.cos(angles_TF[:, : dim // 2])
    return table


class Sinusoidal(PositionalScheme):
    """Fixed sinusoidal embeddings (arXiv:1706.03762), computed on the fly for any length: no table to run out of."""

    def __init__(self, *, base: float = 10000.0, scale: float | None = None, **dims) -> None:
        super().__init__(**dims)
        self.base = base
        # null: rms(scale x PE) = 0.02, the std of lenx's token-embedding init (GPT-2), so positions and content
        # start on an equal footing. At unit scale the sinusoids drown the 0.02-scale embeddings (ppl 874 vs 162
        # for NoPE after 150 steps at L=64); at d^-1/2 still 613 (tiny model); at this scale 179.
        self.scale = INIT_STD * math.sqrt(2) if scale is None else float(scale)

    def embed(self, x_BTC, pos_T):
        with torch.autocast(device_type=x_BTC.device.type, enabled=False):  # (T, C), or (B, T, C) for rows
            pe_TC = sinusoidal_table(pos_T.flatten(), self.d_model, self.base).view(*pos_T.shape, -1)
        return x_BTC + (self.scale * pe_TC).to(x_BTC.dtype)


class Learned(PositionalScheme):
    """A learned table of `max_positions` vectors (GPT-2 style; Radford et al. 2019).

    The one scheme that may refuse a position: past its table it raises OutOfRangeError, which the
    evaluator records as 'out_of_range' (extrapolating a learned table is undefined, not a crash), unless
    `interpolate: true` stretches the table over longer inputs (`python evaluate.py ckpt=... scalings=[interpolate]`
    applies it to a trained checkpoint).
    """

    def __init__(self, *, max_positions: int | None = None, interpolate: bool = False, **dims) -> None:
        super().__init__(**dims)
        if not isinstance(interpolate, bool):
            raise ConfigError(f"learned interpolate must be true or false, got {interpolate!r}")
        self.max_positions = max_positions or self.train_len
        self.table = nn.Embedding(self.max_positions, self.d_model)
        nn.init.normal_(self.table.weight, std=0.02)
        self.interpolate = interpolate

    def embed(self, x_BTC, pos_T):
        last = int(pos_T.max())
        if last >= self.max_positions and self.interpolate:
            # Stretch the table over the input: position p reads row p (max_positions - 1) / last, linearly
            # interpolated between its neighbours (position interpolation for absolute tables, cf.
            # arXiv:2306.15595 sec. 2.3 and ViT's resized position embeddings, arXiv:2010.11929 sec. 3.2).
            frac_T = pos_T.to(torch.float32) * (self.max_positions - 1) / last
            lo_T = frac_T.floor().long().clamp(max=self.max_positions - 1)
            hi_T = (lo_T + 1).clamp(max=self.max_positions - 1)
            w_T1 = (frac_T - lo_T)[..., None]  # (T, 1), or (B, T, 1) for per-example rows
            return x_BTC + ((1 - w_T1) * self.table(lo_T) + w_T1 * self.table(hi_T)).to(x_BTC.dtype)
        if last >= self.max_positions:
            raise OutOfRangeError(
                f"learned position table holds {self.max_positions} positions; position {last} is out of range"
            )
        return x_BTC + self.table(pos_T).to(x_BTC.dtype)  # a lookup takes (T,) or (B, T) as it is


def abacus_places(digit_BT: torch.Tensor) -> torch.Tensor:
    """Each token's place in its run of digits, 1 at the run's first token (0 for a non-digit), (B, T) long: the
    distance back to the last non-digit before it, found with a running maximum (no loop over runs)."""
    T = digit_BT.shape[-1]
    t_T = torch.arange(T, device=digit_BT.device)
    last_other_BT = torch.where(digit_BT, -1, t_T).cummax(-1).values  # the last non-digit at or before t (-1: none)
    return torch.where(digit_BT, t_T - last_other_BT, 0)


class Abacus(PositionalScheme):
    """Abacus embeddings (McLeish et al. 2024, arXiv:2405.17399; mcleish7/arithmetic abacus.py): each digit token
    gets a learned vector for its place in its number (1 for the number's first token: with numbers written least
    significant digit first, data.task.order=reversed, as the authors require, place = significance), every other
    token row 0; while training, every digit's place is shifted by one k uniform in 0..max_k per forward (the
    authors' `random.randint(0, max_k)`, here torch's generator, seeded with the run), so that places past the
    trained numbers' lengths have been trained. No other positional signal (the authors' Abacus + NoPE). The scheme
    reads token ids (`embed_tokens`): the ids of the `digits` symbols come from a task run's vocabulary
    (lenx.tasks.configure sets `digit_ids`). The table is initialised as lenx's other tables (N(0, 0.02)); the
    authors' module leaves nn.Embedding's default, which their training code's own init may replace (not read)."""

    def __init__(self, *, digits: str = "0123456789", digit_ids: list[int] | None = None, max_k: int = 99,
                 max_places: int = 1024, **dims) -> None:
        super().__init__(**dims)
        if not isinstance(max_k, int) or max_k < 0 or not isinstance(max_places, int) or max_places <= max_k + 1:
            raise ConfigError(f"abacus: max_k must be >= 0 and max_places > max_k + 1, got {max_k}, {max_places}")
        self.digits, self.max_k, self.max_places = digits, max_k, max_places
        self.register_buffer("digit_ids", torch.tensor(list(digit_ids or []), dtype=torch.long), persistent=False)
        self.table = nn.Embedding(max_places, self.d_model)

    @property
    def reads_positions(self) -> bool:
        return False  # places come from the tokens: a shift or a draw of positions changes nothing

    def embed_tokens(self, x_BTC: torch.Tensor, idx_BT: torch.Tensor) -> torch.Tensor:
        if not len(self.digit_ids):
            raise ConfigError("pos=abacus needs the ids of its digit symbols: a task run (data=addition, ...) whose "
                              "vocabulary has them (lenx.tasks.configure sets pos.digit_ids)")
        places_BT = abacus_places(torch.isin(idx_BT, self.digit_ids))
        if self.training and self.max_k:
            k = int(torch.randint(0, self.max_k + 1, ()))
            places_BT = torch.where(places_BT > 0, places_BT + k, places_BT)
        if int(places_BT.max()) >= self.max_places:
            raise OutOfRangeError(f"abacus: a number of {int(places_BT.max())} digits is past the table's "
                                  f"{self.max_places} places (pos.max_places)")
        return x_BTC + self.table(places_BT).to(x_BTC.dtype)

    def extra_repr(self) -> str:
        return f"digits={self.digits!r}, max_k={self.max_k}, max_places={self.max_places}"
