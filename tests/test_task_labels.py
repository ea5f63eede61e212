"""Answers that are labels only (MQAR as Zoology builds it: the value is a target, the input holds noise): the loss
and the score read the labels, nothing is fed back under greedy decoding, and every other task's instances and loss
are bitwise what they were before labels existed."""

import hashlib

import pytest
import torch
from conftest import compose_train
from test_tasks import TASKS, Scripted

from lenx import tasks as T


def test_mqar_loss_is_on_its_labels_only():
    """MQAR's answers are labels only: changing the outputs that predict no answer changes nothing; the loss is on
    the labels, not on the noise the input holds at the answer slots."""
    task = TASKS["mqar_empty"]
    ids_BT, mask_BT, labels_BT = T.pad([task.instance(0, "train", i) for i in range(4)])
    assert not torch.equal(ids_BT[mask_BT], labels_BT[mask_BT])
    logits = torch.randn(*ids_BT[:, :-1].shape, task.vocab_size)
    changed = logits.clone()
    changed[~mask_BT[:, 1:]] = torch.randn_like(changed[~mask_BT[:, 1:]])
    loss = T.masked_loss(logits, ids_BT, mask_BT, labels_BT)
    assert torch.equal(loss, T.masked_loss(changed, ids_BT, mask_BT, labels_BT))
    assert loss != T.masked_loss(logits, ids_BT, mask_BT)  # on the input tokens (`_`): another loss


def training_module(tmp_path, data, *over):
    """A tiny LenxModule of a task run (data=<data>), and its task, seeded."""
    from omegaconf import OmegaConf

    from lenx.lit import LenxModule

    cfg = OmegaConf.to_container(compose_train([f"data={data}", "pos=rope", "experiment=smoke", *over], tmp_path),
                                 resolve=True)
    task = T.configure(cfg)
    torch.manual_seed(0)
    return LenxModule(cfg), task


def test_mqar_training_loss_is_cross_entropy_at_the_labelled_positions(tmp_path):
    """A training batch of data=mqar (Zoology's noise on) as WindowData serves it (ids, mask, labels): the module's
    loss is the mean, over the labelled positions only, of -log p(value | the input up to its query), computed
    here by hand; the input the model reads holds noise at the answer slots, the labels the values."""
    from lenx.lit import WindowData

    module, task = training_module(tmp_path, "mqar", "data.task.vocab=64", "data.task.tokens_per_pair=6",
                                   "data.task.train_size=3")
    data = WindowData(None, None, seq_len=task.seq_len(), batch_size=6, max_steps=1, accumulate=1, val_batches=1,
                      seed=0, task=task)
    batch = next(iter(data.train_dataloader()))
    ids_BT, mask_BT, labels_BT = batch
    assert len(batch) == 3 and mask_BT.sum() >= 6
    logp_BTV = torch.log_softmax(module.model(ids_BT[:, :-1]).float(), -1)
    terms = [-logp_BTV[b, t - 1, labels_BT[b, t]] for b in range(ids_BT.shape[0]) for t in range(1, ids_BT.shape[1])
             if mask_BT[b, t]]
    assert all(task.vocab[y].startswith("v") for y in labels_BT[mask_BT])  # the targets: values
    assert torch.equal(labels_BT[~mask_BT], ids_BT[~mask_BT]) and not torch.equal(labels_BT, ids_BT)
    assert len(terms) == int(mask_BT.sum())
    assert torch.allclose(module._loss(batch), torch.stack(terms).mean(), rtol=1e-6, atol=0)


# Digests of instances of every task but mqar, computed before answers could be labels only (issue 32): those
# tasks' instances are bitwise what they were.
BEFORE_LABELS = {
    "copy": "a7ceb7e5000772e9",
    "reverse": "5802ad51d80cd2a5",
    "sort": "46b04522b77f3bb6",
    "parity": "406f1349ad88347c",
    "addition": "be72e881c6ff418a",
    "addition_plain": "29288768f7b7865c",
    "kv_recall": "7867ebe0de6dfea7",
    "variable_tracking": "5b4c58fe799d3d44",
    "niah_multikey": "c98cbfad0f6f557f",
    "passkey_task": "a9f178e1cb8bb3ee",
    "copy_eos": "90c28cfc84774bcf",
    "kv_recall_eos": "edf2ec7825a5b681",
}


