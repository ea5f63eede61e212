"""Task generators against their authors' code (issue 32): `addition` draws every digit of an exactly-n-digit
operand (McLeish et al. 2024, arXiv:2405.17399, mcleish7/arithmetic), `mqar` is Zoology's `multiquery_ar`
(Arora et al. 2023, arXiv:2312.04927, HazyResearch/zoology zoology/data/multiquery_ar.py)."""

from pathlib import Path

import numpy as np
import pytest
import yaml

from lenx import tasks as T
from lenx.errors import ConfigError


def chi2(counts) -> float:
    """Pearson's statistic of counts against equal expected counts."""
    counts = np.asarray(counts, dtype=float)
    return float(((counts - counts.mean()) ** 2 / counts.mean()).sum())


# ---------------------------------------------------------------------------------------------------- addition
def operands(task, ids) -> list[str]:
    """The two operands of an instance, most significant digit first, read from its tokens."""
    names = [task.vocab[i] for i in ids]
    prompt = names[1:names.index("<sep>")]
    plus = prompt.index("+")
    a, b = "".join(prompt[:plus]), "".join(prompt[plus + 1:])
    return [a[::-1], b[::-1]] if task.order == "reversed" else [a, b]


@pytest.mark.parametrize("size, order", [(20, "reversed"), (40, "reversed"), (80, "reversed"), (40, "plain")])
def test_addition_draws_every_digit_uniformly(size, order):
    """McLeish et al.'s generator (create_data_split.py, bucket_method_gen) draws random.randint(10**(n-1),
    10**n - 1): the leading digit uniform in 1-9, every other uniform in 0-9. Over 2000 operands of `size` digits
    (the shipped config's 4x-16x), each position's digit counts pass a chi-square bound (p ~ 1e-6 per position).
    The 62-bit generator failed it: from 20 digits on its leading digit was always 1, from 40 on the digits
    between it and the low 19 were always 0."""
    task = T.Addition(train_size=5, order=order)
    nums = [x for i in range(1000) for x in operands(task, task.instance(0, "eval", i, size)[0])]
    digits = np.array([[int(c) for c in x] for x in nums])  # (2000, size)
    assert digits.shape == (2000, size)
    lead = np.bincount(digits[:, 0], minlength=10)
    assert lead[0] == 0 and chi2(lead[1:]) < 40, lead  # 8 degrees of freedom
    worst = max(range(1, size), key=lambda j: chi2(np.bincount(digits[:, j], minlength=10)))
    assert chi2(np.bincount(digits[:, worst], minlength=10)) < 45, (worst, np.bincount(digits[:, worst]))  # 9 dof


def test_addition_operands_have_exactly_size_digits():
    """A 1-digit operand is 1-9, as McLeish et al.'s addition data (no --keep_0_for_len_1)."""
    task = T.Addition(train_size=3)
    seen = {x for i in range(300) for x in operands(task, task.instance(0, "eval", i, 1)[0])}
    assert seen == set("123456789")
    sevens = [x for i in range(50) for x in operands(task, task.instance(0, "eval", i, 7)[0])]
    assert all(len(x) == 7 and x[0] != "0" for x in sevens)


