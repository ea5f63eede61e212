"""Retrieval tasks: multi-query associative recall (arXiv:2312.04927) and RULER's variable tracking and multi-key
needle in a haystack (arXiv:2404.06654), over symbols."""

from __future__ import annotations

import numpy as np

from lenx.errors import ConfigError, check_int
from lenx.tasks.base import SEP, SPECIALS, Task, query


class MQAR(Task):
    """Multi-query associative recall (Arora et al. 2023, arXiv:2312.04927): `size` key-value pairs, then every key
    again in a random order, each followed by its value (the answers, interleaved with the queries)."""

    name = "mqar"
    sizes = "pairs"

    def __init__(self, *, train_size: int, min_size: int = 1, keys: int = 128, values: int = 32) -> None:
        super().__init__(train_size=train_size, min_size=min_size)
        self.keys, self.values = check_int(keys, "data.task.keys"), check_int(values, "data.task.values")
        if train_size > keys:
            raise ConfigError(f"data.task.train_size={train_size} pairs needs at least as many keys (keys={keys})")

    def symbols(self):
        return [f"k{k}" for k in range(self.keys)] + [f"v{v}" for v in range(self.values)]

    def too_large(self, size):
        return f"{size} pairs need more than keys={self.keys}" if size > self.keys else None

    def draw(self, size, rng):
        k = (rng.choice(self.keys, size, replace=False) + len(SPECIALS)).tolist()
        v = (rng.integers(0, self.values, size) + len(SPECIALS) + self.keys).tolist()
        ids = [t for kv in zip(k, v) for t in kv] + [SEP]
        mask = [False] * len(ids)
        for q in rng.permutation(size).tolist():
            ids += [k[q], v[q]]
            mask += [False, True]
        return ids, mask

    def max_len(self, size):
        return 4 * size + 2


class VariableTracking(Task):
    """RULER's variable tracking (Hsieh et al. 2024, arXiv:2404.06654), over symbols: `chains` chains of
    assignments `x0 = V`, `x1 = x0`, ..., with `size` hops each, interleaved at random, `filler` random filler
    symbols after each statement; the query `SEP V` asks for every variable of V's chain, in assignment order."""

    name = "variable_tracking"
    sizes = "hops"

    def __init__(self, *, train_size: int, min_size: int = 1, variables: int = 128, values: int = 16,
                 chains: int = 2, filler: int = 2, filler_symbols: int = 8) -> None:
        super().__init__(train_size=train_size, min_size=min_size)
        self.variables, self.values = check_int(variables, "data.task.variables"), check_int(values,
                                                                                                "data.task.values")
        self.chains, self.filler = check_int(chains, "data.task.chains"), check_int(filler, "data.task.filler", minimum=0)
        self.filler_symbols = check_int(filler_symbols, "data.task.filler_symbols")
        if chains > values:
            raise ConfigError(f"data.task.chains={chains} needs as many distinct values (values={values})")
        if self.too_large(train_size):
            raise ConfigError(f"data.task: {self.too_large(train_size)}")

    def symbols(self):
        return (["="] + [f"x{k}" for k in range(self.variables)] + [f"V{v}" for v in range(self.values)]
                + [f"f{k}" for k in range(self.filler_symbols)])

    def too_large(self, size):
        need = self.chains * (size + 1)
        return f"{self.chains} chains of {size} hops need {need} variables (variables={self.variables})" \
            if need > self.variables else None

    def draw(self, size, rng):
        x0, v0, f0, eq = len(SPECIALS) + 1, len(SPECIALS) + 1 + self.variables, \
            len(SPECIALS) + 1 + self.variables + self.values, self.id("=")
        names = (rng.choice(self.variables, self.chains * (size + 1), replace=False) + x0).reshape(self.chains, -1)
        vals = (rng.choice(self.values, self.chains, replace=False) + v0).tolist()
        order = rng.permutation(np.repeat(np.arange(self.chains), size + 1)).tolist()  # a random interleaving
        step, ids = [0] * self.chains, []
        for c in order:
            h = step[c]
            ids += [int(names[c, h]), eq, vals[c] if h == 0 else int(names[c, h - 1])]
            ids += (rng.integers(0, self.filler_symbols, self.filler) + f0).tolist()
            step[c] += 1
        return query(ids, vals[0], names[0].tolist())

    def max_len(self, size):
        return 1 + self.chains * (size + 1) * (3 + self.filler) + 2 + size + 1


