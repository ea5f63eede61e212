"""Export to transformers: the exported model computes lenx's logits (GPT-NeoX for rope, MPT for alibi); lenx.hf
reads the training length back; the files are written by rename, never through a symlink, all with one mode."""

import os

import pytest
import torch
from conftest import compose_train

from lenx import hf as lenx_hf
from lenx.errors import ConfigError
from lenx.evaluate import load_model
from lenx.train import run

transformers = pytest.importorskip("transformers")

SMOKE = ["experiment=smoke", "data.vocab_size=300", "data.valid_fraction=0.2", "data.test_fraction=0.2",
         "trainer.enable_progress_bar=false", "eval.multipliers=[1]", "eval.probes.probe=null"]


@pytest.mark.parametrize("scheme, arch", [("rope", "GPTNeoXForCausalLM"), ("rope_partial", "GPTNeoXForCausalLM"),
                                          ("alibi", "MptForCausalLM")])
def test_exported_model_gives_lenx_logits_at_1x_and_16x(tmp_path, tree, monkeypatch, scheme, arch):
    from lenx.export import export_hf

    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))
    run(compose_train([*SMOKE, f"data.path={tree}", f"pos={scheme}", "model.n_heads=4"], tmp_path / "run"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    out = export_hf(ckpt, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == arch
    lenx_model, cfg = load_model(ckpt)
    ids = torch.randint(0, 300, (2, 16 * cfg["seq_len"]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for T in (cfg["seq_len"], 16 * cfg["seq_len"]):
            want, got = lenx_model(ids[:, :T]), hf(ids[:, :T]).logits
            assert (got - want).abs().max().item() < 1e-4, T
    tok = transformers.AutoTokenizer.from_pretrained(out)
    from tokenizers import Tokenizer

    state = torch.load(ckpt, weights_only=True)
    text = "def f(x):\n    return x + 1\n"
    assert tok(text)["input_ids"] == Tokenizer.from_str(state["lenx_tokenizer"]).encode(text).ids
    assert tok.eos_token == "<|endoftext|>"
    card = (out / "README.md").read_text()
    assert state["hyper_parameters"]["cfg"]["provenance"]["corpus_hash"] in card and "training length: 32" in card
    # lenx.hf's 1x is the training length, not MPT's ALiBi table size (max_seq_len 65536)
    assert lenx_hf.train_length(lenx_hf.load_config(out), None) == cfg["seq_len"] == 32


@pytest.mark.parametrize("scaling, factor", [("pi", 2.0), ("yarn", 4.0), ("llama3", 4.0)])
def test_a_scaling_trained_in_exports_into_rope_parameters(tmp_path, tree, monkeypatch, scaling, factor):
    """A RoPE scaling with a fixed factor, trained in, is carried into transformers' rope_parameters: the exported
    GPT-NeoX computes lenx's logits under it at 1x and 16x."""
    from lenx.export import export_hf

    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))
    run(compose_train([*SMOKE, f"data.path={tree}", "pos=rope", "model.n_heads=4", f"pos/scaling={scaling}",
                       f"pos.scaling.factor={factor}"], tmp_path / "run"))
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    hf = transformers.AutoModelForCausalLM.from_pretrained(export_hf(ckpt, tmp_path / "hf")).eval()
    rope = hf.config.rope_parameters
    assert rope["rope_type"] == {"pi": "linear"}.get(scaling, scaling) and rope["factor"] == factor
    lenx_model, cfg = load_model(ckpt)
    ids = torch.randint(0, 300, (1, 16 * cfg["seq_len"]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for T in (cfg["seq_len"], 16 * cfg["seq_len"]):
            assert (hf(ids[:, :T]).logits - lenx_model(ids[:, :T])).abs().max().item() < 1e-4, (scaling, T)


def test_other_schemes_are_refused_in_one_line(tmp_path, tree, monkeypatch):
    from lenx.export import export_hf

    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))
    run(compose_train([*SMOKE, f"data.path={tree}", "pos=t5"], tmp_path / "run"))
    with pytest.raises(ConfigError, match=r"pos=t5 does not export to transformers: only rope and rope_partial"):
        export_hf(tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "hf")


EXPORTED = ["config.json", "model.safetensors", "README.md", "tokenizer.json", "tokenizer_config.json"]


def test_export_replaces_planted_symlinks_and_gives_every_file_one_mode(tmp_path, tree, monkeypatch):
    """A symlink under an exported name in out_dir is replaced, its target untouched; every file gets the umask's
    mode (safetensors alone leaves 0600); no temporary directory stays behind."""
    from lenx.export import export_hf

    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))
    run(compose_train([*SMOKE, f"data.path={tree}", "pos=rope", "model.n_heads=4"], tmp_path / "run"))
    out, outside = tmp_path / "hf", tmp_path / "outside"
    out.mkdir()
    outside.mkdir()
    planted = [*EXPORTED, "special_tokens_map.json"]
    for name in planted:
        (outside / name).write_text(f"the user's own {name}\n")
        (out / name).symlink_to(outside / name)
    old = os.umask(0o027)
    try:
        export_hf(tmp_path / "run" / "checkpoints" / "last.ckpt", out)
    finally:
        os.umask(old)
    assert all((outside / name).read_text() == f"the user's own {name}\n" for name in planted)
    assert all((out / name).is_file() and not (out / name).is_symlink() for name in EXPORTED)
    assert {oct((out / name).stat().st_mode & 0o777) for name in EXPORTED} == {oct(0o640)}
    assert sorted(p.name for p in out.iterdir()) == sorted(planted)  # (an unwritten name is left as it was)
    assert transformers.AutoModelForCausalLM.from_pretrained(out).config.lenx_train_len == 32
