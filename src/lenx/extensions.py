"""Training-free extensions that change which keys a query sees or how far apart they look (`configs/extension/`),
applied to a trained checkpoint: `python evaluate.py ckpt=... 'extensions=[none,self_extend,rerope,...]'`.

Each method is described by what it does to a (query i, key j) pair with distance d = i - j:
  visible(i, j)   the keys a query may attend to beyond causality (windows and sinks: LM-Infinite, StreamingLLM);
  far(i, j)       pairs whose distance is remapped, to q'(i) - k'(j): the positions the rotation uses for them, and
                  the distance a distance bias is read at (Self-Extend, ReRoPE, LM-Infinite's distance limit,
                  StreamingLLM's positions in its cache);
  q_scale(i)      a factor on the query (log-n scaling).
Windows and limits default to fractions of the training length L, as each paper sets them against its
pretraining length, and each method is the identity where it changes nothing (attention then takes its usual
path, so the logits equal `none` exactly): `logn`, `lm_infinite` and `streaming` within L, `self_extend` and
`rerope` while their windows cover every distance. Remapped distances need a scheme whose positional terms are
a function of the distance: the rotary schemes (rope, rope_partial, xpos) and the distance biases (alibi,
alibi_learned, t5, kerple_*, sandwich); windows and sinks also apply to NoPE; `logn` applies to every scheme.
Anything else is refused with one line. Attention's path under such an extension, "extended", is
lenx.attn_paths.attend_extended.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# an `extensions=[...]` entry is built where configs are read (lenx.configs.build_extension), public here too
from lenx.configs import build_extension as build  # noqa: F401
from lenx.errors import ConfigError, check_int
from lenx.modifiers import (
    check_extended,
)
from lenx.pos.base import PositionalScheme
from lenx.pos.bias import DistanceBias
from lenx.pos.rope import Rotary


@dataclass(frozen=True)
class Pairs:
    """What an extension does to the pairs of one chunk of queries (t) and its keys (s)."""

    visible_ts: torch.Tensor | None = None  # bool: keys the query may see (None: every causal key)
    far_ts: torch.Tensor | None = None  # bool: pairs at a remapped distance
    q_far_t: torch.Tensor | None = None  # query positions for the far pairs
    k_far_s: torch.Tensor | None = None  # key positions for the far pairs


class Extension:
    """No extension: attention as trained."""

    name = "none"
    remaps = False  # changes distances (needs a scheme whose terms are a function of the distance)
    windows = False  # restricts the keys a query sees

    def resolve(self, train_len: int) -> Extension:
        """This method with null parameters set from the training length (checked)."""
        out = type(self).__new__(type(self))
        out.__dict__.update(vars(self), train_len=train_len)
        out.check()
        return out

    def check(self) -> None:
        pass

    def for_input(self, q_pos_T: torch.Tensor, k_pos_S: torch.Tensor) -> Extension:
        """This method as it runs on one input (a forward over these positions): whatever it derives from the
        input's length is fixed here, once, so that every chunk of queries sees the same method."""
        return self

    def active(self, q_pos_T: torch.Tensor, k_pos_S: torch.Tensor) -> bool:
        """Whether the method changes anything for these positions (else attention runs as without it)."""
        return False

    def q_scale(self, q_pos_T: torch.Tensor) -> torch.Tensor | None:
        return None

    def pairs(self, i_t: torch.Tensor, j_s: torch.Tensor) -> Pairs:
        return Pairs()

    def key_range(self, a: int, b: int) -> tuple[int, int] | None:
        """For window methods with default positions: (sinks, first window key) of queries a..b-1, so attention
        reads keys 0..sinks-1 and first..b-1 only; None: every key up to the chunk's last query."""
        return None

    window_tokens: int | None = None  # a window method's window: attention takes chunks of at most this many
    # queries, so that each reads about twice its window of keys and the cost falls with the window

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in vars(self).items())})"


