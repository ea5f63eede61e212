"""Length-generalisation tasks (lenx.tasks): answers against independent solvers, held-out evaluation instances,
scripted models scored by the probe, and a task run end to end (bad task settings: tests/test_task_checks.py)."""

import json

import numpy as np
import pytest
import torch
from conftest import compose_train

from lenx import tasks as T
from lenx.errors import ConfigError

TASKS = {
    "copy": T.Copy(train_size=6, alphabet=5),
    "reverse": T.Reverse(train_size=6, alphabet=5),
    "sort": T.Sort(train_size=6, alphabet=5),
    "parity": T.Parity(train_size=6),
    "addition": T.Addition(train_size=4),
    "addition_plain": T.Addition(train_size=4, order="plain"),
    "mqar": T.MQAR(train_size=4),  # Zoology's defaults: vocab 8192, 16 tokens per pair, power_a 0.01, noise
    "mqar_empty": T.MQAR(train_size=3, vocab=64, tokens_per_pair=6, random_non_queries=False),
    "kv_recall": T.KVRecall(train_size=4, keys=40, values=8),
    "variable_tracking": T.VariableTracking(train_size=3, variables=40, chains=3, filler=1),
    "niah_multikey": T.NiahMultikey(train_size=8, needles=3, keys=10, value_len=2),
    "passkey_task": T.Passkey(train_size=12, digits=4, filler_symbols=3),
}


# Independent solvers: they read an instance's tokens by name (as a person would) and never call lenx.tasks.
def statements(ctx):
    """Variable tracking: the `x = y` statements of a context (filler symbols f* skipped), in order."""
    toks = [t for t in ctx if not t.startswith("f")]
    return [(toks[i], toks[i + 2]) for i in range(0, len(toks), 3)]


def solve(kind, names):
    """The answer tokens (names) of an instance given its tokens up to the answer; kv_recall: {key: value}."""
    sep = names.index("<sep>")
    prompt = names[1:sep]
    if kind in ("copy", "reverse", "sort"):
        return {"copy": prompt, "reverse": prompt[::-1], "sort": sorted(prompt, key=lambda s: int(s[1:]))}[kind]
    if kind == "parity":
        return [str(prompt.count("1") % 2)]
    if kind.startswith("addition"):
        plus = prompt.index("+")
        a, b = "".join(prompt[:plus]), "".join(prompt[plus + 1:])
        if kind == "addition":  # reversed digit order, answer too
            return list(str(int(a[::-1]) + int(b[::-1]))[::-1])
        return list(str(int(a) + int(b)))
    if kind == "kv_recall":
        return dict(zip(prompt[0::2], prompt[1::2]))
    if kind == "variable_tracking":
        value, root = names[sep + 1], {}
        for var, rhs in statements(prompt):
            root[var] = root.get(rhs, rhs)
        return [v for v, _ in statements(prompt) if root[v] == value]
    if kind == "niah_multikey":
        needles = {prompt[i + 1]: prompt[i + 2:i + 4] for i, t in enumerate(prompt) if t == "N"}
        return needles[names[sep + 1]]
    if kind == "passkey_task":  # the digits after KEY; the filler around it cycles f0 f1 f2 f0 ...
        at = prompt.index("KEY")
        filler = prompt[:at] + prompt[at + 5:]
        assert filler == [f"f{i % 3}" for i in range(len(filler))]
        return prompt[at + 1:at + 5]
    raise KeyError(kind)


def size_of(kind, names):
    """The size of an instance, read from its tokens (mqar: its length, tokens_per_pair x pairs)."""
    if kind.startswith("mqar"):
        return (len(names) - 1) // TASKS[kind].tokens_per_pair
    prompt = names[1:names.index("<sep>")]
    if kind.startswith("addition"):
        return prompt.index("+")
    if kind == "kv_recall":
        return len(prompt) // 2
    if kind == "variable_tracking":
        return len(statements(prompt)) // 3 - 1  # 3 chains of size + 1 statements
    if kind in ("niah_multikey", "passkey_task"):
        return sum(t.startswith("f") for t in prompt)
    return len(prompt)


def names_of(task, ids):
    return [task.vocab[i] for i in ids]


