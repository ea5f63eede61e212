"""Issue 36's tasks: flip-flop (arXiv:2306.00946), S5/A5 word problems (arXiv:2404.08819), CoPE's counting and
selective copy (arXiv:2405.18719), the Chomsky-hierarchy tasks (arXiv:2207.02098) and MQAR trained short and
tested long (Zoology's ar_extrapolate). Answers against independent solvers, held-out instances disjoint from
training ones, hand-checked examples from the sources, and the task_options of the scoring probe (scripted models
that fail where the definitions say they must: tests/test_tasks_must_fail.py)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lenx import tasks as T
from lenx.errors import ConfigError
from lenx.tasks.formal import little_endian, modular_value, run_stack
from lenx.tasks.state import compose, group_elements

ROOT = Path(__file__).parents[1]

TASKS = {
    "flip_flop": T.FlipFlop(train_size=12),
    "flip_flop_dense": T.FlipFlop(train_size=12, p_ignore=0.1),
    "word_problem_s5": T.WordProblem(train_size=6),
    "word_problem_a5": T.WordProblem(train_size=6, group="A5"),
    "counting": T.Counting(train_size=16),
    "selective_copy": T.SelectiveCopy(train_size=5, alphabet=6),
    "duplicate_string": T.DuplicateString(train_size=6),
    "bucket_sort": T.BucketSort(train_size=6),
    "odds_first": T.OddsFirst(train_size=6),
    "modular_arithmetic": T.ModularArithmetic(train_size=7),
    "cycle_navigation": T.CycleNavigation(train_size=6),
    "stack_manipulation": T.StackManipulation(train_size=6),
    "binary_addition": T.BinaryAddition(train_size=7),
    "binary_multiplication": T.BinaryMultiplication(train_size=7),
    "missing_duplicate": T.MissingDuplicate(train_size=7),
    "mqar_extrapolate": T.MQAR(train_size=8, min_size=2, vocab=64, tokens_per_pair=4, min_tokens=16,
                               train_mix="2:5,4:2,8:1"),
}
LABELS = ("word_problem_s5", "word_problem_a5", "mqar_extrapolate")  # answers that are labels only


# ------------------------------------------------------------------------------------------ independent solvers
# They read an instance's tokens by name, from each source's definition, and never call lenx.tasks.
def flip_flop_reads(names):
    """The bit each `r` must read: the last bit written by `w` (the first instruction is a write)."""
    pairs = list(zip(names[0::2], names[1::2]))
    assert pairs[0][0] == "w" and pairs[-1][0] == "r"
    out, last = [], None
    for op, bit in pairs:
        if op == "w":
            last = bit
        elif op == "r":
            out.append(last)
    return out


def perm(name):
    """A permutation as the function it names: digit i is the image of i."""
    return {i + 1: int(c) for i, c in enumerate(name)}


def running_products(elements):
    """States after each element: the state is a function f, and after g it is x -> f(g(x)) (g applied first)."""
    f, out = {i: i for i in range(1, 6)}, []
    for g in map(perm, elements):
        f = {x: f[g[x]] for x in range(1, 6)}
        out.append("".join(str(f[x]) for x in range(1, 6)))
    return out


def counting_answer(names):
    """Run the statements (`x = 0 ;`, `pass;`, `x ++;`) and read `print x`."""
    values, i = {}, 0
    while names[i] != "print":
        if names[i] == "pass;":
            i += 1
        elif names[i + 1] == "=":
            values[names[i]], i = 0, i + 4
        else:
            assert names[i + 1] == "++;" and names[i] in values
            values[names[i]] += 1
            i += 2
    return [str(values[names[i + 1]])]


def solve(kind, prompt):
    """The answer (names) of a SEP task from its prompt (the tokens between BOS and SEP)."""
    if kind == "selective_copy":
        return [t for t in prompt if t != "."]
    if kind == "duplicate_string":
        return prompt + prompt
    if kind == "bucket_sort":
        return sorted(prompt, key=lambda s: int(s[1:]))
    if kind == "odds_first":  # the repo's code: indices 1, 3, ... then 0, 2, ...
        return prompt[1::2] + prompt[0::2]
    if kind == "modular_arithmetic":  # Python's own precedence: * before + and -
        return [str(eval("".join(prompt)) % 5)]
    if kind == "cycle_navigation":
        return [f"c{sum(int(a) for a in prompt) % 5}"]
    if kind == "stack_manipulation":
        stack = []
        for t in prompt:
            if t in ("0", "1", "PUSH0", "PUSH1"):
                stack.append(t[-1])
            elif stack:
                stack.pop()
        return stack[::-1] + ["T"]
    if kind in ("binary_addition", "binary_multiplication"):
        op = "+" if kind == "binary_addition" else "*"
        if op not in prompt:  # the repo's sizes 1 and 2: the number itself, or size - 1 zeros
            return (list(f"{int(''.join(prompt)[::-1], 2):b}"[::-1]) if op == "+" else ["0"] * (len(prompt) - 1)) \
                + ["T"]
        at = prompt.index(op)
        a, b = (int("".join(x)[::-1], 2) for x in (prompt[:at], prompt[at + 1:]))
        return list(f"{a + b if op == '+' else a * b:b}"[::-1]) + ["T"]
    if kind == "missing_duplicate":
        s = [t for t in prompt if t != "#"]
        if len(s) == 1:
            return ["1"]
        j, half = s.index("_"), len(s) // 2
        return [s[j + half] if j < half else s[j - half]]
    raise KeyError(kind)


def expected(kind, names, mask):
    """The answer tokens of a whole instance (names, BOS first), by the solvers."""
    if kind.startswith("flip_flop"):
        return flip_flop_reads(names[1:])
    if kind.startswith("word_problem"):
        return running_products(names[1:-1])
    if kind == "counting":
        return counting_answer(names[1:])
    if kind == "mqar_extrapolate":
        n = int(mask.sum())
        pairs = dict(zip(names[1:2 * n + 1:2], names[2:2 * n + 1:2]))
        assert len(pairs) == n
        return [pairs[names[j - 1]] for j in np.flatnonzero(mask)]
    sep = names.index("<sep>")
    return solve(kind, names[1:sep])


def size_of(kind, names, mask):
    if kind.startswith("flip_flop"):
        return (len(names) - 1) // 2
    if kind.startswith("word_problem"):
        return len(names) - 2
    if kind == "counting":
        return sum(t in ("pass;", "=", "++;") for t in names)
    if kind == "mqar_extrapolate":
        return int(mask.sum())
    prompt = names[1:names.index("<sep>")]
    return len([t for t in prompt if t != "."]) if kind == "selective_copy" else len(prompt)


def names_of(task, ids):
    return [task.vocab[i] for i in ids]


@pytest.mark.parametrize("kind", TASKS)
def test_answers_match_an_independent_solver(kind):
    task = TASKS[kind]
    for split, size in [("train", None)] * 30 + [("eval", task.train_size), ("eval", 3 * task.train_size)] * 5:
        for i in range(2):
            ids, mask, *labels = task.instance(3, split, i + (0 if size is None else 100 * size), size)
            names = names_of(task, ids)
            assert ids[0] == T.BOS and len(ids) <= task.max_len(size or task.train_size)
            assert bool(labels) == (kind in LABELS)
            got = [n for n, m in zip(names_of(task, labels[0]) if labels else names, mask) if m]
            assert got == expected(kind, names, mask), names
            if not labels and not kind.startswith("flip_flop"):
                assert mask[int(np.argmax(mask)):].all()  # the answer is the instance's tail
            n = size_of(kind, names, mask)
            if size is None:
                assert task.min_size <= n <= task.train_size
            elif kind == "modular_arithmetic":
                assert n == size - (1 - size % 2)  # the repo makes the length odd
            else:
                assert n == size


class Scripted(torch.nn.Module):
    """Emits one-hot logits: at each position, the next answer token by `rule(kind, prefix)` (causal: it reads the
    tokens up to that position only), or <pad> where no answer follows."""

    def __init__(self, task, kind, rule):
        super().__init__()
        self.task, self.kind, self.rule = task, kind, rule

    def forward(self, idx_BT):
        B, Tn = idx_BT.shape
        out = torch.zeros(B, Tn, self.task.vocab_size)
        for b in range(B):
            names = names_of(self.task, idx_BT[b].tolist())
            for t in range(Tn):
                out[b, t, self.task.id(self.rule(self.kind, names[:t + 1]) or "<pad>")] = 1.0
        return out


def right(kind, prefix):
    """The solvers' next answer token given the input up to here (None where none is asked)."""
    last = prefix[-1]
    if kind.startswith("flip_flop"):
        return flip_flop_reads(prefix[1:] + ["0"])[-1] if last == "r" else None
    if kind.startswith("word_problem"):
        return running_products(prefix[1:])[-1] if last not in ("<bos>", "<sep>") else None
    if kind == "counting":
        return counting_answer(prefix[1:])[0] if len(prefix) > 2 and prefix[-2] == "print" else None
    if kind == "mqar_extrapolate":  # a key seen in the pairs: the value after its first occurrence
        first = prefix.index(last)
        ok = last.startswith("k") and first < len(prefix) - 1 and prefix[first + 1].startswith("v")
        return prefix[first + 1] if ok and first % 2 == 1 else None
    if "<sep>" not in prefix:
        return None
    sep = prefix.index("<sep>")
    answer, j = solve(kind, prefix[1:sep]), len(prefix) - sep - 1
    return answer[j] if j < len(answer) else None