def _fraction(value, train_len: int, name: str) -> int:
    """A window given as a fraction of L (float <= 1... any float) or as tokens (int)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"extension {name} must be a finite positive number of tokens or a fraction of the training "
                          f"length, got {value!r}")
    return int(value) if isinstance(value, int) else max(1, round(value * train_len))


def logn_scale(q_pos_T: torch.Tensor, train_len: int) -> torch.Tensor:
    """log(p + 1) / log(L), at least 1 (Qwen's `logn_list`, Su's ReRoPE code): 1 within the training length."""
    return (torch.log(q_pos_T.double() + 1) / math.log(train_len)).clamp(min=1).float()


class LogN(Extension):
    """Log-n attention scaling as Qwen's released code runs it (`use_logn_attn`, its `logn_list`; Su's entropy-
    invariance scaling, kexue.fm/archives/8823): the query at position p > L is scaled by log(p + 1) / log L,
    at least 1, so attention entropy stays near what training saw. Chiang & Cholak 2022 (arXiv:2202.12172) scale
    logits by log n of the sequence length, from the start of training: a different formula, not this one."""

    name = "logn"

    def active(self, q_pos_T, k_pos_S):
        return int(q_pos_T.max()) + 1 > self.train_len

    def q_scale(self, q_pos_T):
        return logn_scale(q_pos_T, self.train_len)


class ReRoPE(Extension):
    """Rectified RoPE (Su 2023, kexue.fm/archives/9708): distances of `window` and beyond are read as `window`
    (the query rotated to position window, the key left at 0), with the released code's log-n query scaling
    (`logn: true`; false for the bare clamp). The released default is window 512 at training length 4096: L / 8."""

    name = "rerope"
    remaps = True

    def __init__(self, *, window: float = 0.125, logn: bool = True) -> None:
        if not isinstance(logn, bool):
            raise ConfigError(f"rerope logn must be true or false, got {logn!r}")
        self.window, self.logn = window, logn

    def check(self):
        self.w = _fraction(self.window, self.train_len, "rerope.window")

    def active(self, q_pos_T, k_pos_S):
        far = int(q_pos_T.max()) - int(k_pos_S.min()) >= self.w
        return far or (self.logn and int(q_pos_T.max()) + 1 > self.train_len)

    def q_scale(self, q_pos_T):
        return logn_scale(q_pos_T, self.train_len) if self.logn else None

    def pairs(self, i_t, j_s):
        return Pairs(far_ts=(i_t[:, None] - j_s[None, :]) >= self.w, q_far_t=torch.full_like(i_t, self.w),
                     k_far_s=torch.zeros_like(j_s))


class SelfExtend(Extension):
    """Self-Extend (Jin et al. 2024, arXiv:2401.01325; released code datamllab/LongLM): pairs closer than the
    neighbour window W keep their positions; farther pairs use grouped positions, the query at i // G + W - W // G
    and the key at j // G, merged into one softmax. LongLM runs one group size G per input. `group: null` (lenx's
    choice where the paper leaves G to the user) sets it once per input from the input's last position p: the
    smallest G that keeps every grouped distance below L, p // G + W - W // G <= L - 1 (the README's rule; the
    paper's (L - W) G + W >= length is its real-valued approximation); G = 1, the identity, within L. Every chunk of queries of that input uses
    the same G (`for_input`), so the logits do not depend on how attention chunks its queries."""

    name = "self_extend"
    remaps = True

    def __init__(self, *, window: float = 0.25, group: int | None = None) -> None:
        if group is not None:
            check_int(group, "self_extend.group")
        self.window, self.group = window, group

    def check(self):
        self.W = _fraction(self.window, self.train_len, "self_extend.window")
        if self.W >= self.train_len:
            raise ConfigError(f"self_extend.window={self.W} must be shorter than the training length "
                              f"{self.train_len}: grouped positions start past the window")

    def group_size(self, length: int) -> int:
        """G for an input of `length` positions (0..length - 1): `group`, or the rule of the class docstring."""
        if self.group is not None:
            return self.group
        G = 1
        while (length - 1) // G + self.W - self.W // G > self.train_len - 1:
            G += 1
        return G

    def for_input(self, q_pos_T, k_pos_S):
        out = type(self).__new__(type(self))
        out.__dict__.update(vars(self), G=self.group_size(int(q_pos_T.max()) + 1))
        return out

    def active(self, q_pos_T, k_pos_S):
        G = getattr(self, "G", None) or self.group_size(int(q_pos_T.max()) + 1)
        return G > 1 and int(q_pos_T.max()) - int(k_pos_S.min()) >= self.W

    def pairs(self, i_t, j_s):
        G = self.G  # fixed per input by for_input (attention's plan), never per chunk of queries
        return Pairs(far_ts=(i_t[:, None] - j_s[None, :]) >= self.W, q_far_t=i_t // G + self.W - self.W // G,
                     k_far_s=j_s // G)


class LMInfinite(Extension):
    """LM-Infinite (Han et al. 2023, arXiv:2308.16137): a Λ-shaped mask (the first `n_global` tokens and a local
    window) and a distance limit: farther pairs (the global tokens) are read at distance `limit`. The paper's
    n_global 10 and window = limit = the pretraining length: here L."""

    name = "lm_infinite"
    remaps = windows = True

    def __init__(self, *, n_global: int = 10, window: float = 1.0, limit: float = 1.0) -> None:
        check_int(n_global, "lm_infinite.n_global", minimum=0)
        self.n_global, self.window, self.limit = n_global, window, limit

    def check(self):
        self.W = _fraction(self.window, self.train_len, "lm_infinite.window")
        self.D = _fraction(self.limit, self.train_len, "lm_infinite.limit")

    def active(self, q_pos_T, k_pos_S):
        return int(q_pos_T.max()) - int(k_pos_S.min()) >= min(self.W, self.D)

    def pairs(self, i_t, j_s):
        d = i_t[:, None] - j_s[None, :]
        return Pairs(visible_ts=(d < self.W) | (j_s[None, :] < self.n_global), far_ts=d >= self.D,
                     q_far_t=torch.full_like(i_t, self.D), k_far_s=torch.zeros_like(j_s))

    def key_range(self, a, b):
        return self.n_global, max(self.n_global, a - self.W + 1)

    @property
    def window_tokens(self):
        return self.W


class Streaming(Extension):
    """StreamingLLM (Xiao et al. 2023, arXiv:2309.17453): a cache of `cache` tokens, `sinks` attention sinks plus
    the most recent cache - sinks, positions assigned within the cache. Scored on a whole sequence: query i sees
    the sinks and keys i - (cache - sinks) + 1..i, every key while i < cache; once the cache is full the query sits
    at cache position cache - 1, so a window key keeps its distance i - j and a sink k is read at distance
    cache - 1 - k, which is what token-by-token generation with that cache computes. The paper: 4 sinks and a
    cache of the pretraining length: here L."""

    name = "streaming"
    remaps = windows = True

    def __init__(self, *, sinks: int = 4, cache: float = 1.0) -> None:
        check_int(sinks, "streaming.sinks", minimum=0)
        self.sinks, self.cache = sinks, cache

    def check(self):
        self.C = _fraction(self.cache, self.train_len, "streaming.cache")
        if self.C <= self.sinks:
            raise ConfigError(f"streaming.cache={self.C} must hold more than its {self.sinks} sinks")

    def active(self, q_pos_T, k_pos_S):
        return int(q_pos_T.max()) >= self.C

    def pairs(self, i_t, j_s):
        W, full_t = self.C - self.sinks, i_t >= self.C
        d, sink_s = i_t[:, None] - j_s[None, :], j_s < self.sinks
        return Pairs(visible_ts=(d < W) | sink_s[None, :] | ~full_t[:, None],
                     far_ts=full_t[:, None] & sink_s[None, :] & (d >= W),
                     q_far_t=i_t.clamp(max=self.C - 1), k_far_s=j_s)

    def key_range(self, a, b):
        return (self.sinks, max(self.sinks, a - (self.C - self.sinks) + 1)) if a >= self.C else None

    @property
    def window_tokens(self):
        return self.C - self.sinks


def check_applies(extension: Extension, pos, scheme: str, modifiers=()) -> None:
    """Refuse, before scoring, a method whose remapped distances the scheme cannot take (`logn` takes any), or
    whose path the model's attention modifiers (each layer's, `modifiers`) cannot take."""
    if not (extension.remaps or extension.windows):
        return
    for mods in modifiers:
        check_extended(extension.name, mods)
    if isinstance(pos, (Rotary, DistanceBias)):
        return
    if type(pos) is PositionalScheme:  # NoPE: a window applies; there are no positions to remap
        if extension.windows:
            return
        raise ConfigError(f"extension {extension.name} has no effect on pos={scheme}: it remaps positions, and "
                          f"{scheme} reads none")
    raise ConfigError(f"extension {extension.name} does not apply to pos={scheme}: it remaps distances and windows "
                      "keys, which needs positional terms that are a function of the distance (rotary: rope, "
                      "rope_partial, xpos; distance biases: alibi, alibi_learned, t5, kerple_*, sandwich; windows "
                      f"alone: none); {type(pos).__name__}'s are not")
