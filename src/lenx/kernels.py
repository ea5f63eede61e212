"""Attention's generic kernels: what attention builds from a scheme's data, knowing its own memory layout.

A bias of the distance from its per-head table (a Toeplitz copy, or a strided view over reversed keys that writes
nothing of the mask's size), a linear bias as exact extra channels of q and k, content terms placed by distance in
one buffer read through a strided view (the relative shift), and the workspace that a scheme's chunk masks reuse.
lenx.attention chooses among them (its plan); schemes call the layout helpers from their one fast hook
(`chunk_mask`). Also `traced` (records the kernels that ran, for the tests) and `PlanError` (a kernel sent where it
cannot run). Depends on torch alone.
Shapes: B batch, H heads, T / t queries (of a chunk), S / s keys, R distances, D head dim.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F


class Workspace:
    """Flat buffers that every chunk of a layer's attention reuses for its mask (`chunk_mask`), one per slot: a
    fresh (B, H, t, s + t - 1) tensor per chunk paid its page faults each time (on CPU at 8192 tokens, 85 of the
    110 ms of writing one, measured). Attention takes the largest chunk first, so the first take of each slot
    is its largest; a chunk's mask is read by SDPA before the next chunk takes the buffers."""

    def __init__(self) -> None:
        self.flat: dict[int, torch.Tensor] = {}

    def take(self, shape: tuple[int, ...], like: torch.Tensor, slot: int = 0,
             dtype: torch.dtype | None = None) -> torch.Tensor:
        """An uninitialised contiguous tensor of this shape on like's device, in dtype (default like's)."""
        n, dtype = math.prod(shape), dtype or like.dtype
        flat = self.flat.get(slot)
        if flat is None or flat.numel() < n or flat.dtype != dtype or flat.device != like.device:
            flat = self.flat[slot] = torch.empty(n, dtype=dtype, device=like.device)
        return flat[:n].view(shape)


# Positions up to which a linear bias is summed exactly as channels of q and k (`linear_bias_channels`): slopes
# split in a part whose products with every position are exact in fp32 and a remainder whose products stay small.
FEATURE_POSITIONS = 1 << 16


def split_slopes(slopes_H: torch.Tensor, last: int) -> torch.Tensor:
    """The slopes rounded to 24 - bits(last) significant bits: times any position <= `last` they are exact in
    fp32 (a power-of-two slope, as for 2^k heads, is kept whole)."""
    bits = 24 - max(1, int(last).bit_length())
    mant, exp = torch.frexp(slopes_H.detach().float())
    return torch.ldexp(torch.round(torch.ldexp(mant, torch.full_like(exp, bits))), exp - bits)


