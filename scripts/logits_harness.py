"""Logits (and gradients) of every scheme, scaling and extension, to check a refactor changes no number:
`python scripts/logits_harness.py save before.pt` on the old code, the same with after.pt on the new, then
`python scripts/logits_harness.py compare before.pt after.pt` (bitwise; exit 1 on any difference).

Small seeded models (configs/pos/<scheme>.yaml, training length 32, 2 layers, 4 heads), 128 tokens (4x), CPU fp32:
scoring (no gradient) and a training step's gradients, at the default positions and at gapped ones, whole and in
chunks of queries (attention.CHUNK_LOGITS lowered), on attention's default paths and on its reference paths;
every RoPE scaling on the rotary schemes and every training-free extension where it applies (scoring).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
L, T = 32, 128


def build(scheme: str, scaling: str | None = None):
    from lenx.checkpoint import scaling_config
    from lenx.model import Decoder

    torch.manual_seed(0)
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIGS / "pos" / f"{scheme}.yaml"))
    cfg.pop("defaults", None)
    if scheme in ("shaw", "shaw_kv", "deberta"):
        cfg["max_distance"] = 8  # clipped pairs occur at 128 tokens
    if scheme == "cope":
        cfg["npos_max"] = 8
    if scaling is not None:
        cfg["scaling"] = scaling_config(scaling)
    model = Decoder(vocab_size=50, d_model=32, n_layers=2, n_heads=4, train_len=L, pos=instantiate(cfg)).eval()
    with torch.no_grad():  # unit-scale positional tables: every term moves the logits
        for p in model.pos.parameters():
            p.normal_(generator=torch.Generator().manual_seed(p.numel()))
    return model


def reference(model):
    """The reference paths, as this version of lenx selects them."""
    import contextlib

    import lenx.pos.base as base

    if hasattr(base, "reference_paths"):  # before the attention plan redesign (issue 34): a module switch
        return base.reference_paths()
    model.attention = "reference"
    return contextlib.nullcontext()


def run(model, x, pos_T, train: bool):
    model.zero_grad()
    model.train(False)
    if not train:
        with torch.no_grad():
            return {"logits": model(x, pos_T)}
    out = model(x, pos_T)
    out.float().logsumexp(-1).mean().backward()
    return {"logits": out.detach(), **{n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}}


def snapshot() -> dict[str, torch.Tensor]:
    from lenx import attention
    from lenx.checkpoint import config_names, is_rotary
    from lenx.errors import ConfigError
    from lenx.extensions import build as build_extension  # (lenx.configs.build_extension since issue 34)
    from lenx.extensions import check_applies

    torch.set_num_threads(1)  # reduction order fixed
    x = torch.randint(0, 50, (2, T), generator=torch.Generator().manual_seed(0))
    gapped = torch.arange(T) * 3 + 5
    chunk = attention.CHUNK_LOGITS
    out: dict[str, torch.Tensor] = {}
    schemes = config_names("pos")
    for scheme in schemes:
        scalings = [None]
        if is_rotary(OmegaConf.to_container(OmegaConf.load(CONFIGS / "pos" / f"{scheme}.yaml"))):
            scalings += [s for s in config_names("pos/scaling") if s != "none"]
        for scaling in scalings:
            for ref in (False, True):
                for chunked in (False, True):
                    attention.CHUNK_LOGITS = 2 * 4 * T * 24 if chunked else chunk
                    try:
                        model = build(scheme, scaling)
                    except Exception as e:  # a scaling the scheme's dimensions refuse: recorded as such
                        out[f"{scheme}|{scaling}|build"] = torch.tensor(list(type(e).__name__.encode()))
                        continue
                    for where, pos_T in (("default", None), ("gapped", gapped)):
                        for train in (False, True):
                            if train and scaling is not None:
                                continue  # scalings are post hoc: scored
                            key = f"{scheme}|{scaling}|{'ref' if ref else 'fast'}|{chunked}|{where}|{train}"
                            try:
                                with (reference(model) if ref else _null()):
                                    res = run(model, x, pos_T, train)
                            except Exception as e:  # recorded: a refusal must stay a refusal
                                res = {"error": torch.tensor(list(type(e).__name__.encode()))}
                            for k, v in res.items():
                                out[f"{key}|{k}"] = v
        attention.CHUNK_LOGITS = chunk
        if scheme in ("rope", "alibi", "t5", "none", "xpos", "kerple_log", "sandwich", "alibi_learned"):
            for name in config_names("extension"):
                if name == "none":
                    continue
                model = build(scheme)
                _, ext = build_extension(name, L)
                try:
                    check_applies(ext, model.pos, scheme)
                except ConfigError:
                    continue
                model.extension = ext
                for where, pos_T in (("default", None), ("gapped", gapped)):
                    out[f"{scheme}|ext:{name}|fast|False|{where}|False|logits"] = run(model, x, pos_T, False)["logits"]
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save")
    s.add_argument("out")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = p.parse_args()
    if args.cmd == "save":
        snap = snapshot()
        torch.save(snap, args.out)
        print(f"{len(snap)} tensors -> {args.out}")
        return 0
    a, b = torch.load(args.a, weights_only=True), torch.load(args.b, weights_only=True)
    missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    diff = [k for k in sorted(set(a) & set(b)) if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    for k in diff[:40]:
        d = (a[k].float() - b[k].float()).abs().max().item() if a[k].shape == b[k].shape else "shape"
        print(f"differs: {k} (max abs {d})")
    print(f"{len(a)} vs {len(b)} tensors: {len(diff)} differ, {len(missing)} missing, {len(extra)} new")
    for k in missing[:10]:
        print(f"missing: {k}")
    return 1 if diff or missing else 0


if __name__ == "__main__":
    sys.exit(main())
