"""State-tracking tasks: flip-flop language modelling (arXiv:2306.00946), S5/A5 word problems (arXiv:2404.08819),
and CoPE's counting and selective copy (arXiv:2405.18719)."""

from __future__ import annotations

import bisect
import functools
import itertools

import numpy as np

from lenx.errors import ConfigError, check_int
from lenx.tasks.base import SEP, SPECIALS, Task


def _probability(value, name: str, *, top: bool = True) -> float:
    """`value` as a float in [0, 1] (or [0, 1) with top=False), else one ConfigError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value <= 1) or (
            not top and value == 1):
        raise ConfigError(f"data.task.{name} must be a number in [0, {'1]' if top else '1)'}, got {value!r}")
    return float(value)


class FlipFlop(Task):
    """Flip-flop language modelling, FFL(p) (Liu et al. 2023, arXiv:2306.00946): `size` instructions,
    each followed by a bit: `w b` writes b, `i b` is noise (ignored), `r b` reads: b is the last written bit. The
    first instruction is a write and the last a read; the others are i with probability p_ignore, w or r with
    (1 - p_ignore)/2 each; written and ignored bits are uniform. Only the bits after `r` are answers (trained on and
    scored), so exact match is "every read of the sequence right", per-token accuracy the fraction of reads right.
    The paper trains on FFL(0.8) at T = 512 tokens (256 instructions) and tests on sparse FFL(0.98) and dense
    FFL(0.1); p_ignore is a task option, and eval.probes.tasks.task_options={p_ignore: 0.98} scores a trained
    model on another distribution (rows named flip_flop[p_ignore=0.98])."""

    name = "flip_flop"
    sizes = "instructions"

    def __init__(self, *, train_size: int, min_size: int = 2, p_ignore: float = 0.8) -> None:
        super().__init__(train_size=train_size, min_size=min_size)
        if min_size < 2:  # a write first and a read last: two instructions at least
            raise ConfigError(f"data.task.min_size must be at least 2 for flip_flop (a write, then a read), "
                              f"got {min_size}")
        self.p_ignore = _probability(p_ignore, "p_ignore", top=False)  # p = 1: no read could follow a write

    def symbols(self):
        return ["w", "r", "i", "0", "1"]

    def too_large(self, size):
        return "flip_flop needs 2 instructions at least (a write, then a read)" if size < 2 else None

    def draw(self, size, rng):
        p_wr = (1 - self.p_ignore) / 2
        middle = rng.choice(3, size=size - 2, p=[p_wr, p_wr, self.p_ignore]).tolist()  # 0 w, 1 r, 2 i
        ops = [0, *middle, 1]
        bits = rng.integers(0, 2, size).tolist()
        w, zero = self.id("w"), self.id("0")
        ids, mask, memory = [], [], 0
        for op, bit in zip(ops, bits):
            if op == 1:  # a read: the last written bit (the first instruction is a write, so there is one)
                bit = memory
            elif op == 0:
                memory = bit
            ids += [w + op, zero + bit]
            mask += [False, op == 1]
        return ids, mask

    def max_len(self, size):
        return 1 + 2 * size


# Word problems: Merrill et al. 2024 (arXiv:2404.08819) train on sequences of group elements whose target at each
# position is the running product. The authors' generator (jopetty/word-problem, src/generate_data.py) builds S5
# with abstract_algebra's generate_symmetric_group(5): the elements are itertools.permutations((1, ..., 5)) in that
# order (element 0 the identity), a tuple p sending i to p[i - 1]; A5 is its commutator subgroup, the even
# permutations in the same order. The product op(a, b) is Perm(a) * Perm(b), which applies b first, then a:
# (a * b)(i) = a(b(i)). The running product starts at the identity and folds left, acc_k = op(acc_{k-1}, g_k), so
# the state after k elements is g_1 * g_2 * ... * g_k = g_1(g_2(...g_k(i))).
@functools.cache
def group_elements(group: str) -> tuple[tuple[int, ...], ...]:
    """The elements of S5 or A5 in the word-problem repo's order, each a tuple p (p[i - 1] the image of i)."""
    perms = list(itertools.permutations(range(1, 6)))
    if group == "A5":
        perms = [p for p in perms if sum(a > b for a, b in itertools.combinations(p, 2)) % 2 == 0]
    return tuple(perms)