def linear_bias_channels(slopes_H: torch.Tensor, q_pos_T: torch.Tensor, k_pos_S: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """-m (i - j) as q_i . k_j + const_i: q_i = (1, -hi i, 1, -lo i), k_j = (hi j, 1, lo j, 1) with m = hi + lo
    (`split_slopes`), fp32 (H, T, c) and (H, S, c). Added first, hi j - hi i is exact, lo's products are below
    2^(2 bits(last) - 24) m, so the logits equal the mask path's to fp32 rounding of the small terms (tested at
    8192 tokens). The lo channels are dropped when every slope is whole (2^k heads) and no gradient needs them."""
    last = int(torch.maximum(q_pos_T.max(), k_pos_S.max()))
    m_H = slopes_H.float()
    hi_H = split_slopes(m_H, last)
    lo_H = m_H - hi_H
    i_T, j_S = q_pos_T.float(), k_pos_S.float()
    q, k = [], []
    for part_H in (hi_H, lo_H) if lo_H.requires_grad or bool(lo_H.any()) else (hi_H,):
        q += [torch.ones(len(m_H), len(i_T), device=i_T.device), -part_H[:, None] * i_T]
        k += [part_H[:, None] * j_S, torch.ones(len(m_H), len(j_S), device=j_S.device)]
    return torch.stack(q, -1), torch.stack(k, -1)


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


def toeplitz_view(bias_HR: torch.Tensor, q_start: int, t: int, s: int, dtype: torch.dtype) -> torch.Tensor:
    """The causal distance-bias mask of queries q_start..q_start+t-1 against the keys s-1, s-2, ..., 0 (reversed),
    (1, H, t, s), as a strided view of one vector of the t + s - 1 distances q_start - s + 1 .. q_start + t - 1
    (-inf where negative: future keys). Entry (i, c) reads key s - 1 - c at distance q_start + i - s + 1 + c, so
    both strides are +1 and nothing of size (H, t, s) is ever written: attention hands SDPA the keys and values
    reversed with it (CPU SDPA reads the overlapping view as it is; at 8192 tokens building toeplitz_mask's
    copies took 4/5 of the attention time)."""
    d_K = torch.arange(q_start - s + 1, q_start + t, device=bias_HR.device)
    g_HK = F.embedding(d_K.clamp(0, bias_HR.shape[1] - 1), bias_HR.T).T.float()
    g_HK = g_HK.masked_fill(d_K < 0, float("-inf")).to(dtype).contiguous()
    H, K = g_HK.shape
    return g_HK.as_strided((1, H, t, s), (H * K, K, 1, 1))


def distance_buffer(desc_BHtR: torch.Tensor, s: int, work: Workspace | None = None) -> torch.Tensor:
    """The (B, H, t, s + t - 1) buffer `distance_view` reads: column c < s holds each query's term at distance
    s - 1 - c from desc, its terms in descending distance (the last entry distance 0; distances past R - 1 read
    desc[..., 0], the clipped end). One write of the buffer (in `work` when given)."""
    *lead, t, R = desc_BHtR.shape
    shape = (*lead, t, s + t - 1)
    buf = desc_BHtR.new_empty(shape) if work is None else work.take(shape, desc_BHtR)
    if R >= s:
        buf[..., :s] = desc_BHtR[..., R - s:]
    else:
        buf[..., :s - R] = desc_BHtR[..., :1]
        buf[..., s - R:s] = desc_BHtR
    return buf


def distance_view(buf_BHtW: torch.Tensor, s: int) -> torch.Tensor:
    """The (B, H, t, s) mask of queries s - t..s - 1 against keys 0..s - 1 from a buffer whose column c < s holds
    each query's term at distance s - 1 - c (the same distance in every row; columns from s on are set to -inf
    here: future keys): entry (r, j) reads column t - 1 - r + j, a strided view with row stride s + t - 2 and no
    copy (the relative shift of Dai et al. 2019, arXiv:1901.02860, app. B, where `score` gathers each pair through
    a (t, s) index)."""
    *lead, t, W = buf_BHtW.shape
    buf_BHtW[..., s:] = float("-inf")
    return buf_BHtW.as_strided((*lead, t, s), (*buf_BHtW.stride()[:-2], W - 1, 1), buf_BHtW.storage_offset() + t - 1)


def by_distance(desc_BHtR: torch.Tensor, s: int, work: Workspace | None = None) -> torch.Tensor:
    """entry (r, j) = desc[..., r, R - 1 - min(d, R - 1)] at distance d = s - t + r - j, -inf where d < 0."""
    return distance_view(distance_buffer(desc_BHtR, s, work), s)


def cpu_flash():
    """CPU's fused flash kernel, which returns each row's logsumexp (torch >= 2.3), or None."""
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


class PlanError(RuntimeError):
    """A kernel that cannot run where the plan sent it: a bug in `plan`, never a reason to take another path."""


_TRACE: list[list[str]] = []  # the open `traced()` blocks' records


@contextlib.contextmanager
def traced() -> Iterator[list[str]]:
    """Within it, every kernel that runs appends its path to the list yielded (once per call, or per chunk where a
    path runs chunk by chunk): tests assert that what ran is what the plan said. Observes only."""
    seen: list[str] = []
    _TRACE.append(seen)
    try:
        yield seen
    finally:
        _TRACE.remove(seen)


def _ran(path: str) -> None:
    for seen in _TRACE:
        seen.append(path)
