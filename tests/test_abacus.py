"""pos=abacus (McLeish et al. 2024, arXiv:2405.17399; mcleish7/arithmetic abacus.py): places against the authors'
helper, the random offset while training, and where the digit ids come from (a task's vocabulary, a corpus
tokenizer's single-digit tokens). Its attention parity with the formula: tests/test_zoo_parity.py."""

import pytest
import torch
from conftest import compose_train, make_model
from omegaconf import OmegaConf
from test_zoo_parity import abacus_places_reference

from lenx import tasks
from lenx.errors import ConfigError
from lenx.pos.absolute import abacus_places


def test_places_equal_the_authors_helper():
    g = torch.Generator().manual_seed(0)
    for p in (0.1, 0.5, 0.9):
        mask = torch.rand(16, 40, generator=g) < p
        assert torch.equal(abacus_places(mask), abacus_places_reference(mask))
    # a hand example: "12+345=" -> places 1 2 0 1 2 3 0
    assert abacus_places(torch.tensor([[1, 1, 0, 1, 1, 1, 0]], dtype=torch.bool)).tolist() == [[1, 2, 0, 1, 2, 3, 0]]


def test_training_shifts_every_digit_by_one_k_per_forward():
    """As the authors' forward: k uniform in 0..max_k per call while training, added to the digits' places only;
    none while scoring."""
    pos = make_model("abacus").pos
    idx = torch.tensor([[3, 4, 20, 5, 6, 7, 30], [1, 12, 12, 2, 3, 40, 41]])
    x = torch.zeros(2, 7, pos.d_model)
    places = abacus_places(torch.isin(idx, pos.digit_ids))
    assert torch.equal(pos.embed_tokens(x, idx), pos.table.weight[places])  # eval: k = 0
    pos.train()
    for seed in range(5):
        torch.manual_seed(seed)
        k = int(torch.randint(0, pos.max_k + 1, ()))
        torch.manual_seed(seed)
        got = pos.embed_tokens(x, idx)
        assert torch.equal(got, pos.table.weight[torch.where(places > 0, places + k, 0)])


def test_digit_ids_come_from_the_task_vocabulary(tmp_path):
    cfg = OmegaConf.to_container(compose_train(["data=addition", "pos=abacus"], tmp_path), resolve=True)
    task = tasks.configure(cfg)
    assert cfg["pos"]["digit_ids"] == [task.id(d) for d in "0123456789"]
    cfg = OmegaConf.to_container(compose_train(["data=copy", "pos=abacus"], tmp_path), resolve=True)
    with pytest.raises(ConfigError, match="pos=abacus: the copy task has none of the digit symbols"):
        tasks.configure(cfg)


def test_a_model_without_digit_ids_is_one_line():
    model = make_model("abacus", digit_ids=None)
    with pytest.raises(ConfigError, match="pos=abacus needs the ids of its digit symbols"):
        model(torch.randint(0, 50, (1, 8)))


def test_on_a_corpus_the_digit_ids_are_the_tokenizers_single_digit_tokens(tmp_path, tree, monkeypatch):
    """A language-model run: pos.digit_ids from the run's BPE (its tokens that are exactly one digit), recorded in
    the run's config, so that the checkpoint rebuilds the same scheme."""
    import json

    from tokenizers import Tokenizer

    from lenx.evaluate import load_model
    from lenx.train import run

    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))
    (tree / "digits.py").write_text("x = 1234567890 + 42\n" * 50)
    cfg = compose_train(["experiment=smoke", f"data.path={tree}", "data.vocab_size=300", "data.valid_fraction=0.2",
                         "data.test_fraction=0.2", "logger=csv", "trainer.enable_progress_bar=false", "pos=abacus",
                         "eval.probes.probe=null"], tmp_path / "run")
    run(cfg)
    stored = OmegaConf.load(tmp_path / "run" / "run_config.yaml")
    tok = Tokenizer.from_str(json.dumps(json.load(open(next((tmp_path / "cache").rglob("tokenizer.json"))))))
    ids = list(stored.pos.digit_ids)
    assert ids and all(tok.id_to_token(i) in "0123456789" and len(tok.id_to_token(i)) == 1 for i in ids)
    model, _ = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert model.pos.digit_ids.tolist() == ids
