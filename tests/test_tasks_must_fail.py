"""Issue 36's tasks: scripted models that fail where each task's definition says they must (flip-flop's last-seen
bit, word problems composed the other way, counting that ignores resets, the other convention of each Chomsky
task, MQAR's trained pairs only), and flip-flop's instruction distribution. The solvers and the scripted-model
harness are tests/test_tasks_issue36.py's."""

import pytest
from test_tasks_issue36 import TASKS, Scripted, names_of, perm, right, score, solve

from lenx import tasks as T


def last_seen_bit(kind, prefix):
    """Flip-flop: after `r`, the bit of the instruction before, whatever it was (an ignore's bit too)."""
    return prefix[-2] if prefix[-1] == "r" else None


def test_flip_flop_a_last_seen_bit_model_fails_after_ignores_only():
    """Liu et al.'s point: reading the last bit seen is right when no ignore separates a read from the last write
    (p_ignore 0: it scores 1), and fails under FFL(0.8), where most reads follow ignores."""
    sparse, dense = T.FlipFlop(train_size=12), T.FlipFlop(train_size=12, p_ignore=0.0)
    assert all(r["accuracy"] == 1.0 for r in score(dense, Scripted(dense, "flip_flop", last_seen_bit)).values())
    rows = score(sparse, Scripted(sparse, "flip_flop", last_seen_bit), multipliers=(2,), instances=24)
    assert rows[2]["accuracy"] < 0.6 and rows[2]["token_accuracy"] < 0.85


def test_flip_flop_draws_its_distribution():
    """First a write, last a read; the others i with probability p_ignore, w and r alike with the rest."""
    for p in (0.8, 0.98, 0.1):
        task = T.FlipFlop(train_size=40, p_ignore=p)
        ops = []
        for i in range(150):
            names = names_of(task, task.instance(0, "eval", i, 40)[0])[1:]
            assert names[0] == "w" and names[-2] == "r"
            ops += names[2:-2:2]
        counts = {o: ops.count(o) / len(ops) for o in "wri"}
        assert abs(counts["i"] - p) < 0.03 and abs(counts["w"] - counts["r"]) < 0.04, counts


def constant(kind, prefix):
    return "12345" if prefix[-1] not in ("<bos>", "<sep>") else None


def wrong_order(kind, prefix):
    """The running product composed the other way: g_k(...g_1(x)), the later element applied last."""
    if prefix[-1] in ("<bos>", "<sep>"):
        return None
    f = {i: i for i in range(1, 6)}
    for g in map(perm, prefix[1:]):
        f = {x: g[f[x]] for x in range(1, 6)}
    return "".join(str(f[x]) for x in range(1, 6))


@pytest.mark.parametrize("kind", ["word_problem_s5", "word_problem_a5"])
def test_word_problem_constant_and_wrongly_ordered_models_fail(kind):
    """A constant guess (the identity) is right about 1 state in |G|; composing in the other order is right only
    where it commutes (the first state always), and S5 and A5 are not abelian."""
    task = TASKS[kind]
    const = score(task, Scripted(task, kind, constant), multipliers=(1, 2), instances=16)
    assert all(r["accuracy"] == 0.0 and r["token_accuracy"] < 0.1 for r in const.values())
    swapped = score(task, Scripted(task, kind, wrong_order), multipliers=(2,), instances=16)
    assert swapped[2]["accuracy"] < 0.2 and swapped[2]["token_accuracy"] < 0.5


def counts_all_increments(kind, prefix):
    """Counting without resets or variables: the number of `++;` so far."""
    return str(min(prefix.count("++;"), 10)) if len(prefix) > 1 and prefix[-2] == "print" else None


def test_counting_a_model_that_ignores_which_variable_and_resets_fails():
    task = T.Counting(train_size=40)
    rows = score(task, Scripted(task, "counting", counts_all_increments), multipliers=(4,), instances=24)
    assert rows[4]["accuracy"] < 0.6
    zero = score(task, Scripted(task, "counting", lambda k, p: "0" if len(p) > 1 and p[-2] == "print" else None),
                 multipliers=(4,), instances=24)
    assert zero[4]["accuracy"] < 0.5


def wrong_rule(wrong):
    """A SEP task's model that answers by another rule (names of the prompt -> answer names)."""
    def rule(kind, prefix):
        if "<sep>" not in prefix:
            return None
        sep = prefix.index("<sep>")
        answer, j = wrong(prefix[1:sep]), len(prefix) - sep - 1
        return answer[j] if j < len(answer) else None
    return rule


def big_endian(op, fn):
    def wrong(prompt):
        if op not in prompt:
            return ["0", "T"]
        at = prompt.index(op)
        a, b = (int("".join(x), 2) for x in (prompt[:at], prompt[at + 1:]))
        return list(f"{fn(a, b):b}") + ["T"]
    return wrong


def left_to_right(prompt):
    value = int(prompt[0])
    for op, x in zip(prompt[1::2], prompt[2::2]):
        value = {"+": value + int(x), "-": value - int(x), "*": value * int(x)}[op]
    return [str(value % 5)]


WRONG = {  # the other reading of each definition, which the generator must not follow
    "selective_copy": lambda p: p[:len([t for t in p if t != "."])],  # the first n tokens, blanks included
    "duplicate_string": lambda p: p + p[::-1],
    "bucket_sort": lambda p: sorted(p, key=lambda s: -int(s[1:])),
    "odds_first": lambda p: p[0::2] + p[1::2],  # the order of the repo's docstring examples, not of its code
    "modular_arithmetic": left_to_right,
    "cycle_navigation": lambda p: [f"c{-sum(int(a) for a in p) % 5}"],  # left and right swapped
    "stack_manipulation": lambda p: solve("stack_manipulation", p)[-2::-1] + ["T"],  # bottom to top
    "binary_addition": big_endian("+", lambda a, b: a + b),
    "binary_multiplication": big_endian("*", lambda a, b: a * b),
    "missing_duplicate": lambda p: ["0"],
}


@pytest.mark.parametrize("kind", WRONG)
def test_a_model_with_the_other_convention_fails(kind):
    task = TASKS[kind]
    rows = score(task, Scripted(task, kind, wrong_rule(WRONG[kind])), multipliers=(2,), instances=24)
    assert rows[2]["accuracy"] < 0.7 and rows[2]["token_accuracy"] < 0.9, rows[2]


def test_mqar_extrapolate_a_model_of_the_trained_pairs_only_fails_beyond():
    """A model that answers only about the first train_size pairs: right at 1x, half the queries at 2x."""
    task = TASKS["mqar_extrapolate"]

    def limited(kind, prefix):
        ans = right(kind, prefix)
        return ans if ans is None or prefix.index(prefix[-1]) <= 2 * task.train_size else "<bos>"

    rows = score(task, Scripted(task, "mqar_extrapolate", limited), instances=6)
    assert rows[1]["accuracy"] == 1.0 and rows[2]["accuracy"] == 0.0 and rows[2]["token_accuracy"] == 0.5


# ------------------------------------------------------------------------------------------ the sources' examples
