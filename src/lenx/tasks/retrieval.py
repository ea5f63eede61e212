"""Retrieval tasks: multi-query associative recall as Zoology generates it and lenx's dense key-value recall
(arXiv:2312.04927), RULER's variable tracking and multi-key needle in a haystack (arXiv:2404.06654), and passkey
retrieval (arXiv:2305.16300), over symbols."""

from __future__ import annotations

import numpy as np

from lenx.errors import ConfigError, check_int
from lenx.tasks.base import SEP, SPECIALS, Task, query


class MQAR(Task):
    """Multi-query associative recall as Zoology generates it (Arora et al. 2023, arXiv:2312.04927; the
    authors' HazyResearch/zoology, `zoology/data/multiquery_ar.py`, `multiquery_ar`), one instance at a time.

    Zoology's vocabulary of `vocab` tokens (8192) is kept whole, shifted past lenx's PAD/BOS/SEP: token 0 (`_`,
    its empty slot), keys 1 .. vocab/2 - 1 (`k<t>`), values vocab/2 .. vocab - 1 (`v<t>`). An instance of `size`
    pairs has L = tokens_per_pair x size tokens (Zoology's input_seq_len; 16 per pair as in its paper's configs,
    64/4, 128/8, 256/16); after BOS:
      - `size` pairs `k v`, keys and values each drawn without replacement from their half;
      - then L - 2 size tokens in which key i is asked again at offset 2 gap_i: the gaps are drawn without
        replacement from 0 .. space - 1 (space = L/2 - size) with p(gap = k - 1) proportional to
        power_a k^(power_a - 1) (power_a 0.01: most queries soon after the pairs, a long tail), assigned to the
        keys in draw order;
      - every other slot is noise, uniform over all `vocab` tokens (Zoology's random_non_queries, default true;
        false leaves its empty token 0), the slot after each query included.
    The answers are labels only, as Zoology's (`Task.draw`): the instance's ids are Zoology's `inputs` token for
    token (noise, or `_`, in the slot after each query: the value is never put there), and its labels carry the
    query's value in that slot. lenx scores the output at position t against labels[t + 1], so the output at the
    query predicts the value, as Zoology's labels[t] (-100 elsewhere: the mask marks the `size` answers only).
    Loss and score are on them alone, `token_accuracy` at one size is Zoology's per-query accuracy, and greedy
    decoding equals teacher decoding (nothing is fed back).

    Keys, values and gaps are Zoology's own draws: one legacy numpy RandomState per instance (seeded from lenx's
    instance generator) makes the calls `multiquery_ar` makes for num_examples=1, in its order (tested against a
    re-implementation of it). Departures: (1) BOS comes first; (2) the noise comes from the same RandomState
    (Zoology: torch's unseeded global generator); (3) Zoology asserts vocab > L, a guard lenx drops so that
    scoring may go past it (the generator is well defined there; only more pairs than the vocab/2 - 1 keys is
    `too_large`); (4) sizes follow lenx: training draws the number of pairs uniformly in [min_size, train_size],
    scoring uses multiplier x train_size pairs in multiplier x the tokens, where Zoology trains on fixed
    (L, pairs) configs. (Before, the value stood in the sequence after its query, a token later positions read
    under teacher forcing; issue 32 made it a label only.) Cost: the
    8192-token vocabulary puts an 8195-way output layer on a tiny model: a training step of d_model 64, 2 layers,
    batch 32 of 8 pairs took 1.86 s against 0.11 s with vocab 64 (one shared CPU thread, measured); a smaller
    `vocab` is a variant (the layout is unchanged; noise tokens repeat a pair's key more often, unlabelled as in
    Zoology). Zoology's JRT option (num_passes) is not here.

    Zoology's extrapolation setting (`zoology/data/ar_extrapolate.py`, configs/data/mqar_extrapolate.yaml) is this
    generator (its `_mqar`, every key asked; ARConfig's num_queries is not read) over a set of (input_seq_len,
    pairs) configs, trained on few pairs and tested on more: its experiments (paper_configs/arxiv24_based_ablations,
    01-26_extrap.py) train on 4, 8, 16 pairs in 64 tokens, 32 in 128 and 64 in 256 (100k/20k/20k/10k/5k
    examples) and test those and 128 pairs in 512, 256 in 1024 tokens. Two options give it: `min_tokens`, a floor
    on the length (L = max(min_tokens, tokens_per_pair x pairs): 64 and 4 per pair give those configs), and
    `train_mix`, training sizes with weights (`4:100000,8:20000,...`) instead of uniform ones; scoring at
    multiplier x train_size (64 pairs) is its 128- and 256-pair tests at 2x and 4x."""

    name = "mqar"
    sizes = "pairs"

    def __init__(self, *, train_size: int, min_size: int = 1, vocab: int = 8192, tokens_per_pair: int = 16,
                 power_a: float = 0.01, random_non_queries: bool = True, min_tokens: int = 0,
                 train_mix: str = "") -> None:
        super().__init__(train_size=train_size, min_size=min_size)
        self.min_tokens = check_int(min_tokens, "data.task.min_tokens", minimum=0)
        if min_tokens % 2:  # Zoology asserts an even input_seq_len
            raise ConfigError(f"data.task.min_tokens must be even (as Zoology's input_seq_len), got {min_tokens}")
        self.mix = self.parse_mix(train_mix, min_size, train_size)
        self.vocab_tokens = check_int(vocab, "data.task.vocab", minimum=4)
        self.tokens_per_pair = check_int(tokens_per_pair, "data.task.tokens_per_pair", minimum=4)
        if tokens_per_pair % 2:  # Zoology asserts an even input_seq_len, and 4 tokens per pair at least (minimum=4)
            raise ConfigError(f"data.task.tokens_per_pair must be even (as Zoology's input_seq_len), got "
                              f"{tokens_per_pair}")
        if isinstance(power_a, bool) or not isinstance(power_a, (int, float)) or not power_a > 0:
            raise ConfigError(f"data.task.power_a must be a positive number, got {power_a!r}")
        if not isinstance(random_non_queries, bool):
            raise ConfigError(f"data.task.random_non_queries must be true or false, got {random_non_queries!r}")
        self.power_a, self.random_non_queries = float(power_a), random_non_queries
        # one legacy generator, reseeded per draw: seeding costs 1.5 us, building a RandomState 140 us (most of a draw)
        self._legacy = np.random.RandomState(0)
        if self.too_large(train_size):
            raise ConfigError(f"data.task: {self.too_large(train_size)}")

    @staticmethod
    def parse_mix(spec: str, lo: int, hi: int) -> tuple[list[int], list[float]] | None:
        """`size:weight,...` as (sizes, probabilities), each size in [lo, hi]; "" -> None (uniform sizes)."""
        if not isinstance(spec, str):
            raise ConfigError(f"data.task.train_mix must be a string like 4:100000,8:20000, got {spec!r}")
        if not spec.strip():
            return None
        try:
            pairs = [(int(a), float(b)) for a, b in (item.split(":") for item in spec.split(","))]
        except ValueError:
            raise ConfigError(f"data.task.train_mix must be size:weight pairs joined by commas (e.g. "
                              f"4:100000,8:20000), got {spec!r}") from None
        if any(not lo <= n <= hi or w <= 0 for n, w in pairs) or len({n for n, _ in pairs}) != len(pairs):
            raise ConfigError(f"data.task.train_mix={spec!r}: distinct sizes in [min_size, train_size] = [{lo}, {hi}]"
                              " with positive weights")
        total = sum(w for _, w in pairs)
        return [n for n, _ in pairs], [w / total for _, w in pairs]

    def train_draw_size(self, rng):
        if self.mix is None:
            return super().train_draw_size(rng)
        sizes, p = self.mix
        return sizes[int(rng.choice(len(sizes), p=p))]

    def length(self, size: int) -> int:
        """Zoology's input_seq_len for `size` pairs: tokens_per_pair x size, at least min_tokens."""
        return max(self.min_tokens, self.tokens_per_pair * size)

    def symbols(self):
        half = self.vocab_tokens // 2
        return ["_"] + [f"k{t}" for t in range(1, half)] + [f"v{t}" for t in range(half, self.vocab_tokens)]

    def too_large(self, size):
        keys = self.vocab_tokens // 2 - 1
        return f"{size} pairs need more than the {keys} keys of vocab={self.vocab_tokens}" if size > keys else None

    def gap_p(self, space: int) -> np.ndarray:
        """Zoology's power law over the gaps 0 .. space - 1, computed as it computes it (the same floats)."""
        p = self.power_a * np.arange(1, space + 1) ** (self.power_a - 1)
        return p / p.sum()

    def sample(self, size: int, rs: np.random.RandomState) -> tuple[list[int], list[bool], list[int]]:
        """One instance from a legacy RandomState, in Zoology's token ids (0 .. vocab - 1, not shifted): its inputs
        (L,), the answer mask and the labels (the inputs, but each query's value in the slot after it)."""
        V, n, L = self.vocab_tokens, size, self.length(size)
        ctx = 2 * n
        keys = rs.choice(np.arange(1, V // 2), replace=False, size=n)
        vals = rs.choice(np.arange(V // 2, V), replace=False, size=n)
        space = (L - ctx) // 2
        gaps = rs.choice(np.arange(space), replace=False, p=self.gap_p(space), size=n)
        z = np.zeros(L, dtype=np.int64)
        z[0:ctx:2], z[1:ctx:2] = keys, vals
        z[ctx + 2 * gaps] = keys
        mask = np.zeros(L, dtype=bool)
        mask[ctx + 2 * gaps + 1] = True
        if self.random_non_queries:  # Zoology draws noise over the whole input and keeps it where the input is 0:
            noise = rs.randint(V, size=L)  # the empty slots and the slot after each query (keys, values are > 0)
            z[z == 0] = noise[z == 0]
        labels = z.copy()
        labels[ctx + 2 * gaps + 1] = vals  # a label only: the input there stays noise (or 0), as Zoology's
        return z.tolist(), mask.tolist(), labels.tolist()

    def draw(self, size, rng):
        self._legacy.seed(int(rng.integers(2**32)))  # as np.random.seed(seed) in Zoology
        ids, mask, labels = self.sample(size, self._legacy)
        return [t + len(SPECIALS) for t in ids], mask, [t + len(SPECIALS) for t in labels]

    def max_len(self, size):
        return 1 + self.length(size)


class KVRecall(Task):
    """Key-value recall over a small vocabulary, lenx's dense variant of multi-query associative recall (after Arora
    et al. 2023, arXiv:2312.04927): `size` key-value pairs (distinct keys, values drawn with replacement), `SEP`, then
    every key again in a random order, each followed by its value (the answers, interleaved with the queries). No
    noise, no gaps: not Zoology's generator, which is `MQAR`. This was `data=mqar` before issue 32."""

    name = "kv_recall"
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