@pytest.mark.parametrize("kind", TASKS)
def test_answers_match_an_independent_solver(kind):
    task = TASKS[kind]
    for split, size in [("train", None)] * 40 + [("eval", task.train_size), ("eval", 3 * task.train_size)] * 10:
        for i in range(3):
            ids, mask, *labels = task.instance(7, split, i + (0 if size is None else 100 * size), size)
            names = names_of(task, ids)
            assert ids[0] == T.BOS and len(ids) <= task.max_len(size or task.train_size)
            assert len(labels) == int(kind.startswith("mqar"))  # only mqar's answers are labels only
            got = [n for n, m in zip(names_of(task, labels[0]) if labels else names, mask) if m]
            if kind.startswith("mqar"):  # every key asked once, after the pairs; its value labels the next slot
                n = size_of(kind, names)
                pairs = dict(zip(names[1:2 * n + 1:2], names[2:2 * n + 1:2]))
                asked = [names[j - 1] for j in np.flatnonzero(mask)]
                assert len(pairs) == n and sorted(asked) == sorted(pairs) and min(np.flatnonzero(mask)) > 2 * n
                assert got == [pairs[k] for k in asked] and len(ids) == 1 + TASKS[kind].tokens_per_pair * n
                assert np.array_equal(labels[0][~mask], ids[~mask])  # the labels are the input but at the answers
                if kind == "mqar_empty":  # every slot after the pairs that is not a query is empty, answers included
                    slots = set(range(2 * n + 1, len(ids))) - {j - 1 for j in np.flatnonzero(mask)}
                    assert {names[j] for j in slots} <= {"_"}
            elif kind == "kv_recall":
                table = solve(kind, names)
                sep = names.index("<sep>")
                assert got == [table[k] for k in names[sep + 1::2]] and sorted(names[sep + 1::2]) == sorted(table)
            else:
                first = int(np.argmax(mask))
                assert got == solve(kind, names[:first]) and mask[first:].all(), names
            n = size_of(kind, names)
            assert task.min_size <= n <= task.train_size if size is None else n == size


def test_training_sizes_are_uniform_up_to_train_size():
    task = T.Copy(train_size=4, alphabet=8)
    sizes = [size_of("copy", names_of(task, task.instance(0, "train", i)[0])) for i in range(2000)]
    counts = np.bincount(sizes, minlength=5)[1:]
    assert counts.min() > 400 and set(sizes) == {1, 2, 3, 4}


def test_a_curriculum_grows_the_largest_size_in_equal_stages_then_draws_every_size():
    """data.task.curriculum=0.5 with sizes 1..4: four stages over the first half of training, each drawing sizes up
    to its level (the first only size 1), then the full range; validation and evaluation are never cut."""
    task = T.build_task({"data": {"task": {"_target_": "lenx.tasks.Copy", "train_size": 4, "alphabet": 8,
                                           "curriculum": 0.5}}})
    items = T.TaskItems(task, 4000, seed=0)
    sizes = np.array([size_of("copy", names_of(task, items[i][0])) for i in range(4000)])
    for stage, top in enumerate([1, 2, 3, 4]):  # items [stage*500, stage*500 + 500): progress stage/8 .. (stage+1)/8
        got = sizes[stage * 500:(stage + 1) * 500]
        assert got.max() == top and set(got) == set(range(1, top + 1)), (stage, set(got))
    assert set(sizes[2000:]) == {1, 2, 3, 4} and np.bincount(sizes[2000:])[1:].min() > 400
    # a resumed run's items are the same instances (each a pure function of its index and the training's length)
    assert np.array_equal(T.TaskItems(task, 4000, seed=0, start=700)[0][0], items[700][0])
    val = T.TaskItems(task, 400, seed=0, split="validation")
    assert {size_of("copy", names_of(task, val[i][0])) for i in range(400)} == {1, 2, 3, 4}
    assert task.curriculum_cap(None) == 4 and task.curriculum_cap(0.0) == 1 and task.curriculum_cap(0.49) == 4
    # without a curriculum the training instances are exactly those drawn before the option existed
    plain = T.Copy(train_size=4, alphabet=8)
    assert all(np.array_equal(T.TaskItems(plain, 50, 0)[i][0], plain.instance(0, "train", i)[0]) for i in range(50))


