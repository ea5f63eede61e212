"""Generators rewritten for speed draw the same instances as their straightforward form: the committed studies'
runs stay reproducible from their seeds."""

import numpy as np

from lenx.tasks.state import COUNT_MAX, COUNT_WEIGHTS, Counting


def counting_statement_reference(task: Counting, values: dict, rng) -> list[int]:
    """The statement as the authors' generator's weights are drawn with numpy's own `rng.choice(p=...)`."""
    ops, p = list(COUNT_WEIGHTS), np.array(list(COUNT_WEIGHTS.values()), dtype=float)
    for _ in range(100):
        op = ops[int(rng.choice(3, p=p / p.sum()))]
        if op == "set":
            var = int(rng.integers(task.variables))
            values[var] = 0
            return [task.id("a") + var, task.id("="), task.id("0"), task.id(";")]
        if op == "pass":
            return [task.id("pass;")]
        if not values:
            continue
        var = list(values)[int(rng.integers(len(values)))]
        if values[var] + 1 > COUNT_MAX:
            continue
        values[var] += 1
        return [task.id("a") + var, task.id("++;")]
    raise AssertionError("unreachable in practice")


def test_counting_draws_the_stream_numpys_choice_draws():
    for variables in (1, 3, 5):
        task = Counting(train_size=24, variables=variables)
        for seed in range(400):
            fast_rng, ref_rng = np.random.default_rng(seed), np.random.default_rng(seed)
            fast_values, ref_values = {}, {}
            fast = [task.statement(fast_values, fast_rng) for _ in range(30)]
            ref = [counting_statement_reference(task, ref_values, ref_rng) for _ in range(30)]
            assert fast == ref and fast_values == ref_values, (variables, seed)
            assert fast_rng.random() == ref_rng.random()  # the same number of draws consumed