def score(task, model, multipliers=(1, 2), instances=8):
    return {r["multiplier"]: r for r in T.task_accuracy(model, task, multipliers=list(multipliers),
                                                         instances=instances, batch=8, decode="teacher",
                                                         device="cpu")}


@pytest.mark.parametrize("kind", TASKS)
def test_the_solver_scores_one_on_held_out_instances(kind):
    rows = score(TASKS[kind], Scripted(TASKS[kind], kind, right))
    assert all(r["accuracy"] == 1.0 and r["token_accuracy"] == 1.0 and r["status"] == "ok" for r in rows.values())
    assert rows[2]["mean_tokens"] > rows[1]["mean_tokens"]


@pytest.mark.parametrize("kind, task", [
    ("flip_flop", T.FlipFlop(train_size=3)),
    ("word_problem_a5", T.WordProblem(train_size=2, group="A5")),
    ("counting", T.Counting(train_size=4, variables=1)),
    ("selective_copy", T.SelectiveCopy(train_size=2, alphabet=2)),
    ("duplicate_string", T.DuplicateString(train_size=4)),
    ("bucket_sort", T.BucketSort(train_size=3, alphabet=3)),
    ("odds_first", T.OddsFirst(train_size=4)),
    ("modular_arithmetic", T.ModularArithmetic(train_size=3)),
    ("cycle_navigation", T.CycleNavigation(train_size=4)),
    ("stack_manipulation", T.StackManipulation(train_size=4)),
    ("binary_addition", T.BinaryAddition(train_size=5)),
    ("binary_multiplication", T.BinaryMultiplication(train_size=5)),
    ("missing_duplicate", T.MissingDuplicate(train_size=5)),
    ("mqar_extrapolate", T.MQAR(train_size=2, vocab=8, tokens_per_pair=4, min_tokens=8, train_mix="1:1,2:1")),
])
def test_evaluation_instances_never_appear_in_training(kind, task):
    """On small instance spaces (a shared instance would be likely), no held-out instance at the training size is
    among the training ones, over several seeds."""
    train = {task.instance(s, "train", i)[0].tobytes() for s in range(3) for i in range(400)}
    held = {task.instance(s, split, i, task.train_size)[0].tobytes() for s in range(3) for i in range(150)
            for split in ("eval", "validation")}
    assert train and len(held) > 1 and not train & held