@pytest.mark.parametrize("kind", TASKS)
def test_instances_are_pure_functions_of_seed_split_and_index(kind):
    task = TASKS[kind]
    a, b = task.instance(3, "train", 11), task.instance(3, "train", 11)
    assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert any(not np.array_equal(task.instance(4, "train", i)[0], task.instance(3, "train", i)[0]) for i in range(5))


@pytest.mark.parametrize("kind", TASKS)
def test_evaluation_instances_never_appear_in_training(kind):
    """On a small instance space (so a shared instance would be likely), no evaluation instance at the training
    size is among the training instances, over several seeds."""
    task = {"copy": T.Copy(train_size=3, alphabet=3), "reverse": T.Reverse(train_size=3, alphabet=3),
            "sort": T.Sort(train_size=3, alphabet=3), "parity": T.Parity(train_size=5),
            "addition": T.Addition(train_size=2), "addition_plain": T.Addition(train_size=2, order="plain"),
            "kv_recall": T.KVRecall(train_size=2, keys=3, values=2),
            "mqar": T.MQAR(train_size=2, vocab=8, tokens_per_pair=4),  # noise only in the 2 answer slots
            "mqar_empty": T.MQAR(train_size=2, vocab=8, tokens_per_pair=6, random_non_queries=False),
            "variable_tracking": T.VariableTracking(train_size=1, variables=4, values=2, chains=2, filler=0),
            "niah_multikey": T.NiahMultikey(train_size=2, needles=1, keys=2, values=2, value_len=1,
                                            filler_symbols=2),
            "passkey_task": T.Passkey(train_size=2, digits=1, filler_symbols=2)}[kind]
    train = {task.instance(s, "train", i)[0].tobytes() for s in range(3) for i in range(600)}
    held = {task.instance(s, split, i, task.train_size)[0].tobytes() for s in range(3) for i in range(200)
            for split in ("eval", "validation")}
    assert train and held and not train & held
    assert len(held) > 1  # the held-out half is not degenerate


class Scripted(torch.nn.Module):
    """Reads its input and emits one-hot logits: at every position, the solver's next answer token (and <pad>
    elsewhere). With `limit`, instances larger than limit get a wrong answer (a model that only learned the
    training sizes; mqar: queries about a pair beyond the limit-th, read from where the key first stands)."""

    def __init__(self, kind, task, limit=None):
        super().__init__()
        self.kind, self.task, self.limit = kind, task, limit

    def next_token(self, prefix):
        if "<sep>" not in prefix and not self.kind.startswith("mqar"):
            return "<pad>"
        if self.kind.startswith("mqar"):  # a key already seen in the pairs: the value after its first occurrence
            key = prefix[-1]
            first = prefix.index(key)
            if len(prefix) - 1 == first or not key.startswith("k") or not prefix[first + 1].startswith("v"):
                return "<pad>"
            if self.limit is not None and (first - 1) // 2 >= self.limit:
                return "<bos>"
            return prefix[first + 1]
        sep = prefix.index("<sep>")
        after = prefix[sep + 1:]
        if self.kind == "kv_recall":
            table = solve("kv_recall", prefix[:sep + 1])
            ans = table.get(after[-1]) if len(after) % 2 == 1 else None
        else:
            query = 1 if self.kind in ("variable_tracking", "niah_multikey") else 0  # a query token after SEP
            j = len(after) - query
            answer = solve(self.kind, prefix[:sep + 1 + query]) if j >= 0 else []
            ans = answer[j] if 0 <= j < len(answer) else None
        if ans is None:
            return "<pad>"
        if self.limit is not None and size_of(self.kind, prefix) > self.limit:
            return "<bos>"  # never an answer token
        return ans

    def forward(self, idx_BT):
        B, Tn = idx_BT.shape
        out = torch.zeros(B, Tn, self.task.vocab_size)
        for b in range(B):
            names = names_of(self.task, idx_BT[b].tolist())
            for t in range(Tn):
                out[b, t, self.task.id(self.next_token(names[:t + 1]))] = 1.0
        return out


