"""The Chomsky-hierarchy tasks lenx lacked (Delétang et al. 2023, arXiv:2207.02098), each as its definition in the
authors' google-deepmind/neural_networks_chomsky_hierarchy (tasks/<level>/<task>.py) draws it.

Common to all: the size is the repo's `length`, the input's length (their training lengths 1-40, tests 41-500;
here training sizes are uniform in [min_size, train_size] and scoring is at multiplier x train_size). An instance
is `[BOS] input [SEP] output`. Where the repo pads the output to a fixed length after a termination token and
masks the padding out of the accuracy (`accuracy_mask`: stack manipulation, binary addition and multiplication),
the answer here is the output up to and including the termination token `T`; the padding is neither trained on
nor scored (the repo trains on it). The repo scores per-token accuracy over the (masked) output: lenx's
token_accuracy; exact match (the whole output right) is lenx's accuracy."""

from __future__ import annotations

from lenx.errors import check_int
from lenx.tasks.algorithmic import Copy
from lenx.tasks.base import Task


class DuplicateString(Copy):
    """duplicate_string (tasks/cs/duplicate_string.py): a string over `alphabet` symbols (2 in the paper), output
    it twice: s -> s s."""

    name = "duplicate_string"
    sizes = "input length"

    def __init__(self, *, train_size: int, min_size: int = 1, alphabet: int = 2) -> None:
        super().__init__(train_size=train_size, min_size=min_size, alphabet=alphabet)

    def transform(self, xs):
        return xs + xs

    def max_len(self, size):
        return 3 * size + 2


class BucketSort(Copy):
    """bucket_sort (tasks/cs/bucket_sort.py): a string over `alphabet` symbols (vocab_size 5), output it sorted."""

    name = "bucket_sort"
    sizes = "input length"

    def __init__(self, *, train_size: int, min_size: int = 1, alphabet: int = 5) -> None:
        super().__init__(train_size=train_size, min_size=min_size, alphabet=alphabet)

    def transform(self, xs):
        return sorted(xs)


class OddsFirst(Copy):
    """odds_first (tasks/cs/odds_first.py): a string over `alphabet` symbols (2), output the symbols at odd indices
    first, then those at even ones. As the repo's code computes it (concatenate([s[:, 1::2], s[:, ::2]])): 0-based
    indices 1, 3, 5, ... then 0, 2, 4, ...; its docstring's examples (00110101 -> 0100 0111) show the other order,
    the code is what produced the paper's data."""

    name = "odds_first"
    sizes = "input length"

    def __init__(self, *, train_size: int, min_size: int = 1, alphabet: int = 2) -> None:
        super().__init__(train_size=train_size, min_size=min_size, alphabet=alphabet)

    def transform(self, xs):
        return xs[1::2] + xs[::2]


def modular_value(numbers: list[int], ops: list[str], modulus: int) -> int:
    """The value of numbers[0] ops[0] numbers[1] ... mod `modulus`, * before + and - (the repo's
    _evaluate_expression: each subtraction becomes adding the negated next number, then the products of each
    additive term, then their sum)."""
    terms, term = [], numbers[0]
    for op, x in zip(ops, numbers[1:]):
        if op == "*":
            term *= x
        else:
            terms.append(term)
            term = -x if op == "-" else x
    return (sum(terms) + term) % modulus