def test_hand_examples_from_the_sources():
    # modular_arithmetic.py's docstring (mod 5)
    assert modular_value([1, 2, 3], ["+", "*"], 5) == 2
    assert modular_value([1, 1, 1], ["-", "-"], 5) == 4
    assert modular_value([0, 1, 4, 3, 2], ["*", "+", "*", "-"], 5) == 0
    # stack_manipulation.py's docstring: 0 1 1 0 PUSH 1 POP POP -> 1 1 0 (top to bottom); 1 1 0 POP POP POP -> empty
    assert run_stack([0, 1, 1, 0], ["PUSH1", "POP", "POP"])[::-1] == [1, 1, 0]
    assert run_stack([1, 1, 0], ["POP"] * 3) == [] and run_stack([], ["POP", "PUSH0"]) == [0]
    # binary_addition.py / binary_multiplication.py (little-endian): 001 + 01101 = 01011 (4 + 22 = 26),
    # 1001 + 000001 = 100101 (9 + 32 = 41), 001 * 01101 = 0001101 (88), 1001 * 000001 = 000001001 (288)
    assert little_endian(4, 3) == [0, 0, 1] and little_endian(22, 5) == [0, 1, 1, 0, 1]
    assert little_endian(26) == [0, 1, 0, 1, 1] and little_endian(41) == [1, 0, 0, 1, 0, 1]
    assert little_endian(88) == [0, 0, 0, 1, 1, 0, 1] and little_endian(288) == [0, 0, 0, 0, 0, 1, 0, 0, 1]
    assert little_endian(0) == [0]
    # S5, as abstract_algebra's Perm multiplies (the later factor applied first): (1 2) * (1 2 3) = (2 3)
    transposition, cycle = (2, 1, 3, 4, 5), (2, 3, 1, 4, 5)
    assert compose(transposition, cycle) == (1, 3, 2, 4, 5) and compose(cycle, transposition) == (3, 2, 1, 4, 5)


