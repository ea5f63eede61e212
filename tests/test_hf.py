"""Scoring local Hugging Face causal LMs with lenx's protocol (lenx.hf): an exported lenx checkpoint reproduces its
own rows, a tiny random Llama scores under transformers' own yarn, and bad paths get one line. No downloads."""

import json
import math

import pytest
import torch
from test_end_to_end import cfg_eval, compose_run

from lenx import hf
from lenx.errors import ConfigError

transformers = pytest.importorskip("transformers")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))


def test_an_exported_checkpoint_scores_as_the_checkpoint_did(tmp_path, tree, cache):
    from lenx.evaluate import evaluate_hf, load_model
    from lenx.export import export_hf
    from lenx.train import run

    cfg = compose_run(tmp_path, tree, "pos=rope", "eval.multipliers=[1,4,16]", "eval.probes.probe=null")
    lenx_rows = run(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    out = export_hf(ckpt, tmp_path / "export")
    _, mcfg = load_model(ckpt)
    data_cfg = {k: v for k, v in mcfg["data"].items() if k != "tokenizer"}
    rows = evaluate_hf({"path": str(out), "train_len": None}, data_cfg, cfg_eval(cfg), tmp_path / "hf_ev")
    assert [r["eval_len"] for r in rows] == [r["eval_len"] for r in lenx_rows] == [32, 128, 512]
    assert [r["targets_hash"] for r in rows] == [r["targets_hash"] for r in lenx_rows]  # the same scored tokens
    assert [r["ppl"] for r in rows] == pytest.approx([r["ppl"] for r in lenx_rows], rel=1e-5)
    assert all(r["pos"] == "hf:gpt_neox" and r["scaling"] == "none" and r["tokenizer_hash"] for r in rows)


def tiny_llama(tmp_path, tree):
    """A random 2-layer Llama saved locally, with a BPE tokenizer trained here (EOS: <|endoftext|>)."""
    from lenx.data import EOD_TOKEN, train_tokenizer

    texts = [p.read_text() for p in sorted((tree / "pkg").glob("*.py")) if p.name != "latin1.py"]
    tok = train_tokenizer(texts, 300, 2)
    eos = tok.token_to_id(EOD_TOKEN)
    config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                      max_position_embeddings=32, eos_token_id=eos, bos_token_id=eos)
    torch.manual_seed(0)
    path = tmp_path / "llama"
    transformers.LlamaForCausalLM(config).save_pretrained(str(path))
    (path / "tokenizer.json").write_text(tok.to_str())
    return path


def test_a_local_llama_scores_under_transformers_own_yarn(tmp_path, tree, cache):
    from lenx.evaluate import evaluate_hf

    path = tiny_llama(tmp_path, tree)
    data_cfg = compose_run(tmp_path, tree).data
    from omegaconf import OmegaConf

    data_cfg = OmegaConf.to_container(data_cfg, resolve=True)
    eval_cfg = {**cfg_eval(compose_run(tmp_path, tree, "eval.multipliers=[1,2,4]", "eval.probes.probe=null"))}
    rows = evaluate_hf({"path": str(path), "train_len": None}, data_cfg, eval_cfg, tmp_path / "ev", ["none", "yarn"])
    assert len(rows) == 6 and all(r["status"] == "ok" and math.isfinite(r["ppl"]) for r in rows)
    assert {r["train_len"] for r in rows} == {32} and {r["scaling"] for r in rows} == {"none", "yarn"}
    # the yarn model lenx scored is transformers' own Llama with rope_parameters yarn, factor 4 (the largest x)
    models, _ = hf.scoring_setup({"path": str(path), "train_len": None}, data_cfg, eval_cfg, ["yarn"])
    got = models[0][0]
    rope = got.model.config.rope_parameters
    assert rope["rope_type"] == "yarn" and rope["factor"] == 4.0 and rope["original_max_position_embeddings"] == 32
    config = transformers.AutoConfig.from_pretrained(str(path))
    config.rope_parameters = {"rope_theta": 10000.0, "rope_type": "yarn", "factor": 4.0, "beta_fast": 32,
                              "beta_slow": 1, "truncate": True, "original_max_position_embeddings": 32}
    ref = transformers.LlamaForCausalLM.from_pretrained(str(path), config=config).eval()
    idx = torch.randint(0, config.vocab_size, (2, 128), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(got(idx), ref(input_ids=idx).logits, rtol=0, atol=0)
        plain = hf.load_model(path, transformers.AutoConfig.from_pretrained(str(path)))
        assert not torch.allclose(got(idx), plain(idx))  # (yarn changed something)


def test_refusals_are_one_line(tmp_path, tree, cache):
    with pytest.raises(ConfigError, match="not a local model directory.*never downloads") as e:
        hf.local_dir("meta-llama/Llama-2-7b-hf")
    assert "\n" not in str(e.value)
    path = tiny_llama(tmp_path, tree)
    config = json.loads((path / "config.json").read_text())
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaModel"]}))
    with pytest.raises(ConfigError, match="not a causal language model"):
        hf.load_config(bert)
    with pytest.raises(ConfigError, match="no transformers rope_type"):
        hf.with_scaling(hf.load_config(path), "ntk", 32, 4)
