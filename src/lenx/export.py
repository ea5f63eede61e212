"""Export a lenx checkpoint as a standard Hugging Face transformers model directory (no lenx needed to load it).

`rope` / `rope_partial` export as GPT-NeoX (Black et al. 2022, arXiv:2204.06745): sequential residual
(use_parallel_residual false), rotary on the first `rotary_fraction` of each head in GPT-NeoX's half-split layout,
no attention biases, zero LayerNorm / MLP biases, tied head. `alibi` exports as MPT (MosaicML 2023; ALiBi, Press et
al. 2022, arXiv:2108.12409), no_bias, whose slopes for any head count are the ones lenx computes. The tokenizer is
lenx's own `tokenizers` file (stored in the checkpoint), wrapped as a fast tokenizer with the end-of-document token
as EOS. A README.md model card records the scheme, training length, hashes and git SHA; config.json records the
training length as `lenx_train_len` (transformers keeps the key as a config attribute), which lenx.hf reads as the
length the multipliers refer to (an MPT export's max_seq_len is the size of MPT's ALiBi table, not that length).

Every file is written in a fresh temporary directory inside `out_dir` and renamed into place: each file is whole
after a crash, a symlink planted in `out_dir` under an exported name is replaced (its target is never written), and
every file gets the mode the umask gives (safetensors alone would leave its file 0600).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from lenx.block import BlockShape
from lenx.checkpoint import read_checkpoint, rebuild
from lenx.data import EOD_TOKEN, entry
from lenx.errors import ConfigError
from lenx.pos.rope_scaling import scaling_label
from lenx.results import git_state, scaling_name, umask_mode

EXPORTS = {"lenx.pos.rope.RoPE": "gpt_neox", "lenx.pos.bias.ALiBi": "mpt"}
# lenx RoPE scaling -> transformers rope_type, for scalings trained in with a fixed factor
HF_ROPE_TYPES = {"pi": "linear", "yarn": "yarn", "llama3": "llama3"}
MPT_MAX_LEN = 1 << 16


def _neox(model, cfg: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    m, pos = cfg["model"], cfg["pos"]
    C, H, n = m["d_model"], m["n_heads"], m["n_layers"]
    D = C // H
    rope = {"rope_type": "default", "rope_theta": float(pos["base"]),
            "partial_rotary_factor": float(pos.get("rotary_fraction", 1.0))}
    scaling = pos.get("scaling") or {}
    method = scaling_label(scaling)
    if method != "none":
        if method not in HF_ROPE_TYPES or scaling.get("factor") is None:
            raise ConfigError(f"RoPE scaling {method!r} (factor {scaling.get('factor')}) has no transformers "
                              f"equivalent to export; exportable: {sorted(HF_ROPE_TYPES)} with a fixed factor")
        params = {k: v for k, v in scaling.items() if k not in ("method", "original_len", "_target_")
                  and v is not None}
        rope.update(params, rope_type=HF_ROPE_TYPES[method],
                    original_max_position_embeddings=scaling.get("original_len") or cfg["seq_len"])
    config = {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "vocab_size": cfg["data"]["vocab_size"],
              "hidden_size": C, "num_hidden_layers": n, "num_attention_heads": H,
              "intermediate_size": int(m["mlp_ratio"] * C), "hidden_act": "gelu", "layer_norm_eps": 1e-5,
              "use_parallel_residual": False, "attention_bias": False, "tie_word_embeddings": True,
              "max_position_embeddings": cfg["seq_len"], "rope_parameters": rope}
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    out = {"gpt_neox.embed_in.weight": sd["tok.weight"], "embed_out.weight": sd["head.weight"],
           "gpt_neox.final_layer_norm.weight": sd["ln_f.weight"], "gpt_neox.final_layer_norm.bias": torch.zeros(C)}
    for i in range(n):
        b, o = f"blocks.{i}.", f"gpt_neox.layers.{i}."
        # lenx: rows [q (H x D); k; v]; GPT-NeoX: per head [q_h; k_h; v_h] (its view(..., H, 3 * D))
        qkv = sd[b + "attn.qkv.weight"].view(3, H, D, C).transpose(0, 1).reshape(3 * C, C)
        inner = int(m["mlp_ratio"] * C)
        out.update({o + "input_layernorm.weight": sd[b + "ln1.weight"], o + "input_layernorm.bias": torch.zeros(C),
                    o + "post_attention_layernorm.weight": sd[b + "ln2.weight"],
                    o + "post_attention_layernorm.bias": torch.zeros(C),
                    o + "attention.query_key_value.weight": qkv, o + "attention.dense.weight": sd[b + "attn.proj.weight"],
                    o + "mlp.dense_h_to_4h.weight": sd[b + "mlp.0.weight"], o + "mlp.dense_h_to_4h.bias": torch.zeros(inner),
                    o + "mlp.dense_4h_to_h.weight": sd[b + "mlp.2.weight"], o + "mlp.dense_4h_to_h.bias": torch.zeros(C)})
    return config, out


def _mpt(model, cfg: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    m = cfg["model"]
    C, H, n = m["d_model"], m["n_heads"], m["n_layers"]
    if m["mlp_ratio"] != 4:
        raise ConfigError(f"MPT's MLP is 4x wide; this model's mlp_ratio is {m['mlp_ratio']}: it does not export")
    config = {"model_type": "mpt", "architectures": ["MptForCausalLM"], "vocab_size": cfg["data"]["vocab_size"],
              "d_model": C, "n_layers": n, "n_heads": H, "expansion_ratio": 4, "no_bias": True,
              # MPT builds its ALiBi table up to max_seq_len and cannot read further; lenx has no length limit
              "layer_norm_epsilon": 1e-5, "max_seq_len": max(MPT_MAX_LEN, cfg["seq_len"]), "tie_word_embeddings": True,
              "attn_config": {"alibi": True, "alibi_bias_max": 8, "attn_impl": "torch"}}
    sd = {k: v.detach().float() for k, v in model.state_dict().items()}
    out = {"transformer.wte.weight": sd["tok.weight"], "lm_head.weight": sd["head.weight"],
           "transformer.norm_f.weight": sd["ln_f.weight"], "transformer.norm_f.bias": torch.zeros(C)}
    for i in range(n):
        b, o = f"blocks.{i}.", f"transformer.blocks.{i}."
        out.update({o + "norm_1.weight": sd[b + "ln1.weight"], o + "norm_1.bias": torch.zeros(C),
                    o + "norm_2.weight": sd[b + "ln2.weight"], o + "norm_2.bias": torch.zeros(C),
                    o + "attn.Wqkv.weight": sd[b + "attn.qkv.weight"], o + "attn.out_proj.weight": sd[b + "attn.proj.weight"],
                    o + "ffn.up_proj.weight": sd[b + "mlp.0.weight"], o + "ffn.down_proj.weight": sd[b + "mlp.2.weight"]})
    return config, out


def export_hf(ckpt_path: str | Path, out_dir: str | Path) -> Path:
    """Write `out_dir` loadable by transformers' AutoModelForCausalLM / AutoTokenizer.from_pretrained."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    state = read_checkpoint(ckpt_path)
    model, cfg = rebuild(state, None, str(ckpt_path))
    target = cfg["pos"]["_target_"]
    arch = EXPORTS.get(target)
    if arch is None:
        raise ConfigError(f"pos={(cfg.get('choices') or {}).get('pos', target)} does not export to transformers: "
                          "only rope and rope_partial (as GPT-NeoX) and alibi (as MPT) do")
    if any((cfg.get("attn") or {}).values()):
        on = ", ".join(f"attn.{k}" for k, v in cfg["attn"].items() if v)
        raise ConfigError(f"a model trained with attention modifiers ({on}) does not export to transformers: "
                          "GPT-NeoX and MPT have none of them")
    if not BlockShape.from_config(cfg["model"]).is_default:  # GPT-NeoX's and MPT's blocks are LayerNorm + GELU
        raise ConfigError(f"a model with model.norm={cfg['model'].get('norm')} and model.mlp={cfg['model'].get('mlp')}"
                          " does not export: GPT-NeoX and MPT have LayerNorm and a GELU MLP (the gpt2 block) only")
    if cfg["model"].get("bias") or not cfg["model"].get("tie_embeddings", True):
        raise ConfigError("only models with bias=false and tied embeddings export (the lenx defaults)")
    config, weights = (_neox if arch == "gpt_neox" else _mpt)(model, cfg)
    tok_json = state.get("lenx_tokenizer") or (Path(entry(cfg)["dir"]) / "tokenizer.json").read_text()
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok_json), eos_token=EOD_TOKEN,
                                  bos_token=EOD_TOKEN, model_max_length=cfg["seq_len"])
    eod = tok.convert_tokens_to_ids(EOD_TOKEN)
    config.update(bos_token_id=eod, eos_token_id=eod, torch_dtype="float32", lenx_train_len=cfg["seq_len"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prov, (sha, dirty) = cfg.get("provenance") or {}, git_state()
    card = (f"# lenx export: {(cfg.get('choices') or {}).get('pos', target)} ({arch})\n\n"
            f"- scheme: `{target}`, scaling: {scaling_name(cfg)}\n- training length: {cfg['seq_len']} tokens\n"
            f"- corpus: {prov.get('corpus', '')}, corpus_hash `{prov.get('corpus_hash', '')}`\n"
            f"- tokenizer_hash `{prov.get('tokenizer_hash', '')}` (the end-of-document token `{EOD_TOKEN}` is EOS)\n"
            f"- lenx git SHA `{sha}`{' (dirty)' if dirty else ''}; exported from `{ckpt_path}`\n")
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".export-"))
    try:
        save_file({k: v.contiguous() for k, v in weights.items() if k not in ("embed_out.weight", "lm_head.weight")},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        tok.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(card)
        mode = umask_mode()
        for f in sorted(tmp.iterdir()):
            os.chmod(f, mode)
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(f, out / f.name)  # replaces a file or symlink named so in out; never writes through a link
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