class NiahMultikey(Task):
    """RULER's multi-key needle in a haystack (arXiv:2404.06654), over symbols: `needles` needles `N key value`
    (distinct keys, values of `value_len` symbols) at random places in `size` random filler symbols; the query
    `SEP key` names one of them, the answer is its value (the other needles are distractors)."""

    name = "niah_multikey"
    sizes = "filler symbols"

    def __init__(self, *, train_size: int, min_size: int = 1, needles: int = 4, keys: int = 32, values: int = 16,
                 value_len: int = 2, filler_symbols: int = 16) -> None:
        super().__init__(train_size=train_size, min_size=min_size)
        self.needles, self.keys = check_int(needles, "data.task.needles"), check_int(keys, "data.task.keys")
        self.values, self.value_len = check_int(values, "data.task.values"), check_int(value_len, "data.task.value_len")
        self.filler_symbols = check_int(filler_symbols, "data.task.filler_symbols")
        if needles > keys:
            raise ConfigError(f"data.task.needles={needles} needs as many distinct keys (keys={keys})")

    def symbols(self):
        return (["N"] + [f"k{k}" for k in range(self.keys)] + [f"v{v}" for v in range(self.values)]
                + [f"f{k}" for k in range(self.filler_symbols)])

    def draw(self, size, rng):
        k0 = len(SPECIALS) + 1
        v0, f0 = k0 + self.keys, k0 + self.keys + self.values
        keys = (rng.choice(self.keys, self.needles, replace=False) + k0).tolist()
        vals = (rng.integers(0, self.values, (self.needles, self.value_len)) + v0).tolist()
        fill = (rng.integers(0, self.filler_symbols, size) + f0).tolist()
        at = np.sort(rng.integers(0, size + 1, self.needles)).tolist()  # insertion points in the filler
        ids, prev = [], 0
        for a, k, v in zip(at, keys, vals):
            ids += fill[prev:a] + [self.id("N"), k, *v]
            prev = a
        ids += fill[prev:]
        q = int(rng.integers(0, self.needles))
        return query(ids, keys[q], vals[q])

    def max_len(self, size):
        return 1 + size + self.needles * (2 + self.value_len) + 2 + self.value_len


class Passkey(Task):
    """Passkey retrieval (Mohtashami & Jaggi 2023, arXiv:2305.16300) over symbols: `size` tokens of a fixed filler
    pattern (the paper repeats one sentence: `filler_symbols` symbols in order, cycled) with `KEY d1 .. dk` (a
    random `digits`-digit key) inserted at a uniformly random depth; after `SEP`, the key. The corpus-filler
    variant that fine-tunes a language model on its own tokenizer stays `data=passkey` (lenx.probes)."""

    name = "passkey_task"
    sizes = "filler tokens"

    def __init__(self, *, train_size: int, min_size: int = 1, digits: int = 5, filler_symbols: int = 8) -> None:
        super().__init__(train_size=train_size, min_size=min_size)
        self.digits = check_int(digits, "data.task.digits")
        self.filler_symbols = check_int(filler_symbols, "data.task.filler_symbols")

    def symbols(self):
        return ["KEY", *"0123456789"] + [f"f{k}" for k in range(self.filler_symbols)]

    def draw(self, size, rng):
        d0, f0 = self.id("0"), self.id("f0")
        key = (rng.integers(0, 10, self.digits) + d0).tolist()
        fill = (np.arange(size) % self.filler_symbols + f0).tolist()
        at = int(rng.integers(0, size + 1))  # depth: 0 (the start) .. size (just before the question)
        return self.qa(fill[:at] + [self.id("KEY"), *key] + fill[at:], key)

    def max_len(self, size):
        return 1 + size + 1 + self.digits + 1 + self.digits