# ---------------------------------------------------------------------------------------------------- mqar
def zoology_multiquery_ar(seed, vocab_size, input_seq_len, num_kv_pairs, power_a=0.01, random_non_queries=False):
    """Zoology's multiquery_ar for num_examples=1, num_passes=1, re-written from its logic: np.random.seed(seed);
    keys (1 .. V/2 - 1) and values (V/2 .. V - 1) by np.random.choice without replacement; the context
    k0 v0 k1 v1 ...; gaps by np.random.choice(arange(space), replace=False, p=power law); a query array of
    L - context + 1 zeros with key i at 2 gap_i; labels of L + 1 entries, -100 but the value at context + 2 gap_i
    + 1; inputs = example[:-1], labels = labels[1:]; random_non_queries: inputs[inputs == 0] = noise[inputs == 0]
    with noise uniform over [0, V) of the inputs' shape (Zoology's torch.randint from torch's global generator;
    here the same RandomState's randint after the gaps, lenx's one departure in the draw)."""
    np_random = np.random.RandomState(seed)  # what np.random.seed(seed) seeds
    context = num_kv_pairs * 2
    keys = np_random.choice(np.arange(1, vocab_size // 2), replace=False, size=num_kv_pairs)
    values = np_random.choice(np.arange(vocab_size // 2, vocab_size), replace=False, size=num_kv_pairs)
    kvs = np.zeros(context, dtype=np.int64)
    kvs[0::2], kvs[1::2] = keys, values
    space = (input_seq_len - context) // 2
    p = power_a * np.arange(1, space + 1) ** (power_a - 1)
    p = p / p.sum()
    gaps = np_random.choice(np.arange(space, dtype=int), replace=False, p=p, size=num_kv_pairs)
    queries = np.zeros(input_seq_len - context + 1, dtype=np.int64)
    queries[gaps * 2] = keys
    example = np.concatenate([kvs, queries])
    labels = np.full(input_seq_len + 1, -100, dtype=np.int64)
    labels[gaps * 2 + context + 1] = values
    inputs, labels = example[:-1].copy(), labels[1:]
    if random_non_queries:
        noise = np_random.randint(vocab_size, size=inputs.shape)
        inputs[inputs == 0] = noise[inputs == 0]
    return inputs, labels


@pytest.mark.parametrize("vocab, pairs, per_pair", [(8192, 8, 16), (8192, 4, 16), (8192, 32, 16), (64, 5, 6),
                                                    (256, 3, 4)])
def test_mqar_draws_zoologys_keys_values_and_gaps(vocab, pairs, per_pair):
    """Seeded alike, lenx's sample is Zoology's: its inputs token for token (empty slots and the slot after each
    query 0, or noise in [0, vocab) with random_non_queries), each answer (Zoology's label at the query) a label of
    the slot after the query, the only masked slot, and the labels the inputs elsewhere."""
    for noise in (False, True):
        task = T.MQAR(train_size=pairs, vocab=vocab, tokens_per_pair=per_pair, random_non_queries=noise)
        for seed in range(40):
            inputs, labels = zoology_multiquery_ar(seed, vocab, per_pair * pairs, pairs, random_non_queries=noise)
            z, mask, y = map(np.asarray, task.sample(pairs, np.random.RandomState(seed)))
            q = np.flatnonzero(labels != -100)
            assert len(q) == pairs and np.array_equal(np.flatnonzero(mask), q + 1)
            assert np.array_equal(z, inputs)  # the input stream, token for token, the answer slots included
            assert np.array_equal(y[q + 1], labels[q]) and np.array_equal(y[~mask], z[~mask])
            assert ((z >= 0) & (z < vocab)).all() and (noise or (z[mask] == 0).all())


@pytest.mark.parametrize("noise", [True, False])
@pytest.mark.parametrize("vocab, pairs, per_pair", [(8192, 8, 16), (8192, 3, 16), (64, 5, 6), (256, 3, 4)])
def test_mqar_input_stream_and_targets_are_zoologys(vocab, pairs, per_pair, noise):
    """What the model reads and what it is scored on, through Task.instance: the ids are BOS then Zoology's
    `inputs` token for token (shifted past PAD/BOS/SEP; noise, or its empty token 0, in the slot after each query),
    and the output that reads Zoology's input t is trained toward Zoology's labels[t] (lenx's targets are
    labels[1:], so that output's target is labels[t + 2] of the instance, scored where masked). The re-implemented
    draw is fed the same seeds instance() feeds MQAR.draw, rejected into the eval half as instance() does."""
    task = T.MQAR(train_size=pairs, vocab=vocab, tokens_per_pair=per_pair, random_non_queries=noise)
    S, L = len(T.SPECIALS), per_pair * pairs
    for i in range(15):
        ids, mask, labels = task.instance(0, "eval", i, pairs)
        rng = np.random.default_rng((0, T.SPLITS["eval"], i, pairs))  # instance()'s generator at a given size
        while True:  # each draw takes one 32-bit seed from it (Zoology's np.random.seed)
            inputs, z_labels = zoology_multiquery_ar(int(rng.integers(2**32)), vocab, L, pairs,
                                                     random_non_queries=noise)
            if T.half_of(np.asarray([T.BOS, *(inputs + S)])) == T.HALF["eval"]:
                break
        assert np.array_equal(ids, [T.BOS, *(inputs + S)])  # the model's input stream is Zoology's
        reads, targets = ids[:-1], np.where(mask[1:], labels[1:], -100)  # output j: reads ids[j], targets[j]
        assert reads[0] == T.BOS and targets[0] == -100  # BOS: no Zoology position, no target
        assert np.array_equal(np.where(targets[1:] >= 0, targets[1:] - S, -100), z_labels[:-1])
        assert z_labels[-1] == -100  # Zoology's last output (at the last token, which lenx never reads): unscored


def gaps_of(task, ids, size):
    """Each key's query offset after the pairs, in pair order, divided by 2 (Zoology's gaps), from the tokens."""
    toks = list(ids[1:])
    ctx = 2 * size
    return [(ctx + toks[ctx:].index(k)) // 2 - size for k in toks[0:ctx:2]]


@pytest.mark.parametrize("power_a", [0.01, 0.5])
def test_mqar_gaps_follow_zoologys_power_law(power_a):
    """The first key's gap is Zoology's first draw: p(gap = k - 1) proportional to power_a k^(power_a - 1) over
    the space = L/2 - pairs slots (chi-square over 3000 held-out instances, 27 degrees of freedom; a uniform
    gap would give thousands)."""
    size, per_pair = 4, 16
    task = T.MQAR(train_size=size, tokens_per_pair=per_pair, power_a=power_a)
    space = per_pair * size // 2 - size
    first = [gaps_of(task, task.instance(0, "eval", i, size)[0], size)[0] for i in range(3000)]
    k = np.arange(1, space + 1)
    p = power_a * k ** (power_a - 1.0)
    expected = 3000 * p / p.sum()
    observed = np.bincount(first, minlength=space)
    assert len(observed) == space and ((observed - expected) ** 2 / expected).sum() < 70


def test_mqar_keys_values_and_noise_are_zoologys():
    """Keys distinct from the key half, values distinct from the value half, each key asked once with its value
    the only answer after it (a label); the noise (every slot after the pairs but the queries, the answer slots
    included) is uniform over all vocab tokens, never lenx's PAD/BOS/SEP."""
    vocab, size = 16, 2
    task = T.MQAR(train_size=size, vocab=vocab, tokens_per_pair=16)
    noise = []
    for i in range(600):
        ids, mask, labels = task.instance(1, "eval", i, size)
        z, y = ids[1:] - len(T.SPECIALS), labels[1:] - len(T.SPECIALS)  # Zoology's token ids
        keys, vals = z[0:2 * size:2], z[1:2 * size:2]
        assert len(set(keys)) == size and len(set(vals)) == size
        assert ((1 <= keys) & (keys < vocab // 2)).all() and ((vocab // 2 <= vals) & (vals < vocab)).all()
        answers = np.flatnonzero(mask[1:])
        assert sorted(z[answers - 1]) == sorted(keys) and sorted(y[answers]) == sorted(vals)
        assert all(dict(zip(keys, vals))[z[a - 1]] == y[a] for a in answers)
        rest = set(range(2 * size, len(z))) - set(answers - 1)
        noise += [z[j] for j in rest]
    counts = np.bincount(noise, minlength=vocab)
    assert len(counts) == vocab and counts.min() > 0 and chi2(counts) < 50  # 15 dof over ~15000 tokens


def test_mqar_never_puts_the_value_in_the_input_after_its_query():
    """The slot after a query holds Zoology's empty token (random_non_queries false) or its noise: it equals the
    value only by chance (1/8192 a slot), where the old generator put the value there every time."""
    empty = T.MQAR(train_size=4, vocab=64, tokens_per_pair=6, random_non_queries=False)
    noisy = T.MQAR(train_size=4)  # Zoology's defaults: 8192 tokens, noise
    for task in (empty, noisy):
        hits = slots = 0
        for i in range(300):
            ids, mask, labels = task.instance(2, "eval", i, 4)
            if task is empty:
                assert {task.vocab[t] for t in ids[mask]} == {"_"}
            assert all(task.vocab[t].startswith("v") for t in labels[mask])  # the targets there are the values
            hits, slots = hits + int((labels[mask] == ids[mask]).sum()), slots + int(mask.sum())
        assert slots == 1200 and hits <= 3  # noise: ~0.15 expected


def test_mqar_config_is_zoologys_default():
    """configs/data/mqar.yaml: Zoology's vocab_size 8192, power_a 0.01, random_non_queries, 16 tokens per pair
    (its paper's 128 tokens for 8 pairs, MQARConfig's num_kv_pairs 8); lenx's vocabulary adds PAD/BOS/SEP."""
    spec = yaml.safe_load((Path(__file__).parents[1] / "configs" / "data" / "mqar.yaml").read_text())
    task = T.build_task({"data": spec})
    assert isinstance(task, T.MQAR) and task.name == "mqar"
    assert (task.vocab_tokens, task.power_a, task.random_non_queries, task.tokens_per_pair) == (8192, 0.01, True, 16)
    assert task.train_size == 8 and task.seq_len() == 128 and task.vocab_size == 8192 + 3
    kv = T.build_task({"data": yaml.safe_load((Path(__file__).parents[1] / "configs" / "data" / "kv_recall.yaml")
                                              .read_text())})
    assert isinstance(kv, T.KVRecall) and kv.name == "kv_recall"


@pytest.mark.parametrize("params, match", [
    ({"tokens_per_pair": 7}, "tokens_per_pair must be even"),
    ({"tokens_per_pair": 2}, "tokens_per_pair must be an integer >= 4"),
    ({"power_a": 0}, "power_a must be a positive number"),
    ({"random_non_queries": "yes"}, "random_non_queries must be true or false"),
    ({"vocab": 8}, "4 pairs need more than the 3 keys"),
])
def test_mqar_bad_parameters_are_one_line(params, match):
    with pytest.raises(ConfigError, match=match):
        T.MQAR(train_size=4, **params)
