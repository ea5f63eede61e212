"""Long-context evaluation speed and memory of every scheme, fast paths against the reference paths, in one run:
`python scripts/benchmark_long.py [--schemes all] [--lengths 2048,8192] [--out outputs/benchmark_long.json]`
(a scheme may carry attention modifiers: `--schemes rope+ssmax,alibi+ssmax+sinks`; `--ckpt stickbreaking=<path>`
scores a scheme with a trained checkpoint's weights, for paths whose cost depends on them).

Each scheme's model (--model, default tiny; trained length --train-len; random weights: speed does not depend on
them) scores
one sequence of each length twice, interleaved: with attention's fast paths for bias and content schemes (ALiBi's
bias as channels of q and k, strided Toeplitz views, content terms placed by distance, FIRE's linear pieces) and
with `attention=reference` (a float mask per chunk, FIRE's MLP: the paths before issue 25). Per point: tokens/s (median of --repeats),
the peak memory (CPU: peak RSS of the process; CUDA: max_memory_allocated) and the memory the forward adds, each
relative to RoPE's (tokens/s: RoPE measured again just before each scheme at each length, `rope_beside`, since the
machine drifts over a run), and the largest |logit difference| between the two paths. With
--train-steps N: training tokens/s at the training length too (benchmark.py's bare loop: forward, backward, AdamW
on --train-batch windows of --train-seq-len tokens), fast and reference, interleaved.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path

import torch
from benchlib import CONFIGS, bare_loop, batches, config, eval_point, scheme_list

from lenx.checkpoint import load_model
from lenx.errors import OutOfRangeError
from lenx.lit import build_model
from lenx.pos.bias import DistanceBias
from lenx.results import git_state


@contextlib.contextmanager
def reference_paths(model):
    """The model on attention's reference paths (`attention=reference`: the float mask per chunk, FIRE's MLP)."""
    before, model.attention = model.attention, "reference"
    try:
        yield
    finally:
        model.attention = before


MODIFIERS = ("ssmax", "sinks", "forget", "stickbreaking", "selective", "dape")  # lenx.attention.Modifiers


def with_modifiers(arg: str) -> list[str]:
    """--schemes: configs/pos names, each optionally with attention modifiers, e.g. `rope+ssmax`, `alibi+sinks`."""
    names = scheme_list("all" if arg == "all" else ",".join(s.split("+")[0] for s in arg.split(",") if s))
    if arg == "all":
        return names
    given = [s for s in arg.split(",") if s]
    bad = sorted({m for s in given for m in s.split("+")[1:]} - set(MODIFIERS))
    if bad:
        raise SystemExit(f"benchmark: unknown attention modifier(s) {bad}; known: {list(MODIFIERS)}")
    return given


def has_fast_path(pos) -> bool:
    """Whether attention=reference changes anything for this scheme (else "before" is "after", measured once):
    a bias of the distance (Toeplitz views, ALiBi's channels) or a scheme with its own chunk mask (FIRE too)."""
    return isinstance(pos, DistanceBias) or pos.has_chunk_mask


def measure(model, vocab: int, length: int, device, repeats: int, reference: bool = True) -> dict | None:
    fast = eval_point(model, vocab, length, device, repeats)
    if fast is not None and not reference:  # --no-reference: "before" shown as "after", marked
        return {"fast": fast, "reference": fast, "max_abs_logit_diff": None, "reference_skipped": True}
    if not has_fast_path(model.pos):
        return None if fast is None else {"fast": fast, "reference": fast, "max_abs_logit_diff": 0.0,
                                          "same_path": True}
    with reference_paths(model):
        ref = eval_point(model, vocab, length, device, repeats)
    if fast is None or ref is None:
        return None
    x = torch.randint(0, vocab, (1, min(length, 2048)), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        out = model(x)
        with reference_paths(model):
            diff = (out - model(x)).abs().max().item()
    return {"fast": fast, "reference": ref, "max_abs_logit_diff": diff}


def train_point(scheme: str, args, device) -> dict:
    cfg = config(scheme, args.train_seq_len, args.train_batch, args.train_steps)
    data = batches(cfg, args.train_steps, device)
    fast = bare_loop(cfg, data, 2, False, device)["tokens_per_s"]
    ref = bare_loop({**cfg, "attention": "reference"}, data, 2, False, device)["tokens_per_s"]
    return {"fast": fast, "reference": ref}


def table(report: dict) -> str:
    lengths = report["args"]["lengths"]
    rope = report["schemes"].get("rope", {})
    head = ["scheme"] + [f"{n} {w}" for n in lengths for w in ("tok/s before", "after", "x RoPE before", "after",
                                                               "peak MiB before", "after", "x RoPE")]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for s, points in report["schemes"].items():
        cells = [s]
        for n in lengths:
            p, r = points.get(str(n)), rope.get(str(n))
            if p is None or r is None:
                cells += ["out of range"] + [""] * 6
                continue
            rope_tps = p.get("rope_beside", r["fast"])["tokens_per_s"]  # RoPE measured just before, where it was
            rope_peak = r["fast"]["peak_mib"]
            ref = p["reference"] if not p.get("reference_skipped") else None  # --no-reference: "-"
            cells += ["-" if ref is None else f"{ref['tokens_per_s']:.0f}", f"{p['fast']['tokens_per_s']:.0f}",
                      "-" if ref is None else f"{ref['tokens_per_s'] / rope_tps:.2f}",
                      f"{p['fast']['tokens_per_s'] / rope_tps:.2f}",
                      "-" if ref is None else f"{ref['peak_mib']:.0f}", f"{p['fast']['peak_mib']:.0f}",
                      f"{p['fast']['peak_mib'] / rope_peak:.2f}"]
        if "train" in points:
            t = points["train"]
            cells.append(f"{t['reference']:.0f} -> {t['fast']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    if any("train" in p for p in report["schemes"].values()):
        lines[0] = lines[0][:-1] + f"| training tok/s at {report['args']['train_seq_len']}, before -> after |"
        lines[1] += "---|"
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--schemes", default="all", help="'all' or a comma list of configs/pos names (rope is added), "
                    "each optionally with attention modifiers: rope+ssmax, alibi+ssmax+sinks")
    ap.add_argument("--lengths", default="2048,8192")
    ap.add_argument("--model", default="tiny", help="configs/model preset of every scheme's model (tiny: d 128, "
                    "4 heads; small: d 384, 6 heads): a modifier's cost per pair against attention's depends on it")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip attention=reference (its float-mask path is slow at a wider preset): 'before' = 'after'")
    ap.add_argument("--train-len", type=int, default=512, help="the models' training length (learned: its table)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=0, help="also time training (steps per run, 2 warm-up)")
    ap.add_argument("--train-seq-len", type=int, default=128)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--out", type=Path, default=Path("outputs/benchmark_long.json"))
    ap.add_argument("--ckpt", action="append", default=[], metavar="SCHEME=PATH",
                    help="score SCHEME with a trained checkpoint's weights (lenx.checkpoint.load_model) instead of "
                         "random ones: for paths whose cost depends on the weights (stick-breaking's early stop)")
    args = ap.parse_args(argv)
    schemes = with_modifiers(args.schemes)
    presets = sorted(p.stem for p in (CONFIGS / "model").glob("*.yaml"))
    if args.model not in presets:
        raise SystemExit(f"benchmark: unknown --model {args.model!r}; configs/model has {presets}")
    trained = dict(c.split("=", 1) for c in args.ckpt)
    schemes = ["rope"] + [s for s in schemes if s != "rope"]
    lengths = [int(n) for n in args.lengths.split(",")]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sha, dirty = git_state()
    report = {"args": {**vars(args), "lengths": lengths, "out": str(args.out)}, "device": str(device),
              "threads": torch.get_num_threads(), "git_sha": sha, "git_dirty": dirty, "torch": torch.__version__,
              "cpu": platform.processor() or platform.machine(), "schemes": {}}
    t0 = time.perf_counter()
    rope = None
    for s in schemes:
        base, *mods = s.split("+")
        cfg = {**config(base, args.train_len, 1, 1, model=args.model),
               **({"attn": {m: True for m in mods}} if mods else {})}
        report.setdefault("model", cfg["model"])  # the preset's shape (--model)
        torch.manual_seed(0)
        model = build_model(cfg).to(device).eval()
        if s in trained:  # the trained weights (the same tiny architecture; checked by the strict load)
            model = load_model(trained[s])[0].to(device).eval()
        if rope is None:  # (schemes start with rope)
            rope = model
        with torch.no_grad(), contextlib.suppress(OutOfRangeError):  # warm-up: both paths, the shortest length
            model(torch.zeros(1, min(lengths), dtype=torch.long, device=device))
            with reference_paths(model) if not args.no_reference else contextlib.nullcontext():
                model(torch.zeros(1, min(lengths), dtype=torch.long, device=device))
        report["schemes"][s] = points = {}
        for n in lengths:
            # RoPE again right before each scheme: this machine drifts by 10-30 % over a run, so each ratio is
            # taken against the RoPE figure measured beside it
            beside = eval_point(rope, cfg["data"]["vocab_size"], n, device, args.repeats) if model is not rope else None
            points[str(n)] = measure(model, cfg["data"]["vocab_size"], n, device, args.repeats, not args.no_reference)
            if points[str(n)] is not None and beside is not None:
                points[str(n)]["rope_beside"] = beside
        if args.train_steps:
            report["schemes"][s]["train"] = train_point(s, args, device)
        print(f"[{time.perf_counter() - t0:.0f} s] {s}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
