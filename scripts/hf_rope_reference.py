"""Write Hugging Face transformers' own RoPE initialisation values for lenx's parity test.

Needs `transformers` (not a lenx dependency): `python scripts/hf_rope_reference.py --out tests/fixtures/hf_rope_reference.json`.
Each case maps lenx's (method, head_dim, base, train_len, seq_len, params) to an HF config and records HF's
inverse frequencies and attention factor; tests/test_rope_scaling.py compares lenx against them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HF_TYPE = {"none": "default", "pi": "linear", "dynamic_ntk": "dynamic", "yarn": "yarn", "llama3": "llama3",
           "longrope": "longrope"}


def cases() -> list[dict]:
    out = []
    for d, base, L0 in [(16, 10000.0, 128), (64, 10000.0, 512), (32, 500000.0, 256)]:
        n = d // 2
        out += [
            dict(method="none", head_dim=d, base=base, train_len=L0, seq_len=L0, params={}),
            dict(method="pi", head_dim=d, base=base, train_len=L0, seq_len=4 * L0, params={"factor": 4.0}),
            dict(method="dynamic_ntk", head_dim=d, base=base, train_len=L0, seq_len=L0, params={"factor": 4.0}),
            dict(method="dynamic_ntk", head_dim=d, base=base, train_len=L0, seq_len=8 * L0, params={"factor": 4.0}),
            dict(method="yarn", head_dim=d, base=base, train_len=L0, seq_len=16 * L0, params={"factor": 16.0}),
            dict(method="yarn", head_dim=d, base=base, train_len=L0, seq_len=4 * L0,
                 params={"factor": 4.0, "beta_fast": 16.0, "beta_slow": 2.0, "truncate": False}),
            dict(method="yarn", head_dim=d, base=base, train_len=L0, seq_len=4 * L0,
                 params={"factor": 4.0, "mscale": 1.0, "mscale_all_dim": 0.5}),
            dict(method="llama3", head_dim=d, base=base, train_len=L0, seq_len=8 * L0,
                 params={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}),
            dict(method="llama3", head_dim=d, base=base, train_len=L0, seq_len=2 * L0,
                 params={"factor": 2.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0}),
            dict(method="longrope", head_dim=d, base=base, train_len=L0, seq_len=L0,
                 params={"factor": 4.0, "short_factor": [1.0 + 0.05 * i for i in range(n)],
                         "long_factor": [1.0 + 0.5 * i for i in range(n)]}),
            dict(method="longrope", head_dim=d, base=base, train_len=L0, seq_len=4 * L0,
                 params={"factor": 4.0, "short_factor": [1.0 + 0.05 * i for i in range(n)],
                         "long_factor": [1.0 + 0.5 * i for i in range(n)]}),
        ]
    return out


def hf_values(case: dict):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    d, L0, p = case["head_dim"], case["train_len"], dict(case["params"])
    rope = {"rope_type": HF_TYPE[case["method"]], "rope_theta": case["base"], **p}
    max_pos = L0
    if case["method"] in ("yarn", "llama3", "longrope"):
        rope["original_max_position_embeddings"] = L0
        max_pos = int(p.get("factor", 1.0) * L0)
    if case["method"] == "yarn" and "truncate" not in p:
        rope["truncate"] = True
    cfg = LlamaConfig(hidden_size=d * 2, num_attention_heads=2, head_dim=d, max_position_embeddings=max_pos,
                      rope_parameters=rope)
    fn = ROPE_INIT_FUNCTIONS[rope["rope_type"]] if rope["rope_type"] != "default" else None
    if fn is None:  # default: the plain frequencies (HF computes them in the model class)
        import torch

        return (1.0 / case["base"] ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d)).tolist(), 1.0
    inv, af = fn(cfg, "cpu", seq_len=case["seq_len"])
    return inv.float().tolist(), float(af)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import transformers

    rows = []
    for case in cases():
        try:
            inv, af = hf_values(case)
        except Exception as e:  # record, do not hide: the fixture lists what HF could not compute
            print("FAILED", case["method"], case["params"], type(e).__name__, e)
            continue
        rows.append({**case, "inv_freq": inv, "attention_factor": af})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"transformers_version": transformers.__version__, "cases": rows}, indent=1))
    print(f"{len(rows)} cases from transformers {transformers.__version__} -> {args.out}")


if __name__ == "__main__":
    main()
