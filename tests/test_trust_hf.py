"""A Hugging Face model directory is data, never code (lenx.hf): a config.json naming its own Python or a hub
kernel, pickled weights, a foreign or malformed directory, and a bad hf.train_len are each refused in one line,
before the corpus is tokenised; nothing is imported from the directory, nothing is downloaded, nobody is asked."""

import json
import os
import socket
from types import SimpleNamespace

import pytest
import torch

import lenx.data
from lenx import hf
from lenx.errors import CheckpointError, ConfigError

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # (transformers brings safetensors)


def tiny_dir(tmp_path, **config_over):
    """A random 1-layer Llama saved locally, with a word-level tokenizer whose id 0 is the EOS token."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    config = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                                      eos_token_id=0, bos_token_id=0)
    torch.manual_seed(0)
    path = tmp_path / "model"
    transformers.LlamaForCausalLM(config).save_pretrained(str(path))
    tok = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "<unk>": 1}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    if config_over:
        edit_config(path, **config_over)
    return path


def edit_config(path, **over):
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, **over}))


@pytest.fixture
def no_corpus(monkeypatch):
    """Tokenising the corpus (the expensive step) fails the test: every refusal here must come before it."""
    monkeypatch.setattr(lenx.data, "prepare", lambda *a, **k: pytest.fail("the corpus was tokenised first"))


def setup(path, train_len=None):
    return hf.scoring_setup({"path": str(path), "train_len": train_len}, {}, {"multipliers": [1, 2]}, None)


def one_line(e) -> str:
    assert "\n" not in str(e.value)
    return str(e.value)


@pytest.mark.parametrize("model_type", ["lenx_planted", "llama"])
def test_a_config_with_its_own_code_is_refused_and_the_code_never_runs(tmp_path, monkeypatch, no_corpus,
                                                                      model_type):
    """transformers asks "run the custom code? [y/N]" for an unknown model_type with auto_map and imports the
    directory's .py on a yes; lenx refuses auto_map before transformers reads config.json (answering yes here)."""
    path = tiny_dir(tmp_path)
    marker = tmp_path / "the planted code ran"
    (path / "planted.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        f"class PlantedConfig(LlamaConfig):\n    model_type = {model_type!r}\n"
        "class PlantedForCausalLM(LlamaForCausalLM):\n    config_class = PlantedConfig\n")
    edit_config(path, model_type=model_type, architectures=["PlantedForCausalLM"],
                auto_map={"AutoConfig": "planted.PlantedConfig", "AutoModelForCausalLM": "planted.PlantedForCausalLM"})
    asked = []
    monkeypatch.setattr("builtins.input", lambda *a: asked.append(a) or "y")
    monkeypatch.setattr(transformers.dynamic_module_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    with pytest.raises(ConfigError, match=r"config.json has auto_map: .*lenx never runs") as e:
        setup(path)
    one_line(e)
    assert not marker.exists() and not asked


@pytest.mark.parametrize("key", ["attn_implementation", "_attn_implementation"])
def test_a_hub_kernel_named_in_config_is_refused_without_a_connection(tmp_path, monkeypatch, no_corpus, key):
    path = tiny_dir(tmp_path, **{key: "kernels-community/flash-attn"})
    tried = []

    def no_network(*a, **k):
        tried.append(a)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)  # (a name lookup comes first)
    refused = rf"has {key}='kernels-community/flash-attn', a kernel from the hub.*delete {key}"
    with pytest.raises(ConfigError, match=refused) as e:
        hf.load_model(path, hf.load_config(path))
    one_line(e)
    with pytest.raises(ConfigError, match=refused):
        setup(path)
    assert not tried