@pytest.mark.parametrize("kind", TASKS)
def test_a_perfect_model_scores_one_and_a_length_limited_one_zero_beyond_training(kind):
    task = TASKS[kind]
    score = lambda model, decode="teacher": {r["multiplier"]: r for r in T.task_accuracy(
        model, task, multipliers=[1, 2], instances=6, batch=4, decode=decode, device="cpu")}
    perfect = score(Scripted(kind, task))
    assert all(r["accuracy"] == 1.0 and r["token_accuracy"] == 1.0 and r["status"] == "ok" for r in perfect.values())
    assert perfect[2]["size"] == 2 * task.train_size and perfect[2]["mean_tokens"] > perfect[1]["mean_tokens"]
    limited = score(Scripted(kind, task, limit=task.train_size))
    beyond = 0.5 if kind.startswith("mqar") else 0.0  # mqar: the queries about the first half of the pairs are right
    assert limited[1]["accuracy"] == 1.0 and limited[2]["accuracy"] == 0.0 and limited[2]["token_accuracy"] == beyond
    assert limited[2]["acc_ci_low"] == 0.0 and 0.3 < limited[2]["acc_ci_high"] < 0.5  # Wilson, 0 of 6
    if kind in ("copy", "kv_recall", "mqar"):  # greedy: the same exact match (a right answer is its own greedy path)
        assert score(Scripted(kind, task, limit=task.train_size), "greedy")[2]["accuracy"] == 0.0
        assert score(Scripted(kind, task), "greedy")[2]["accuracy"] == 1.0


def test_greedy_per_token_accuracy_counts_errors_that_propagate():
    """A model that copies its own previous output: teacher-forced it is right wherever the truth repeats; greedy
    it carries its first wrong token forward."""
    task = T.Copy(train_size=4, alphabet=4)

    class Echo(torch.nn.Module):
        def forward(self, idx_BT):
            return torch.nn.functional.one_hot(idx_BT, task.vocab_size).float()

    teacher = next(T.task_accuracy(Echo(), task, multipliers=[1], instances=20, batch=20, decode="teacher",
                                   device="cpu"))
    greedy = next(T.task_accuracy(Echo(), task, multipliers=[1], instances=20, batch=20, decode="greedy",
                                  device="cpu"))
    assert teacher["accuracy"] == greedy["accuracy"]
    assert greedy["token_accuracy"] != teacher["token_accuracy"]


def test_loss_is_on_answer_tokens_only():
    task = T.Copy(train_size=4, alphabet=4)
    ids_BT, mask_BT = T.pad([task.instance(0, "train", i) for i in range(4)])
    logits = torch.randn(*ids_BT[:, :-1].shape, task.vocab_size)
    changed = logits.clone()
    changed[~mask_BT[:, 1:]] = torch.randn_like(changed[~mask_BT[:, 1:]])  # positions not predicting an answer
    assert torch.equal(T.masked_loss(logits, ids_BT, mask_BT), T.masked_loss(changed, ids_BT, mask_BT))
    changed[mask_BT[:, 1:]] += 1.0 * torch.randn_like(changed[mask_BT[:, 1:]])
    assert not torch.equal(T.masked_loss(logits, ids_BT, mask_BT), T.masked_loss(changed, ids_BT, mask_BT))