class ModularArithmetic(Task):
    """modular_arithmetic without brackets (tasks/regular/modular_arithmetic.py): numbers in 0..modulus-1 (5)
    alternating with operators uniform over + - *, starting and ending with a number (an even size loses one
    token: the repo makes the length odd); the answer is its value mod 5 with the usual precedence, * before + and
    - (the repo's examples: 1 + 2 * 3 = 2, 1 - 1 - 1 = 4, 0 * 1 + 4 * 3 - 2 = 0)."""

    name = "modular_arithmetic"
    sizes = "input length"

    def __init__(self, *, train_size: int, min_size: int = 1, modulus: int = 5) -> None:
        super().__init__(train_size=train_size, min_size=min_size)
        self.modulus = check_int(modulus, "data.task.modulus", minimum=2)

    def symbols(self):
        return [*map(str, range(self.modulus)), "+", "-", "*"]

    def draw(self, size, rng):
        n = size if size % 2 else size - 1
        numbers = rng.integers(0, self.modulus, n // 2 + 1).tolist()
        ops = [("+", "-", "*")[k] for k in rng.integers(0, 3, n // 2).tolist()]
        prompt = [self.id(str(numbers[0]))]
        for op, x in zip(ops, numbers[1:]):
            prompt += [self.id(op), self.id(str(x))]
        return self.qa(prompt, [self.id(str(modular_value(numbers, ops, self.modulus)))])

    def max_len(self, size):
        return size + 3


class CycleNavigation(Task):
    """cycle_navigation (tasks/regular/cycle_navigation.py): `size` actions uniform over {-1, 0, +1} (the repo's
    tokens 0, 1, 2 mean action - 1: left, stay, right) on a cycle of 5 states from state 0; the answer is the final
    state, sum(actions) mod 5 (the repo's example: 1 -1 0 -1 -1 -> 3)."""

    name = "cycle_navigation"
    sizes = "actions"
    CYCLE = 5  # the repo's _cycle_length

    def symbols(self):
        return ["-1", "0", "+1", *(f"c{k}" for k in range(self.CYCLE))]

    def draw(self, size, rng):
        actions = rng.integers(0, 3, size)
        final = int((actions - 1).sum()) % self.CYCLE
        return self.qa((actions + self.id("-1")).tolist(), [self.id("c0") + final])

    def max_len(self, size):
        return size + 3


def run_stack(stack: list[int], actions: list[str]) -> list[int]:
    """The stack (bottom to top) after the actions POP / PUSH0 / PUSH1, a POP on an empty stack ignored."""
    stack = list(stack)
    for a in actions:
        if a == "POP":
            if stack:
                stack.pop()
        else:
            stack.append(int(a[-1]))
    return stack


class StackManipulation(Task):
    """stack_manipulation (tasks/dcf/stack_manipulation.py): a stack of random bits given bottom to top (its
    length uniform in 1..size-1), then size - that many actions uniform over POP / PUSH0 / PUSH1 (a POP on an
    empty stack is ignored); the answer is the final stack top to bottom, then the termination token T. Size 1: a
    single bit, answered by itself (the repo's special case)."""

    name = "stack_manipulation"
    sizes = "input length"

    def symbols(self):
        return ["0", "1", "POP", "PUSH0", "PUSH1", "T"]

    def draw(self, size, rng):
        zero = self.id("0")
        if size == 1:
            bit = int(rng.integers(0, 2))
            return self.qa([zero + bit], [zero + bit, self.id("T")])
        n = int(rng.integers(1, size))
        stack = rng.integers(0, 2, n).tolist()
        actions = [("POP", "PUSH0", "PUSH1")[k] for k in rng.integers(0, 3, size - n).tolist()]
        final = run_stack(stack, actions)[::-1]
        return self.qa([zero + b for b in stack] + [self.id(a) for a in actions],
                       [zero + b for b in final] + [self.id("T")])

    def max_len(self, size):
        return 2 * size + 3


def little_endian(n: int, width: int = 0) -> list[int]:
    """n's binary digits, least significant first, zero-padded to `width` (the repo's numbers_to_*_binary: 0 with
    width 0 is [0])."""
    return [int(c) for c in f"{n:b}".zfill(width)[::-1]]


class BinaryAddition(Task):
    """binary_addition (tasks/cs/binary_addition.py): `a + b` in little-endian binary, the operands' widths w_a
    uniform in 1..size-2 and w_b = size - 1 - w_a, each operand uniform in 1..2^w - 1 written with exactly w bits
    (high zeros at the end); the answer is the sum in little-endian binary without high zeros, then T (the repo's
    example: 001 + 01101 -> 01011, 4 + 22 = 26). Sizes 1 and 2: one number in 0..2^size - 2 written with `size`
    bits, no operator, answered by itself (the repo's special case)."""

    name = "binary_addition"
    sizes = "input length"
    op = "+"

    def symbols(self):
        return ["0", "1", self.op, "T"]

    def result(self, a: int, b: int) -> list[int]:
        return little_endian(a + b)

    def small(self, number: int, size: int) -> list[int]:
        """The answer bits of the repo's length <= 2 case."""
        return little_endian(number)

    def draw(self, size, rng):
        zero, end = self.id("0"), [self.id("T")]
        if size <= 2:
            number = int(rng.integers(0, 2**size - 1))
            return self.qa([zero + b for b in little_endian(number, size)],
                           [zero + b for b in self.small(number, size)] + end)
        wa = int(rng.integers(1, size - 1))
        wb = size - 1 - wa
        # Python ints from the generator's 0..1 draws, any width (the repo: random.randint(1, 2**w - 1))
        a, b = (self.operand(w, rng) for w in (wa, wb))
        prompt = [zero + x for x in little_endian(a, wa)] + [self.id(self.op)] + [zero + x for x in
                                                                                   little_endian(b, wb)]
        return self.qa(prompt, [zero + x for x in self.result(a, b)] + end)

    @staticmethod
    def operand(width: int, rng) -> int:
        """Uniform in 1..2^width - 1: uniform random bits, drawn again while all zero."""
        while True:
            n = int("".join(map(str, rng.integers(0, 2, width).tolist())), 2)
            if n:
                return n

    def max_len(self, size):
        return 2 * size + 3


class BinaryMultiplication(BinaryAddition):
    """binary_multiplication (tasks/cs/binary_multiplication.py): as binary_addition with `*` and the product (the
    repo's example: 001 * 01101 -> 0001101, 4 * 22 = 88). Sizes 1 and 2: the answer is size - 1 zeros, then T (the
    repo's fixed value for its special case)."""

    name = "binary_multiplication"
    op = "*"

    def result(self, a, b):
        return little_endian(a * b)

    def small(self, number, size):
        return [0] * (size - 1)


class MissingDuplicate(Task):
    """missing_duplicate_string (tasks/cs/missing_duplicate_string.py): a random bit string of length size // 2
    written twice, with one position of the two copies (uniform) replaced by the placeholder `_`, and an odd size
    padded with the empty token `#`; the answer is the missing bit (the repo's example: 01100210 -> 1, its 2 the
    placeholder). Size 1: the input `1`, answered 1 (the repo's special case)."""

    name = "missing_duplicate"
    sizes = "input length"

    def symbols(self):
        return ["0", "1", "_", "#"]

    def draw(self, size, rng):
        zero = self.id("0")
        if size == 1:
            return self.qa([zero + 1], [zero + 1])
        half = rng.integers(0, 2, size // 2).tolist()
        both = half + half
        at = int(rng.integers(0, len(both)))
        missing = both[at]
        prompt = [zero + b for b in both]
        prompt[at] = self.id("_")
        return self.qa(prompt + [self.id("#")] * (size % 2), [zero + missing])

    def max_len(self, size):
        return size + 3