def test_groups_are_s5_and_a5_in_the_repos_order():
    s5, a5 = group_elements("S5"), group_elements("A5")
    assert len(s5) == len(set(s5)) == 120 and len(a5) == 60 and s5[0] == a5[0] == (1, 2, 3, 4, 5)
    assert list(s5) == sorted(s5) and list(a5) == [p for p in s5 if p in set(a5)]
    assert {compose(a, b) for a in a5 for b in a5} == set(a5)  # closed: a subgroup
    assert (3, 1, 2, 4, 5) in a5 and (2, 1, 3, 4, 5) not in a5  # a 3-cycle is even, a transposition odd
    assert T.WordProblem(train_size=2, group="A5").vocab_size == 3 + 60


def test_selective_copy_blank_ratio_and_counting_bounds():
    for ratio in (0.5, 1.0, 2.0):
        task = T.SelectiveCopy(train_size=8, blank_ratio=ratio)
        names = names_of(task, task.instance(0, "eval", 0, 8)[0])
        assert names[1:names.index("<sep>")].count(".") == round(8 * ratio)
    task = T.Counting(train_size=200)
    for i in range(10):  # values never pass 10; an increment only of a variable already set
        names = names_of(task, task.instance(0, "eval", i, 200)[0])
        assert int(names[-1]) <= 10 and names[-3] == "print"
        first_set = {v: names.index(v) for v in "abc" if v in names}
        assert all(names.index(v) + 1 == names.index("=", names.index(v)) for v in first_set)