def compose(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """a * b as abstract_algebra's Perm multiplies: b first, then a, i.e. i -> a(b(i))."""
    return tuple(a[b[i] - 1] for i in range(len(a)))


@functools.cache
def product_table(group: str) -> np.ndarray:
    """table[x, y] = the index of elements[x] * elements[y] (compose), over the group's elements."""
    elements = group_elements(group)
    index = {p: k for k, p in enumerate(elements)}
    return np.array([[index[compose(a, b)] for b in elements] for a in elements], dtype=np.int64)


class WordProblem(Task):
    """The word problem of S5 or A5 (Merrill et al. 2024, arXiv:2404.08819; jopetty/word-problem): `size`
    group elements drawn uniformly (tokens: the 120 permutations of S5, or the 60 of A5, named by their images of
    1..5, e.g. `21345`), and at each position the running product of the elements so far (the convention above).
    As in the authors' token-tagging setup every position is an answer: per-token accuracy is their token
    accuracy, exact match their sequence accuracy. The states are labels only (`Task.draw`): the input is the
    elements and nothing is fed back (a state in the input would turn the task into one product per step).
    Layout after BOS: the elements, then SEP (the slot whose output is the last state; lenx's output at position t
    is scored against the label at t + 1); the label after element k is the state after it."""

    sizes = "elements"

    def __init__(self, *, train_size: int, min_size: int = 1, group: str = "S5") -> None:
        super().__init__(train_size=train_size, min_size=min_size)
        if group not in ("S5", "A5"):
            raise ConfigError(f"data.task.group must be S5 or A5, got {group!r}")
        self.group = group
        self.name = f"word_problem_{group.lower()}"

    def symbols(self):
        return ["".join(map(str, p)) for p in group_elements(self.group)]

    def draw(self, size, rng):
        table = product_table(self.group)
        xs = rng.integers(0, len(table), size).tolist()
        states, acc = [], 0  # element 0: the identity
        for x in xs:
            acc = int(table[acc, x])
            states.append(acc)
        first = len(SPECIALS)
        ids = [first + x for x in xs] + [SEP]
        labels = [first + xs[0]] + [first + s for s in states]
        return ids, [False] + [True] * size, labels

    def max_len(self, size):
        return size + 2


# CoPE's counting task: the authors' generator, facebookresearch/RAM projects/cope/scripts/count_data_gen.py.
COUNT_WEIGHTS = {"set": 1, "pass": 50, "increment": 7}  # its OP_WEIGHTS
COUNT_MAX = 10  # its MAX_VAL: an increment past it is drawn again


_COUNT_OPS = list(COUNT_WEIGHTS)


@functools.cache
def _count_cdf() -> list[float]:
    """numpy's Generator.choice(p=...) cumulative sum (p normalised, cumsum, divided by its last entry): an operation
    is the first whose entry exceeds one uniform draw (searchsorted side='right', here bisect_right)."""
    p = np.array(list(COUNT_WEIGHTS.values()), dtype=float)
    cdf = (p / p.sum()).cumsum()
    cdf /= cdf[-1]
    return cdf.tolist()


class Counting(Task):
    """CoPE's counting task (Golovneva et al. 2024, arXiv:2405.18719), as the authors' generator
    (facebookresearch/RAM, projects/cope/scripts/count_data_gen.py) draws it: `size` statements, each `x = 0 ;`
    (weight 1: a variable among the first `variables` letters reset to 0), `pass;` (weight 50) or `x ++;` (weight
    7: a variable already set, counted up; past 10 the statement is drawn again, as is an increment with no
    variable set), then `print x` for a variable set so far; the answer is its value (one token, 0-10; what the
    model must count: the increments since x's last reset). A sample with no variable set is drawn again, as the
    authors' generator does. Tokens are the generator's words (its tokenizer splits on spaces): `x`, `=`, `0`,
    `;`, `pass;`, `++;`, `print` and the values. The authors draw the number of statements uniformly in
    [3, max_steps = 512]; here in [min_size, train_size]. Departure: no SEP, as theirs (context, question and
    answer back to back); the answer alone is trained on (their --train-on answer) and scored."""

    name = "counting"
    sizes = "statements"

    def __init__(self, *, train_size: int, min_size: int = 3, variables: int = 3) -> None:
        super().__init__(train_size=train_size, min_size=min_size)
        self.variables = check_int(variables, "data.task.variables")
        if variables > 26:
            raise ConfigError(f"data.task.variables must be at most 26 (the letters a-z), got {variables}")

    def symbols(self):
        letters = [chr(ord("a") + k) for k in range(self.variables)]
        return [*letters, "=", ";", "pass;", "++;", "print", *map(str, range(COUNT_MAX + 1))]

    def statement(self, values: dict[int, int], rng) -> list[int]:
        """One statement's tokens (updating values, variable -> value in order of first setting), drawn again while
        it cannot be made (the generator's 100 tries; in practice a few). The operation is drawn as
        `rng.choice(3, p=weights)` draws it (one `rng.random()` against the weights' normalised cumulative sum,
        numpy's own steps), without its per-call set-up: the same stream, ~15x faster (counting's data was 80%
        of a training step)."""
        cdf, ids = _count_cdf(), self._ids
        for _ in range(100):
            op = _COUNT_OPS[bisect.bisect_right(cdf, rng.random())]
            if op == "set":
                var = int(rng.integers(self.variables))
                values[var] = 0
                return [ids["a"] + var, ids["="], ids["0"], ids[";"]]
            if op == "pass":
                return [ids["pass;"]]
            if not values:  # an increment with no variable set yet: drawn again
                continue
            var = list(values)[int(rng.integers(len(values)))]
            if values[var] + 1 > COUNT_MAX:
                continue
            values[var] += 1
            return [ids["a"] + var, ids["++;"]]
        raise RuntimeError("counting: no statement could be drawn in 100 tries")

    @functools.cached_property
    def _ids(self) -> dict[str, int]:
        return {k: self.id(k) for k in ("a", "=", "0", ";", "pass;", "++;")}

    def draw(self, size, rng):
        for _ in range(1000):  # the generator's retries of a sample with no variable to print
            values: dict[int, int] = {}
            ids = [t for _ in range(size) for t in self.statement(values, rng)]
            if values:
                var = list(values)[int(rng.integers(len(values)))]
                ids += [self.id("print"), self.id("a") + var, self.id("0") + values[var]]
                return ids, [False] * (len(ids) - 1) + [True]
        raise ConfigError(f"data.task: counting drew no variable in 1000 samples of {size} statements")

    def max_len(self, size):
        return 1 + 4 * size + 3


class SelectiveCopy(Task):
    """Selective copy as CoPE tests it (Golovneva et al. 2024, arXiv:2405.18719, section 4, the number from memory;
    the task is Gu & Dao's, arXiv:2312.00752): `size` symbols and round(blank_ratio x size) blank tokens `.` in a
    uniformly random order, SEP, then the symbols alone in their order (the answer). CoPE trains with 128 blanks
    among 128 symbols (blank_ratio 1) and tests on dense (64 blanks, 0.5) and sparse (256 blanks, 2) sequences of
    128 symbols (the split names of its results table);
    blank_ratio is a task option (eval.probes.tasks.task_options={blank_ratio: 2.0} scores the sparse test).
    Not found in the authors' released code (which has the counting task only): the alphabet is not stated in
    the text lenx could read, so `alphabet` defaults to Gu & Dao's 16 symbols, and the layout (SEP, then the
    copy) is lenx's; both are assumptions."""

    name = "selective_copy"
    sizes = "symbols to copy"

    def __init__(self, *, train_size: int, min_size: int = 1, alphabet: int = 16, blank_ratio: float = 1.0) -> None:
        super().__init__(train_size=train_size, min_size=min_size)
        self.alphabet = check_int(alphabet, "data.task.alphabet", minimum=2)
        if isinstance(blank_ratio, bool) or not isinstance(blank_ratio, (int, float)) or blank_ratio < 0:
            raise ConfigError(f"data.task.blank_ratio must be a number >= 0, got {blank_ratio!r}")
        self.blank_ratio = float(blank_ratio)

    def symbols(self):
        return [".", *(f"s{k}" for k in range(self.alphabet))]

    def blanks(self, size: int) -> int:
        return round(self.blank_ratio * size)

    def draw(self, size, rng):
        xs = (rng.integers(0, self.alphabet, size) + self.id("s0")).tolist()
        n = size + self.blanks(size)
        where = np.sort(rng.choice(n, size, replace=False))  # the symbols' slots; the rest are blanks
        seq = [self.id(".")] * n
        for slot, x in zip(where.tolist(), xs):
            seq[slot] = x
        return self.qa(seq, xs)

    def max_len(self, size):
        return 1 + size + self.blanks(size) + 1 + size
