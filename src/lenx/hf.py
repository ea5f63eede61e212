"""Score a local Hugging Face causal LM with lenx's protocol and probes: `python evaluate.py hf.path=<dir>`.

Any architecture transformers loads as a causal LM (`AutoModelForCausalLM`), from a local directory only (lenx
never downloads). The corpus (`data@hf.data=...`, default stdlib) is tokenised with the model's own tokenizer
(`<dir>/tokenizer.json`, its EOS token between documents), so rows record that tokenizer's hash. The training
length the multipliers refer to is `hf.train_len`, else the config's original max positions (rope_parameters
`original_max_position_embeddings`), else `max_position_embeddings`. RoPE scalings are applied through
transformers' own `rope_parameters` (the model is reloaded with them), where the architecture is rotary and
transformers has the method: pi -> linear, dynamic_ntk -> dynamic, yarn, llama3; `factor: null` there means the
largest evaluation multiplier (a transformers scaling has one fixed factor).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lenx.errors import ConfigError

HF_SCALINGS = {"pi": "linear", "dynamic_ntk": "dynamic", "yarn": "yarn", "llama3": "llama3"}


class HFCausalLM(nn.Module):
    """A transformers causal LM behind lenx's model interface: model(idx_BT, pos_T=None) -> logits (B, T, V)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, idx_BT: torch.Tensor, pos_T: torch.Tensor | None = None) -> torch.Tensor:
        position_ids = None if pos_T is None else pos_T[None].expand(idx_BT.shape[0], -1)
        return self.model(input_ids=idx_BT, position_ids=position_ids, use_cache=False).logits


def local_dir(path) -> Path:
    """The model directory, which must exist here: a hub id is refused (no downloads)."""
    p = Path(str(path)).expanduser()
    if not (p / "config.json").is_file():
        raise ConfigError(f"hf.path={path} is not a local model directory (no config.json there); lenx never "
                          "downloads: fetch a hub model first (huggingface-cli download <id> --local-dir <dir>) "
                          "on a machine with network, then pass that directory")
    return p


def load_config(path: Path):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    archs = getattr(config, "architectures", None) or []
    if not any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        raise ConfigError(f"hf.path={path} holds {archs or config.model_type}, not a causal language model "
                          "(lenx scores next-token prediction: an *ForCausalLM architecture)")
    return config


def train_length(config, given: int | None) -> int:
    if given is not None:
        return int(given)
    rope = getattr(config, "rope_parameters", None) or {}
    for n in (rope.get("original_max_position_embeddings"),
              getattr(config, "original_max_position_embeddings", None),
              getattr(config, "max_position_embeddings", None), getattr(config, "max_seq_len", None),
              getattr(config, "n_positions", None)):
        if n:
            return int(n)
    raise ConfigError("cannot tell the model's training length from its config: pass hf.train_len=<tokens>")


def with_scaling(config, scaling: str, train_len: int, max_multiplier: float):
    """A copy of config with lenx's RoPE scaling `scaling` in transformers' rope_parameters."""
    import copy

    from lenx.checkpoint import scaling_config

    if scaling == "none":
        return config
    rope = getattr(config, "rope_parameters", None)
    if not isinstance(rope, dict) or "rope_theta" not in rope:
        raise ConfigError(f"scaling {scaling!r} does not apply to this {config.model_type} model: its config has no "
                          "rotary rope_parameters")
    if scaling not in HF_SCALINGS:
        raise ConfigError(f"scaling {scaling!r} has no transformers rope_type; on Hugging Face models lenx applies "
                          f"{sorted(HF_SCALINGS)}")
    params = {k: v for k, v in scaling_config(scaling).items()
              if k not in ("_target_", "original_len") and v is not None}
    params["factor"] = params.get("factor") or float(max_multiplier)
    out = copy.deepcopy(config)
    out.rope_parameters = {**rope, **params, "rope_type": HF_SCALINGS[scaling],
                           "original_max_position_embeddings": train_len}
    return out


def load_model(path: Path, config) -> HFCausalLM:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), config=config, local_files_only=True,
                                                 dtype=torch.float32)
    return HFCausalLM(model).eval()


def eod_token(path: Path, config) -> str:
    """The token written between documents: the model's EOS (else BOS), as its tokenizer spells it."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    for tid in (getattr(config, "eos_token_id", None), getattr(config, "bos_token_id", None)):
        tid = tid[0] if isinstance(tid, list) and tid else tid
        if isinstance(tid, int) and tok.id_to_token(tid) is not None:
            return tok.id_to_token(tid)
    raise ConfigError(f"{path}: the config names no EOS or BOS token its tokenizer has; lenx needs one to separate "
                      "documents")


def scoring_setup(hf: dict, data_cfg: dict, eval_cfg: dict, scalings: list[str] | None):
    """[(model, run config)] for each scaling, and the corpus provenance: everything validated before scoring."""
    from lenx import data

    path = local_dir(hf.get("path"))
    if not (path / "tokenizer.json").is_file():
        raise ConfigError(f"{path} has no tokenizer.json (a fast tokenizer): lenx tokenises the corpus with it")
    config = load_config(path)
    L = train_length(config, hf.get("train_len"))
    d = {**data_cfg, "tokenizer": str(path / "tokenizer.json"), "eod_token": eod_token(path, config)}
    prov = data.prepare({"data": d})
    vocab = getattr(config, "vocab_size", None)
    if vocab is not None and prov["vocab_size"] > vocab:
        raise ConfigError(f"the tokenizer has {prov['vocab_size']} tokens, the model only {vocab} embeddings")
    configs = [(s or "none", with_scaling(config, s or "none", L, max(eval_cfg["multipliers"])))
               for s in (scalings or [None])]
    out = []
    for name, c in configs:
        cfg = {"seq_len": L, "seed": None, "data": d, "provenance": prov, "model": {},
               "pos": {"_target_": f"transformers.{(c.architectures or [c.model_type])[0]}",
                       "scaling": {"method": name}}}
        out.append((load_model(path, c), cfg))
    return out, {"pos": f"hf:{config.model_type}", "model": path.name}
