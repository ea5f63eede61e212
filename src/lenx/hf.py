"""Score a local Hugging Face causal LM with lenx's protocol and probes: `python evaluate.py hf.path=<dir>`.

Any architecture transformers has built in as a causal LM (`AutoModelForCausalLM`), from a local directory only.
A model directory is data, never code: lenx refuses a config.json that names its own Python (`auto_map`) or a hub
attention kernel, loads only safetensors weights (a pickle runs code when unpickled), passes trust_remote_code=False
and a fixed attention implementation (sdpa where the architecture has it, else eager: transformers' default, whatever
config.json asks for), and keeps the hub offline while loading, so nothing is downloaded.

The corpus (`data@hf.data=...`, default stdlib) is tokenised with the model's own tokenizer (`<dir>/tokenizer.json`,
its EOS token between documents), so rows record that tokenizer's hash. The training length the multipliers refer to
is `hf.train_len`, else `lenx_train_len` (which lenx.export writes into config.json), else the config's original max
positions (rope_parameters `original_max_position_embeddings`), else `max_position_embeddings`. RoPE scalings are
applied through transformers' own `rope_parameters` (the model is reloaded with them), where the architecture is
rotary and transformers has the method: pi -> linear, dynamic_ntk -> dynamic, yarn, llama3; `factor: null` there
means the largest evaluation multiplier (a transformers scaling has one fixed factor).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from lenx import data
from lenx.configs import scaling_config
from lenx.errors import CheckpointError, ConfigError, check_int

HF_SCALINGS = {"pi": "linear", "dynamic_ntk": "dynamic", "yarn": "yarn", "llama3": "llama3"}
SAFETENSORS = ("model.safetensors", "model.safetensors.index.json")
PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")  # torch.load / pickle formats: never loaded


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


def _entries(node):
    """Every (key, value) of a parsed JSON tree, nested dicts and lists included (sub-configs have their own keys)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from _entries(v)
    elif isinstance(node, list):
        for v in node:
            yield from _entries(v)


def read_config_json(path: Path) -> dict:
    """config.json parsed by lenx first: what would make transformers run or fetch code is refused before it reads
    the file."""
    f = path / "config.json"
    try:
        raw = json.loads(f.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{f} is not JSON ({e}): pass a transformers model directory (save_pretrained's)") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{f} holds a JSON {type(raw).__name__}, not an object: pass a transformers model directory "
                          "(save_pretrained's)")
    for key, value in _entries(raw):
        if key == "auto_map":
            raise ConfigError(f"{f} has auto_map: the model brings its own Python code, which lenx never runs; score "
                              "an architecture transformers has built in (if model_type names one, delete auto_map)")
        named = value.values() if isinstance(value, dict) else [value]
        if key in ("attn_implementation", "_attn_implementation") and any(isinstance(v, str) and "/" in v
                                                                          for v in named):
            raise ConfigError(f"{f} has {key}={value!r}, a kernel from the hub, which lenx never downloads nor "
                              f"runs: delete {key} (lenx uses transformers' built-in attention)")
    return raw


@contextmanager
def hub_offline():
    """The Hugging Face hub offline while transformers loads: HF_HUB_OFFLINE=1, restored after. huggingface_hub
    reads the variable once, at import, so its module constant (which every request checks) is set as well."""
    from huggingface_hub import constants

    env, const = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], constants.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = const
        if env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def load_config(path: Path):
    from transformers import AutoConfig

    raw = read_config_json(path)
    try:
        with hub_offline():
            config = AutoConfig.from_pretrained(str(path), local_files_only=True, trust_remote_code=False)
    except Exception as e:  # a foreign config.json: transformers' own error, as one line
        raise ConfigError(f"{path}/config.json (model_type {raw.get('model_type')!r}) is not a config this "
                          f"transformers can read: {_first_line(e)}") from e
    archs = getattr(config, "architectures", None) or []
    if not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise ConfigError(f"hf.path={path} holds {archs or config.model_type}, not a causal language model "
                          "(lenx scores next-token prediction: an *ForCausalLM architecture)")
    return config


def train_length(config, given: int | None) -> int:
    """hf.train_len, else lenx_train_len (a lenx export's training length: an MPT export's max_seq_len is MPT's
    ALiBi table size, 65536, not the length it was trained at), else the config's max positions."""
    if given is not None:
        return check_int(given, "hf.train_len")
    if getattr(config, "lenx_train_len", None) is not None:
        return check_int(config.lenx_train_len, "config.json lenx_train_len")
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


def weights_file(path: Path) -> Path:
    """The directory's safetensors weights; pickled weights only (pytorch_model.bin, ...) are refused, not loaded."""
    for name in SAFETENSORS:
        if (path / name).is_file():
            return path / name
    pickled = sorted(p.name for p in path.iterdir() if p.suffix in PICKLED)
    if pickled:
        raise CheckpointError(f"{path} has its weights only as a pickle ({pickled[0]}), which lenx never loads "
                              "(unpickling can run code): convert them to model.safetensors (load the model once "
                              "where you trust it and save_pretrained it) and pass that directory")
    raise CheckpointError(f"{path} has no {SAFETENSORS[0]} (nor {SAFETENSORS[1]}): there are no weights to score; "
                          "fetch the model's safetensors files into it")


def load_model(path: Path, config) -> HFCausalLM:
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoModelForCausalLM

    weights = weights_file(path)
    try:
        cls = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        raise ConfigError(f"hf.path={path}: transformers has no causal LM for model_type "
                          f"{config.model_type!r}") from None
    # fixed, never read from config.json (which may name a hub kernel): what transformers picks by default
    attn = "sdpa" if getattr(cls, "_supports_sdpa", False) else "eager"
    try:
        with hub_offline():
            model, info = AutoModelForCausalLM.from_pretrained(
                str(path), config=config, local_files_only=True, trust_remote_code=False, use_safetensors=True,
                attn_implementation=attn, dtype=torch.float32, output_loading_info=True,
                ignore_mismatched_sizes=True)  # reported below by name, not as transformers' RuntimeError
    except Exception as e:  # a truncated or malformed file, a missing shard: one line
        raise CheckpointError(f"{weights} does not load as the model {path}/config.json describes: "
                              f"{_first_line(e)}; fetch or convert the directory again") from e
    # transformers fills a parameter the file lacks, or holds at another shape, with random values and only logs
    # it: lenx would score noise
    bad = sorted(info["missing_keys"]) + sorted(k[0] for k in info["mismatched_keys"])
    if bad or info["error_msgs"]:
        what = (f"parameters missing or of another shape: {len(bad)} ({', '.join(bad[:3])}"
                f"{', ...' if len(bad) > 3 else ''})" if bad else str(info["error_msgs"][0]).splitlines()[0])
        raise CheckpointError(f"{weights} does not hold the weights {path}/config.json describes, {what}: the "
                              "two come from different models; fetch or convert the directory again")
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
    path = local_dir(hf.get("path"))
    if not (path / "tokenizer.json").is_file():
        raise ConfigError(f"{path} has no tokenizer.json (a fast tokenizer): lenx tokenises the corpus with it")
    config = load_config(path)
    L = train_length(config, hf.get("train_len"))
    weights_file(path)  # weights refused here, before the corpus is tokenised
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
