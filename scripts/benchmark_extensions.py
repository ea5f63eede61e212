"""Cost of the training-free extensions (lenx.extensions): `python scripts/benchmark_extensions.py
[--schemes rope,alibi] [--seq-len 256] [--multiplier 16]`.

One forward + per-token loss at multiplier x seq_len per scheme under each extension that applies to it, the window
methods at windows L and L/4 (a windowed method reads only its sinks and each chunk's window of keys, so its cost
should fall with the window), in one process so the ratios to `none` are fair on a noisy machine (median of
--repeats). Prints tokens/s, the ratio to none and the memory each forward adds; --out writes the JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from benchlib import config, eval_point, scheme_list

from lenx import extensions
from lenx.configs import build_extension
from lenx.errors import ConfigError
from lenx.lit import build_model

EXTENSION_VARIANTS = [("none", "none"), ("logn", "logn"), ("rerope", "rerope"), ("self_extend", "self_extend"),
                      ("lm_infinite", "lm_infinite"),
                      ("lm_infinite[window=L/4]", {"name": "lm_infinite", "window": 0.25, "limit": 0.25}),
                      ("streaming", "streaming"), ("streaming[cache=L/4]", {"name": "streaming", "cache": 0.25})]


def extension_costs(schemes: list[str], seq_len: int, mult: int, repeats: int, device) -> dict:
    """Forward + loss tokens/s and memory at mult x seq_len under each training-free extension (lenx.extensions),
    the window methods at windows L and L/4: a windowed method reads only its window's keys, so its cost should
    fall with the window."""
    out = {}
    for s in schemes:
        cfg = config(s, seq_len, 1, 1)
        model, out[s] = build_model(cfg).to(device).eval(), {}
        for label, entry in EXTENSION_VARIANTS:
            ext = build_extension(entry, seq_len)[1]
            try:
                extensions.check_applies(ext, model.pos, s)
            except ConfigError:
                continue
            model.extension = None if label == "none" else ext
            with torch.no_grad():
                out[s][label] = eval_point(model, cfg["data"]["vocab_size"], mult * seq_len, device, repeats)
        model.extension = None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemes", default="rope,alibi", help="'all' or a comma list of configs/pos names")
    ap.add_argument("--seq-len", type=int, default=256, help="the training length L")
    ap.add_argument("--multiplier", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("outputs/benchmark_extensions.json"))
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report = extension_costs(scheme_list(args.schemes), args.seq_len, args.multiplier, args.repeats, device)
    for s, variants in report.items():
        none = variants.get("none")
        print(f"\n{s} at {args.multiplier * args.seq_len} tokens ({args.multiplier}x {args.seq_len}), "
              f"{torch.get_num_threads()} threads: forward tok/s (vs none), added MiB")
        for label, v in variants.items():
            rel = f" ({v['tokens_per_s'] / none['tokens_per_s']:.2f}x)" if none and v else ""
            print(f"  {label:<26} {v['tokens_per_s']:>10.0f}{rel}  {v['added_mib']:>8.1f}" if v else f"  {label}: n/a")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {**vars(args), "out": str(args.out)}, "extensions": report}, indent=1))


if __name__ == "__main__":
    main()
