"""Read, validate and rebuild a checkpoint's model, from lenx's own configs only.

A checkpoint is data, never code. `torch.load(weights_only=True)` stops pickled code, and the model is rebuilt
without instantiating anything the file names: the stored positional config must match one of lenx's schemes
(`configs/pos/<name>.yaml`) and scalings (`configs/pos/scaling/<name>.yaml`) key for key, Hydra's special keys
(`_target_`, `_partial_`, ...) must equal lenx's own, and every stored value must be plain data (numbers, strings
without interpolations, lists of those). Anything else is refused with one line before any import or call.

`build_model` (a run config's Decoder, for training and for a checkpoint alone) lives here, above lenx.model and
lenx.pos, so that loading a model never runs through the modules it builds (lenx.lit imports it from here).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch

from lenx import data, positions
from lenx.attention import Modifiers
from lenx.block import BlockShape
from lenx.configs import (  # noqa: F401  (CONFIG_DIR, config_names, named_config, scheme_config: public here too)
    CONFIG_DIR,
    config_names,
    load_yaml,
    named_config,
    scaling_config,
    scheme_config,
    scheme_configs,
)
from lenx.errors import CheckpointError, ConfigError, CorpusError, instantiate_node
from lenx.model import Decoder
from lenx.pos.rope import Rotary
from lenx.results import atomic_write_bytes
from lenx.scoring import check_attention
from lenx.tasks import build_task

PLAIN = (bool, int, float, str, type(None))


def read_checkpoint(ckpt_path: str | Path) -> dict:
    """The checkpoint's dict, loaded with weights_only=True (never executes pickled code from the file)."""
    path = Path(ckpt_path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file (e.g. {path}/checkpoints/last.ckpt)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # one line, and never torch's advice to unpickle the file with weights_only=False
        with open(path, "rb") as f:
            zipped = f.read(4) == b"PK\x03\x04"  # torch.save's format
        if not zipped:
            raise CheckpointError(f"{path} is not a lenx checkpoint (not a file written by torch.save)") from None
        if "Weights only load failed" in str(e):
            raise CheckpointError(f"{path} is not a lenx checkpoint: it holds objects other than tensors and plain "
                                  "data, which lenx never unpickles") from None
        raise CheckpointError(f"cannot read checkpoint {path}: damaged or truncated "
                              f"({str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__})"
                              ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "cfg" not in ckpt.get("hyper_parameters", {}):
        raise CheckpointError(f"{path} is not a lenx checkpoint (no state_dict / hyper_parameters.cfg)")
    return ckpt


def is_rotary(pos: dict) -> bool:
    """Whether a positional config (whose `_target_` is one of lenx's schemes) builds a scheme that takes a RoPE
    scaling (a subclass of lenx.pos.rope.Rotary)."""
    from hydra.utils import get_class

    try:
        return issubclass(get_class(pos["_target_"]), Rotary)
    except (ImportError, ValueError, TypeError, KeyError):  # not a class lenx can import: it takes no lenx scaling
        return False


def stored_scaling(stored, where: str) -> dict:
    """lenx's configs/pos/scaling/ config a stored scaling node names, with its stored values (validated): the
    node names its method by `_target_` (or, written before scalings were classes, by `method`)."""
    if isinstance(stored, dict) and "method" in stored:  # from before scalings were classes: `method` names it
        params = {k: v for k, v in stored.items() if k not in ("method", "_target_")}
        return _merge(scaling_config(stored["method"]), params, where)
    return safe_group_config("pos/scaling", stored, where)


def _merge(base: dict, stored: dict, where: str) -> dict:
    """`base` (lenx's config) with the stored values of the keys it has; a stored key lenx does not have, a Hydra
    key that differs from lenx's, or a value that is not plain data is refused."""
    if not isinstance(stored, dict):
        raise CheckpointError(f"{where} is {type(stored).__name__}, expected a mapping")
    out = dict(base)
    stored = dict(stored)
    legacy = stored.pop("scaling", None) if "interpolate" in base else None
    if isinstance(legacy, dict) and legacy.get("method") == "interpolate":  # a learned table's pre-class scaling
        stored["interpolate"] = True
    for key, value in stored.items():
        here = f"{where}.{key}"
        if key not in base:
            raise CheckpointError(f"{here} is not a parameter of lenx's config for it; refusing to rebuild "
                                  "(a checkpoint's config is never instantiated as it stands)")
        if isinstance(key, str) and key.startswith("_") and key.endswith("_"):
            if value != base[key]:
                raise CheckpointError(f"{here}={value!r} differs from lenx's {base[key]!r}; refusing to load "
                                      "(a checkpoint never chooses what code runs)")
        elif isinstance(base[key], dict) or isinstance(value, dict):
            if key != "scaling":
                raise CheckpointError(f"{here}: a nested mapping is not a lenx parameter; refusing to load")
            out[key] = stored_scaling(value, here)
        else:
            _check_plain(value, here)
            out[key] = value
    return out


def _check_plain(value, where: str) -> None:
    items = value if isinstance(value, list) else [value]
    for v in items:
        if isinstance(v, list):
            _check_plain(v, where)
        elif not isinstance(v, PLAIN) or (isinstance(v, str) and "${" in v):
            raise CheckpointError(f"{where}={v!r} is not a plain value; refusing to load")


def safe_pos_config(stored: dict, name: str | None = None) -> dict:
    """The positional config to build, from lenx's own config of the scheme the checkpoint names.

    The scheme is the one whose `_target_` the stored config carries (the stored Hydra choice `name` picks among
    lenx configs that share a class); the stored parameters override lenx's defaults after validation."""
    if not isinstance(stored, dict):
        raise CheckpointError("the checkpoint's pos config is not a mapping")
    target = stored.get("_target_")
    schemes = scheme_configs()
    matching = [n for n, c in schemes.items() if c.get("_target_") == target]
    if not matching:
        raise CheckpointError(f"pos._target_={target!r} is not one of lenx's schemes; refusing to load (a "
                              "checkpoint never chooses what code runs)")
    return _merge(schemes[name if name in matching else matching[0]], stored, "pos")


def safe_run_config(cfg: dict) -> dict:
    """The checkpoint's config with its pos group rebuilt by safe_pos_config, and model sizes checked as numbers."""
    if not isinstance(cfg, dict) or not all(isinstance(cfg.get(k), dict) for k in ("model", "pos", "data")):
        raise CheckpointError("the checkpoint's config lacks its model / pos / data groups")
    model = cfg["model"]
    for key in ("d_model", "n_layers", "n_heads", "mlp_ratio", "dropout", "bias", "tie_embeddings", "norm", "mlp",
                "multiple_of"):
        _check_plain(model.get(key), f"model.{key}")
    try:  # the block's norm and MLP: names of lenx's own, never code
        BlockShape.from_config(model)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{e}; refusing to load") from None
    _check_plain(cfg.get("seq_len"), "seq_len")
    out = {**cfg, "data": safe_data_config(cfg["data"]),
           "pos": safe_pos_config(cfg["pos"], (cfg.get("choices") or {}).get("pos"))}
    if cfg.get("positions") is not None:  # the train-time position mode (sizes a learned table): lenx's own only
        stored = cfg["positions"]
        if isinstance(stored, dict) and stored.get("_target_") == "lenx.positions.Offset" \
                and "eval_offset" not in stored:  # before issue 32 offset runs scored at 0 (their table sized so)
            stored = {**stored, "eval_offset": 0}
        out["positions"] = safe_group_config("positions", stored)
    if cfg.get("attn") is not None:  # attention modifiers: known names with plain true / false only
        out["attn"] = safe_attn_config(cfg["attn"])
    return out


def safe_attn_config(stored) -> dict:
    """The checkpoint's `attn` node (attention modifiers) as plain booleans of the names lenx knows: a checkpoint
    switches lenx's own modifiers on or off, never names code."""
    try:
        return dataclasses.asdict(Modifiers.from_config(stored))
    except ConfigError as e:
        raise CheckpointError(f"{e}; refusing to load") from None


def safe_data_config(stored: dict) -> dict:
    """The checkpoint's data group as data, never as a place to write: `name` must be one of lenx's corpora or
    tasks (it becomes part of cache file names), every value other than a task's parameters must be plain, and the
    stored `cache_dir` and `tokenizer` are dropped: the token cache is the scorer's ($LENX_CACHE, else
    ~/.cache/lenx) and the tokenizer the one stored in the checkpoint (scoring_data)."""
    names = {load_yaml(p).get("name") for p in (CONFIG_DIR / "data").glob("*.yaml")} - {None}
    if stored.get("name") not in names:
        raise CheckpointError(f"data.name={stored.get('name')!r} is not one of lenx's corpora or tasks "
                              f"({sorted(names)}); refusing to load (a checkpoint never chooses paths)")
    for key, value in stored.items():
        if key not in ("task", "passkey"):  # a task's parameters: built by lenx.tasks, which validates them
            _check_plain(value, f"data.{key}")
    return {**{k: v for k, v in stored.items() if k != "tokenizer"}, "cache_dir": None}


def safe_group_config(group: str, stored, where: str | None = None) -> dict:
    """lenx's configs/<group>/<name>.yaml whose `_target_` the stored node names, with the stored values
    (validated as _merge does)."""
    where = where or group
    if not isinstance(stored, dict):
        raise CheckpointError(f"{where} is {type(stored).__name__}, expected a mapping")
    configs = {n: load_yaml(CONFIG_DIR / group / f"{n}.yaml") for n in config_names(group)}
    matching = [n for n, c in configs.items() if c.get("_target_") == stored.get("_target_")]
    if not matching:
        raise CheckpointError(f"{where}._target_={stored.get('_target_')!r} is not one of lenx's {group} configs; "
                              "refusing to load (a checkpoint never chooses what code runs)")
    return _merge(configs[matching[0]], stored, where)


def build_model(cfg: dict) -> Decoder:
    """The Decoder described by a resolved run config (plain dict): model group + pos group + vocab + seq_len."""
    m, task = cfg["model"], build_task(cfg)  # a task run's vocabulary is the task's own (data.task)
    model = Decoder(vocab_size=task.vocab_size if task else cfg["data"]["vocab_size"], train_len=cfg["seq_len"],
                   pos=instantiate_node(positions.table_size(cfg), "pos"),
                   d_model=m["d_model"], n_layers=m["n_layers"], n_heads=m["n_heads"], mlp_ratio=m["mlp_ratio"],
                   dropout=m["dropout"], bias=m["bias"], tie_embeddings=m["tie_embeddings"], attn=cfg.get("attn"),
                   **dataclasses.asdict(BlockShape.from_config(m)))  # gpt2 (the default) or llama: lenx.block
    model.attention = check_attention(cfg.get("attention", "sdpa"), "attention")
    model.position_offset = positions.eval_offset(cfg)  # SHAPE's evaluation offset (positions=offset), else 0
    return model


def load_model(ckpt_path: str | Path, scaling: str | dict | None = None) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode on CPU, resolved run config) from a checkpoint, optionally under another RoPE scaling.

    model(idx_BT) returns logits (B, T, vocab). The state_dict holds learned parameters only, so the model is
    rebuilt with the new scaling and loaded strictly. The config is rebuilt from lenx's own (safe_run_config).
    """
    return rebuild(read_checkpoint(ckpt_path), scaling, str(ckpt_path))


def rebuild(ckpt: dict, scaling: str | dict | None = None, where: str = "the checkpoint"
            ) -> tuple[torch.nn.Module, dict]:
    """load_model on a checkpoint dict already read by read_checkpoint."""
    cfg = safe_run_config(ckpt["hyper_parameters"]["cfg"])
    if scaling is not None:
        cfg = {**cfg, "pos": with_scaling(cfg["pos"], scaling)}
    model = build_model(cfg)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{where} does not match the model its config describes: {e}") from None
    return model.eval(), cfg


def with_scaling(pos: dict, scaling: str | dict) -> dict:
    """The positional config `pos` under a post-hoc scaling: a RoPE scaling by name (configs/pos/scaling/)
    or as a dict ({"method": name, **params}, or a scaling node with `_target_`) for a rotary scheme, or
    "interpolate" for a learned table (its `interpolate` option)."""
    if scaling == "interpolate":
        if "interpolate" not in pos:
            raise ConfigError(f"scaling 'interpolate' does not apply to pos={pos.get('_target_')}: it stretches a "
                              "learned position table (pos=learned)")
        return {**pos, "interpolate": True}
    if not is_rotary(pos):
        if scaling == "none":  # "as trained": a scheme without RoPE frequencies has nothing to scale
            return pos
        raise ConfigError(f"scaling {scaling!r} does not apply to pos={pos.get('_target_')}: RoPE scalings apply "
                          "to rotary schemes only (rope, rope_partial, xpos)")
    new = scaling_config(scaling) if isinstance(scaling, str) else stored_scaling(scaling, "scaling")
    return {**pos, "scaling": new}


def resume_point(cfg: dict, run_dir: Path) -> tuple[str | None, int, dict | None]:
    """(checkpoint to resume from, its step, its contents): `resume` auto -> run_dir's last.ckpt if present;
    never -> none, and a run dir holding checkpoints is refused (never overwritten); a path -> that checkpoint.
    Checked here, before data or compute: the checkpoint must load and describe the same model."""
    mode, last = cfg.get("resume", "auto"), run_dir / "checkpoints" / "last.ckpt"
    if mode in (None, "never"):
        if last.is_file():
            raise ConfigError(f"{run_dir} already holds a checkpoint and resume=never: choose another "
                              "hydra.run.dir, or resume=auto to continue that run")
        return None, 0, None
    path = last if mode == "auto" else Path(mode)
    if mode == "auto" and not path.is_file():
        return None, 0, None
    ckpt = read_checkpoint(path)

    def what(c: dict, key: str):  # the part of a config that defines the model, minus where the cache lives
        if key == "pos" and c is not cfg:  # as lenx rebuilds it (a checkpoint of an older lenx: today's keys)
            return safe_pos_config(c["pos"], (c.get("choices") or {}).get("pos"))
        if key == "positions":  # older checkpoints have none: contiguous
            return c.get("positions") or positions.CONTIGUOUS
        if key == "attn":  # older checkpoints have none: no modifiers
            return dataclasses.asdict(Modifiers.from_config(c.get("attn")))
        return {k: v for k, v in c[key].items() if k != "cache_dir"} if isinstance(c[key], dict) else c[key]

    for key in ("model", "pos", "seq_len", "data", "positions", "attn"):
        a, b = what(ckpt["hyper_parameters"]["cfg"], key), what(cfg, key)
        if a != b:
            raise ConfigError(f"cannot resume from {path}: its {key} config differs from this run's "
                              f"({a} vs {b}); use another hydra.run.dir or resume=never")
    return str(path), int(ckpt.get("global_step", 0)), ckpt


def stored_tokenizer(ckpt: dict, cfg: dict, where: str = "the checkpoint") -> str:
    """The tokenizer file (JSON text) a language model was trained with: the one training stores in the checkpoint,
    bytes identical (an older checkpoint without it: the token cache's, if it is the one training used), refused in
    one line if it does not hash to the `tokenizer_hash` its training recorded. Text scored outside lenx's corpora
    (lm-evaluation-harness documents, lenx.harness) is tokenised with it; scoring_data checks corpus streams."""
    recorded = (cfg.get("provenance") or {}).get("tokenizer_hash")
    tok = ckpt.get("lenx_tokenizer")
    if not isinstance(tok, str):
        cached = data.cached(cfg)
        if cached is None or not recorded or cached["tokenizer_hash"] != recorded:
            raise CheckpointError(f"{where} holds no tokenizer, and this machine's token cache has not the one it was "
                                  "trained with: prepare its corpus (python evaluate.py ckpt=...) first")
        tok = (Path(cached["dir"]) / "tokenizer.json").read_text()
    found = hashlib.sha256(tok.encode()).hexdigest()
    if recorded and found != recorded:
        raise CheckpointError(f"the tokenizer stored in {where} hashes to {found[:12]}, not to the tokenizer_hash "
                              f"{recorded[:12]} its training recorded; refusing to tokenise with it")
    return tok


def scoring_data(ckpt: dict, cfg: dict, split: str, new_corpus: bool = False) -> dict:
    """`cfg` set to score with the tokenizer the checkpoint was trained with (stored in it by training, bytes
    identical), its `provenance` replaced by that of the data actually scored.

    The scored split's token stream must be the one recorded at training (its sha256; older checkpoints: the
    corpus and tokenizer hashes): a corpus that changed since (or `data=stdlib` under another Python) is refused
    with both hashes, unless `new_corpus` asks to score the new corpus with the checkpoint's tokenizer."""
    recorded = cfg.get("provenance") or {}
    tok = ckpt.get("lenx_tokenizer")
    d = dict(cfg["data"])
    if isinstance(tok, str):
        tok_hash = hashlib.sha256(tok.encode()).hexdigest()
        cached = data.cached(cfg)
        if cached is None or cached["tokenizer_hash"] != tok_hash:  # tokenise with the checkpoint's own file
            store = data.cache_root(d) / "tokenizers" / f"{tok_hash}.json"
            if not store.is_file():
                atomic_write_bytes(store, tok.encode())
            d["tokenizer"] = str(store)
    out = {**cfg, "data": d}
    prov = data.prepare(out)
    trained = (recorded.get("stream_hashes") or {}).get(split)
    same = (trained == prov["stream_hashes"][split] if trained else
            (recorded.get("corpus_hash"), recorded.get("tokenizer_hash")) == (prov["corpus_hash"],
                                                                               prov["tokenizer_hash"]))
    if not same and not new_corpus:
        raise CorpusError(
            f"the {split} tokens differ from those this checkpoint was trained with (corpus_hash "
            f"{str(recorded.get('corpus_hash'))[:12]} at training, {prov['corpus_hash'][:12]} now; tokenizer_hash "
            f"{str(recorded.get('tokenizer_hash'))[:12]} vs {prov['tokenizer_hash'][:12]}; {split} stream "
            f"{str(trained)[:12]} vs {prov['stream_hashes'][split][:12]}): the corpus changed since training. "
            "Pass eval.new_corpus=true to score this corpus with the checkpoint's tokenizer (rows record the "
            "hashes used)")
    return {**out, "provenance": prov}
