"""Algorithmic tasks: copy, reverse, sort, parity, addition (arXiv:2305.19466, 2402.09371, 2405.17399)."""

from __future__ import annotations

from lenx.errors import ConfigError, check_int
from lenx.tasks.base import SPECIALS, Task


class Copy(Task):
    """Copy a random string of `size` symbols (Kazemnejad et al. 2023, arXiv:2305.19466)."""

    name = "copy"

    def __init__(self, *, train_size: int, min_size: int = 1, alphabet: int = 16) -> None:
        super().__init__(train_size=train_size, min_size=min_size)
        self.alphabet = check_int(alphabet, "data.task.alphabet", minimum=2)

    def symbols(self):
        return [f"s{k}" for k in range(self.alphabet)]

    def transform(self, xs: list[int]) -> list[int]:
        return xs

    def draw(self, size, rng):
        xs = (rng.integers(0, self.alphabet, size) + len(SPECIALS)).tolist()
        return self.qa(xs, self.transform(xs))

    def max_len(self, size):
        return 2 * size + 2


class Reverse(Copy):
    """Write a random string backwards (arXiv:2305.19466)."""

    name = "reverse"

    def transform(self, xs):
        return xs[::-1]


class Sort(Copy):
    """Sort a random string of symbols (with repeats) by symbol id (arXiv:2305.19466)."""

    name = "sort"

    def transform(self, xs):
        return sorted(xs)


class Parity(Task):
    """The parity of `size` random bits, one answer token (arXiv:2305.19466; Ruoss et al. 2023, arXiv:2305.16843)."""

    name = "parity"
    sizes = "bits"

    def symbols(self):
        return ["0", "1"]

    def draw(self, size, rng):
        bits = rng.integers(0, 2, size)
        return self.qa((bits + self.id("0")).tolist(), [self.id("0") + int(bits.sum() % 2)])

    def max_len(self, size):
        return size + 3


class Addition(Task):
    """a + b for two random `size`-digit numbers. `order: reversed` writes every number least significant digit
    first (Zhou et al. 2024, arXiv:2402.09371; McLeish et al. 2024, arXiv:2405.17399), `plain` as usual.

    Operands are uniform over the numbers of exactly `size` digits, as McLeish et al.'s released generator draws
    them (mcleish7/arithmetic, create_data_split.py, `bucket_method_gen`: random.randint(10**(n-1), 10**n - 1),
    without --keep_0_for_len_1 as their addition command runs it): the leading digit uniform in 1-9 (a 1-digit
    operand too), every other digit uniform in 0-9, each drawn on its own, so any size is exact (an earlier
    generator took the number from 62 random bits: from 20 digits on, its leading digits were fixed)."""

    name = "addition"
    sizes = "digits"

    def __init__(self, *, train_size: int, min_size: int = 1, order: str = "reversed") -> None:
        super().__init__(train_size=train_size, min_size=min_size)
        if order not in ("reversed", "plain"):
            raise ConfigError(f"data.task.order must be reversed or plain, got {order!r}")
        self.order = order

    def symbols(self):
        return [*"0123456789", "+"]

    def digits(self, n: int) -> list[int]:
        s = str(n)[::-1] if self.order == "reversed" else str(n)
        return [self.id(c) for c in s]

    def operand(self, size: int, rng) -> int:
        """A uniform `size`-digit number: its leading digit in 1-9, the others in 0-9 (a Python int, any size)."""
        digits = [int(rng.integers(1, 10)), *rng.integers(0, 10, size - 1).tolist()]
        return int("".join(map(str, digits)))

    def draw(self, size, rng):
        a, b = self.operand(size, rng), self.operand(size, rng)
        return self.qa([*self.digits(a), self.id("+"), *self.digits(b)], self.digits(a + b))

    def max_len(self, size):
        return 1 + 2 * size + 2 + size + 1