@pytest.mark.parametrize("data, extra", [
    ("copy", []), ("variable_tracking", []),
    # labels-only answers through training, validation, scoring during training and the probe
    ("mqar", ["data.task.vocab=64", "data.task.tokens_per_pair=6", "eval.every_n_steps=2",
              "eval.during.multipliers=[1,2]", "eval.during.instances=4"]),
])
def test_a_task_run_trains_without_a_corpus_and_writes_tasks_csv(data, extra, tmp_path, monkeypatch):
    from lenx.train import run

    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))
    cfg = compose_train([f"data={data}", "pos=alibi", "experiment=smoke", "trainer.enable_progress_bar=false",
                         "data.task.train_size=3", "eval.probes.tasks.multipliers=[1,2]",
                         "eval.probes.tasks.instances=4", *extra], tmp_path / "run")
    run(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "tasks.jsonl").read_text().splitlines()]
    assert [r["multiplier"] for r in rows] == [1, 2] and [r["size"] for r in rows] == [3, 6]
    assert all(r["task"] == data and r["pos"] == "alibi" and 0 <= r["accuracy"] <= 1 for r in rows)
    assert (tmp_path / "run" / "tasks.csv").read_text().startswith("task,pos,scaling,extension,positions,train_size,size")
    assert (tmp_path / "run" / "tasks.png").is_file()
    assert not (tmp_path / "cache").exists()  # no corpus, no tokenizer
    assert not (tmp_path / "run" / "extrapolation.jsonl").exists()  # perplexity needs a corpus: skipped
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    task = T.build_task(saved["hyper_parameters"]["cfg"])
    assert saved["state_dict"]["model.tok.weight"].shape[0] == task.vocab_size
    assert saved["hyper_parameters"]["cfg"]["seq_len"] == task.seq_len()
    run(cfg)  # a rerun: finished, nothing rescored
    assert len((tmp_path / "run" / "tasks.jsonl").read_text().splitlines()) == 2
    if data == "copy":  # re-scoring the checkpoint at another size, still without a corpus
        from omegaconf import OmegaConf

        from lenx.evaluate import evaluate_checkpoint

        eval_cfg = OmegaConf.to_container(cfg.eval, resolve=True)
        eval_cfg["probes"]["tasks"]["multipliers"] = [4]
        evaluate_checkpoint(str(tmp_path / "run" / "checkpoints" / "last.ckpt"), eval_cfg, tmp_path / "eval")
        (row,) = [json.loads(x) for x in (tmp_path / "eval" / "tasks.jsonl").read_text().splitlines()]
        assert row["size"] == 12 and row["status"] == "ok" and row["corpus"] == "task:copy"
        assert not (tmp_path / "cache").exists()


def test_a_learned_table_is_out_of_range_beyond_the_trained_positions():
    from conftest import make_model

    task = T.Copy(train_size=4, alphabet=4)
    model = make_model("learned", train_len=task.seq_len(), vocab_size=task.vocab_size)
    rows = list(T.task_accuracy(model, task, multipliers=[1, 2], instances=4, batch=4, decode="teacher",
                                device="cpu"))
    assert [r["status"] for r in rows] == ["ok", "out_of_range"]


def test_scoring_under_the_train_time_position_mode():
    """eval positions=train: the model reads the run's position mode's draws (Ruoss et al.'s code samples random
    positions at test time too): strictly increasing, within max_len, one draw per batch reproducible from
    (seed, multiplier, batch); rows say so; instances longer than the mode's range are out of range."""
    from lenx.positions import RandomizedShared

    task = T.Copy(train_size=3, alphabet=4)
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, idx_BT, pos_T=None):
            seen.append(pos_T)
            return Scripted("copy", task)(idx_BT)

    mode = RandomizedShared(max_len=40)  # one vector per batch (randomized: LayerDraws)
    rows = list(T.task_accuracy(Recorder(), task, multipliers=[1, 2, 16], instances=6, batch=3, decode="teacher",
                                device="cpu", positions=mode))
    assert [r["eval_positions"] for r in rows] == ["randomized_shared"] * 3
    assert rows[0]["accuracy"] == rows[1]["accuracy"] == 1.0  # the scripted model ignores positions
    assert rows[2]["status"] == "out_of_range" and "positions" in rows[2]["error"]  # 16 x 3 symbols: > 40 tokens
    drawn = [p for p in seen if p is not None]
    assert len(drawn) == 4  # 2 batches at 1x, 2 at 2x
    for p in drawn:
        assert (p[1:] > p[:-1]).all() and 0 <= int(p.min()) and int(p.max()) < 40
    assert not torch.equal(drawn[2][: len(drawn[0])], drawn[0][: len(drawn[2])])
    seen.clear()
    again = list(T.task_accuracy(Recorder(), task, multipliers=[1], instances=6, batch=3, decode="teacher",
                                 device="cpu", positions=mode))
    assert again[0]["eval_positions"] == "randomized_shared"
    assert all(torch.equal(a, b) for a, b in zip(seen, drawn[:2]))
    contiguous = next(T.task_accuracy(Recorder(), task, multipliers=[1], instances=3, batch=3, decode="teacher",
                                      device="cpu"))
    assert contiguous["eval_positions"] == "contiguous" and seen[-1] is None
    with pytest.raises(ConfigError, match="contiguous or train"):
        T.TaskAccuracy(multipliers=[1], positions="random")