@pytest.mark.parametrize("kind", BEFORE_LABELS)
def test_tasks_whose_answers_stand_in_the_sequence_are_unchanged(kind):
    """Instances (ids, mask) bitwise as before labels existed, batches of two tensors, and the loss bitwise the
    old formula (cross-entropy against ids[:, 1:] at the answers)."""

    import torch.nn.functional as F

    task = {"copy_eos": lambda: T.Copy(train_size=6, alphabet=5),
            "kv_recall_eos": lambda: T.KVRecall(train_size=4, keys=40, values=8)}.get(kind, lambda: TASKS[kind])()
    task.eos = kind.endswith("_eos")  # as build_task sets it, before the vocabulary is read
    h = hashlib.sha256()
    for split, size in [("train", None), ("validation", None), ("eval", task.train_size),
                        ("eval", 2 * task.train_size)]:
        for i in range(25):
            inst = task.instance(5, split, i, size)
            assert len(inst) == 2
            for a in inst:
                h.update(a.tobytes())
    assert h.hexdigest()[:16] == BEFORE_LABELS[kind]
    batch = T.pad([task.instance(0, "train", i) for i in range(5)])
    assert len(batch) == 2
    ids_BT, mask_BT = batch
    logits = torch.randn(*ids_BT[:, :-1].shape, task.vocab_size, generator=torch.Generator().manual_seed(0))
    nll = F.cross_entropy(logits.float().transpose(1, 2), ids_BT[:, 1:], reduction="none")  # the old masked_loss
    old = (nll * mask_BT[:, 1:].float()).sum() / mask_BT[:, 1:].float().sum().clamp(min=1)
    assert torch.equal(T.masked_loss(logits, *batch), old)
    assert torch.equal(T.masked_loss(logits, *batch, ids_BT), old)  # labels equal to the ids: the same loss


def test_a_task_module_loss_on_two_tensors_is_the_old_call(tmp_path):
    """LenxModule._loss on a (ids, mask) batch is masked_loss(model(ids[:, :-1]), ids, mask), bitwise."""
    module, task = training_module(tmp_path, "kv_recall", "data.task.train_size=3")
    batch = T.pad([task.instance(0, "train", i) for i in range(4)])
    ids_BT, mask_BT = batch
    assert torch.equal(module._loss(batch), T.masked_loss(module.model(ids_BT[:, :-1]), ids_BT, mask_BT))


def test_label_only_answers_are_never_fed_back():
    """Greedy decoding of MQAR is teacher decoding: one forward over the given input stream (the noise at the
    answer slots stays whatever the model predicts), the predictions compared with the labels."""
    task = TASKS["mqar_empty"]
    ids_BT, mask_BT, labels_BT = T.pad([task.instance(0, "eval", i, 3) for i in range(4)])
    seen = []

    class Noisy(torch.nn.Module):
        def forward(self, idx_BT):
            seen.append(idx_BT.clone())
            return torch.randn(*idx_BT.shape, task.vocab_size, generator=torch.Generator().manual_seed(1))

    greedy = T.predict(Noisy(), ids_BT, mask_BT, "greedy", labels_BT=labels_BT)
    teacher = T.predict(Noisy(), ids_BT, mask_BT, "teacher", labels_BT=labels_BT)
    assert torch.equal(greedy, teacher) and len(seen) == 2
    assert all(torch.equal(x, ids_BT[:, :-1]) for x in seen)  # the input stream, untouched
    assert torch.equal(greedy[~mask_BT], labels_BT[~mask_BT])
    rows = {d: next(T.task_accuracy(Scripted("mqar_empty", task), task, multipliers=[2], instances=4, batch=4,
                                    decode=d, device="cpu")) for d in ("teacher", "greedy")}
    assert rows["teacher"]["accuracy"] == rows["greedy"]["accuracy"] == 1.0