def test_mqar_extrapolate_is_zoologys_configs():
    """configs/data/mqar_extrapolate.yaml: 4, 8, 16 pairs in 64 tokens, 32 in 128, 64 in 256 (training), 128 in
    512 and 256 in 1024 (Zoology's tests: 2x and 4x); training sizes weighted as its example counts."""
    spec = yaml.safe_load((ROOT / "configs" / "data" / "mqar_extrapolate.yaml").read_text())
    task = T.build_task({"data": spec})
    assert [task.length(n) for n in (4, 8, 16, 32, 64, 128, 256)] == [64, 64, 64, 128, 256, 512, 1024]
    assert task.seq_len() == 256 and task.train_size == 64
    sizes = [task.train_draw_size(np.random.default_rng(i)) for i in range(3000)]
    share = {n: sizes.count(n) / 3000 for n in (4, 8, 16, 32, 64)}
    assert set(sizes) == set(share) and abs(share[4] - 100 / 155) < 0.04 and abs(share[64] - 5 / 155) < 0.02
    assert T.MQAR(train_size=4).train_draw_size(np.random.default_rng(0)) in range(1, 5)  # no mix: uniform
    with pytest.raises(ConfigError, match="train_mix"):
        T.MQAR(train_size=4, train_mix="8:1")
    with pytest.raises(ConfigError, match="min_tokens must be even"):
        T.MQAR(train_size=4, min_tokens=63)


@pytest.mark.parametrize("kind", [k for k in TASKS if k not in ("flip_flop_dense",)])
def test_an_end_token_ends_every_instance(kind):
    task = {"mqar_extrapolate": lambda: T.MQAR(train_size=3, vocab=64, tokens_per_pair=4, min_tokens=8)}.get(
        kind, lambda: type(TASKS[kind])(**{"train_size": TASKS[kind].train_size, **(
            {"group": "A5"} if kind == "word_problem_a5" else {})}))()
    task.eos = True
    ids, mask, *labels = task.instance(0, "eval", 0, task.train_size)
    assert ids[-1] == task.eos_id and mask[-1] and (not labels or labels[0][-1] == task.eos_id)
    assert len(ids) <= task.max_len(task.train_size) + 1


# ------------------------------------------------------------------------------------------ configs, docs, probe
NEW = ["flip_flop", "word_problem_s5", "word_problem_a5", "counting", "selective_copy", "duplicate_string",
       "bucket_sort", "odds_first", "modular_arithmetic", "cycle_navigation", "stack_manipulation",
       "binary_addition", "binary_multiplication", "missing_duplicate", "mqar_extrapolate"]


@pytest.mark.parametrize("name", NEW)
def test_each_config_names_its_paper_and_builds_its_task(name):
    path = ROOT / "configs" / "data" / f"{name}.yaml"
    header = path.read_text().splitlines()[0]
    assert header.startswith("# ") and re.search(r"arXiv:\d{4}\.\d{5}", header)
    spec = yaml.safe_load(path.read_text())
    task = T.build_task({"data": spec})
    assert spec["name"] == name and task.name in (name, "mqar")
    T.base.check_trainable(task)
    rows = [line.split("|")[1] for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| `")]
    assert any(f"`{name}`" in first for first in rows)  # a row of the task table names it


def test_task_options_score_another_distribution_under_its_own_name():
    cfg = {"data": {"task": {"_target_": "lenx.tasks.FlipFlop", "train_size": 6, "p_ignore": 0.8}}}
    probe = T.TaskAccuracy(multipliers=[1], task_options={"p_ignore": 0.98})
    task = probe.scored_task(cfg)
    assert task.p_ignore == 0.98 and task.name == "flip_flop[p_ignore=0.98]" and task.train_size == 6
    row = next(T.task_accuracy(Scripted(task, "flip_flop", right), task, multipliers=[1], instances=4, batch=4,
                               decode="teacher", device="cpu"))
    assert row["task"] == "flip_flop[p_ignore=0.98]" and row["accuracy"] == 1.0
    assert T.TaskAccuracy(multipliers=[1]).scored_task(cfg).name == "flip_flop"
    with pytest.raises(ConfigError, match="vocabulary"):
        T.TaskAccuracy(multipliers=[1], task_options={"alphabet": 3}).scored_task(
            {"data": {"task": {"_target_": "lenx.tasks.SelectiveCopy", "train_size": 4}}})
    with pytest.raises(ConfigError, match="task_options"):
        T.TaskAccuracy(multipliers=[1], task_options={"train_size": 3})
    with pytest.raises(ConfigError, match="p_ignore must be a number"):
        T.FlipFlop(train_size=4, p_ignore=1.0)