def test_lenx_fixes_the_attention_and_keeps_the_hub_offline_while_loading(tmp_path, monkeypatch):
    """config.json's own attention choice is overridden by transformers' default (sdpa for Llama); the hub is
    offline (variable and huggingface_hub's constant) for the load and as before after it."""
    from huggingface_hub import constants

    path = tiny_dir(tmp_path, attn_implementation="eager")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    seen, load = [], transformers.AutoModelForCausalLM.from_pretrained

    def spy(*a, **k):
        seen.append((os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE, k.get("trust_remote_code")))
        return load(*a, **k)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    model = hf.load_model(path, hf.load_config(path))
    assert model.model.config._attn_implementation == "sdpa"
    assert seen == [("1", True, False)]
    assert "HF_HUB_OFFLINE" not in os.environ and constants.HF_HUB_OFFLINE is False


def test_pickled_weights_are_refused_not_loaded(tmp_path, no_corpus):
    path = tiny_dir(tmp_path)
    torch.save(load_file(path / "model.safetensors"), path / "pytorch_model.bin")
    (path / "model.safetensors").unlink()
    for attempt in (lambda: setup(path), lambda: hf.load_model(path, hf.load_config(path))):
        with pytest.raises(CheckpointError, match=r"only as a pickle \(pytorch_model.bin\), which lenx never loads"
                                                  r".*convert them to model.safetensors") as e:
            attempt()
        one_line(e)


@pytest.mark.parametrize("break_it, error, message", [
    (lambda p: (p / "model.safetensors").unlink(), CheckpointError, r"has no model.safetensors"),
    (lambda p: (p / "config.json").write_text("{'model_type': 'llama',"), ConfigError, r"config.json is not JSON"),
    (lambda p: (p / "config.json").write_text("[1, 2]"), ConfigError, r"holds a JSON list, not an object"),
    (lambda p: (p / "config.json").write_text('{"hello": "world"}'), ConfigError,
     r"config.json \(model_type None\) is not a config this transformers can read: ValueError"),
    (lambda p: (p / "config.json").write_text('{"model_type": "no-such-model"}'), ConfigError,
     r"model_type 'no-such-model'\) is not a config this transformers can read"),
    (lambda p: edit_config(p, lenx_train_len="abc"), ConfigError, r"config.json lenx_train_len must be a positive"),
], ids=["no-weights", "not-json", "json-list", "foreign-json", "unknown-model-type", "bad-lenx-train-len"])
def test_a_foreign_or_malformed_directory_is_one_line(tmp_path, no_corpus, break_it, error, message):
    path = tiny_dir(tmp_path)
    break_it(path)
    with pytest.raises(error, match=message) as e:
        setup(path)
    one_line(e)


def truncate(path):
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:200])


def drop_a_tensor(path):
    sd = load_file(path / "model.safetensors")
    del sd["model.norm.weight"]
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})


def reshape_a_tensor(path):
    sd = load_file(path / "model.safetensors")
    sd["model.embed_tokens.weight"] = torch.zeros(60, 16)
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})


MISMATCH = r"does not hold the weights .*config.json describes, parameters missing or of another shape: "


@pytest.mark.parametrize("break_it, message", [
    (truncate, r"does not load as the model .*config.json describes: \w+"),
    # transformers would fill the missing tensor with random values and only log it
    (drop_a_tensor, rf"{MISMATCH}1 \(model.norm.weight\)"),
    (reshape_a_tensor, rf"{MISMATCH}1 \(model.embed_tokens.weight\)"),
], ids=["truncated", "missing-tensor", "wrong-shape"])
def test_weights_that_do_not_match_the_config_are_one_line(tmp_path, break_it, message):
    path = tiny_dir(tmp_path)
    break_it(path)
    with pytest.raises(CheckpointError, match=message) as e:
        hf.load_model(path, hf.load_config(path))
    one_line(e)


@pytest.mark.parametrize("bad", [0, -5, "abc", 31.7, True])
def test_hf_train_len_must_be_a_positive_integer(tmp_path, no_corpus, bad):
    with pytest.raises(ConfigError, match=r"^hf.train_len must be a positive integer, got ") as e:
        hf.train_length(SimpleNamespace(max_position_embeddings=32), bad)
    one_line(e)
    with pytest.raises(ConfigError, match=r"^hf.train_len must be a positive integer"):
        setup(tiny_dir(tmp_path), bad)
