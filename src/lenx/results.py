"""Result rows with provenance, written as JSON lines + CSV, and the ppl-vs-length figure.

Schema documented in results/README.md. Files are rewritten atomically (temp file + rename), so a kill mid-write
never leaves a truncated results file, and rows already on disk are kept (appended to, never replaced).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import tempfile
from pathlib import Path

COLUMNS = ["pos", "scaling", "extension", "positions", "mode", "eval_positions", "stride", "context", "train_len", "eval_len", "multiplier", "loss", "ppl", "ppl_ci_low",
           "ppl_ci_high", "tokens", "windows", "status", "error", "seed", "model", "model_shape", "corpus", "corpus_hash",
           "tokenizer_hash", "targets_hash", "split", "git_sha", "dirty", "run_dir", "ckpt"]
PROBE_COLUMNS = ["pos", "scaling", "extension", "positions", "train_len", "multiplier", "distance", "seg_len", "trials", "nll_repeat",
                 "nll_control", "copy_gain", "status", "seed", "git_sha", "ckpt"]
PASSKEY_COLUMNS = ["pos", "scaling", "extension", "positions", "train_len", "eval_len", "multiplier", "depth", "trials", "accuracy", "status",
                   "seed", "git_sha", "ckpt"]
POSITION_COLUMNS = ["pos", "scaling", "extension", "positions", "mode", "eval_positions", "context", "train_len", "eval_len", "position_bin_start", "position_bin_end",
                    "mean_nll", "tokens", "seed", "targets_hash", "git_sha", "ckpt"]


PROVENANCE = ["pos", "scaling", "extension", "positions", "train_len", "seed", "model", "model_shape", "corpus", "corpus_hash", "tokenizer_hash", "split",
              "git_sha", "dirty", "run_dir", "ckpt"]


def provenance_columns() -> list[str]:
    return list(PROVENANCE)


def scaling_name(cfg: dict) -> str:
    """The training-free extension a run config applies: its RoPE scaling's name, "interpolate" for a stretched
    learned table, or "none"."""
    from lenx.pos.rope_scaling import scaling_label

    if cfg["pos"].get("interpolate") is True:
        return "interpolate"
    return scaling_label(cfg["pos"].get("scaling"))


def positions_name(cfg: dict) -> str:
    """The train-time position mode of a run config (configs/positions/): "contiguous" when it has none."""
    target = (cfg.get("positions") or {}).get("_target_", "lenx.positions.Contiguous")
    return str(target).rsplit(".", 1)[-1].lower()


def attn_label(cfg: dict) -> str:
    """The attention modifiers a run config trains with (config `attn`), as appended to its scheme's name:
    "+ssmax", "+sinks", "+ssmax+sinks", "+forget", "+window32", "" for none (as lenx.modifiers.Modifiers.label;
    those a scheme brings itself, pos=fox's gate, are its name)."""
    # Read from the node itself (its keys are Modifiers' fields, in their order: configs/train.yaml, checked by
    # Modifiers.from_config before any run), so that the names are kept in one place: on/off modifiers as
    # "+name", sizes in tokens as "+name<n>"
    attn = cfg.get("attn") or {}
    flags = [f"+{n}" for n, v in attn.items() if v is True]
    sizes = [f"+{n}{v}" for n, v in attn.items() if isinstance(v, int) and not isinstance(v, bool)]
    return "".join(flags + sizes)


def extension_label(r: dict) -> str:
    """A row's training-free method as tables, figures and aggregates name it: its RoPE scaling, its extension
    (lenx.extensions), or both (yarn+self_extend); "none" for neither."""
    scaling, ext = r.get("scaling") or "none", r.get("extension") or "none"
    return scaling if ext == "none" else ext if scaling == "none" else f"{scaling}+{ext}"


def scheme_label(r: dict) -> str:
    """A row's scheme as tables, figures and aggregates name it: `pos`, with the train-time position mode appended
    when it is not contiguous (rope+randomized), so that a sweep over positions keeps its curves apart."""
    mode = r.get("positions") or "contiguous"
    return r["pos"] if mode == "contiguous" else f"{r['pos']}+{mode}"


def stamp(cfg: dict, *, run_dir: Path, ckpt: str, split: str, choices: dict | None = None) -> dict:
    """The provenance columns of every result row (PROVENANCE): what was scored, on which data, by which code."""
    prov, choices = cfg.get("provenance", {}), choices or {}
    sha, dirty = git_state()
    # a model trained with attention modifiers is named by them (rope+ssmax, alibi+sinks): attn_label
    return {"pos": (choices.get("pos") or cfg["pos"]["_target_"].rsplit(".", 1)[-1].lower()) + attn_label(cfg),
            "scaling": scaling_name(cfg), "extension": cfg.get("extension") or "none",
            "positions": positions_name(cfg), "train_len": cfg["seq_len"],
            "seed": cfg.get("seed"),
            "model": choices.get("model", ""), "model_shape": model_shape(cfg.get("model") or {}),
            "corpus": prov.get("corpus", ""),
            "corpus_hash": prov.get("corpus_hash", ""), "tokenizer_hash": prov.get("tokenizer_hash", ""),
            "split": split, "git_sha": sha, "dirty": dirty, "run_dir": str(run_dir), "ckpt": str(ckpt)}


def model_shape(m: dict) -> str:
    """The model's size as rows name it beside its preset (`model`): d_model, layers, heads (d64-L2-H2), so that a
    preset resized by overrides (model.d_model=128) is never taken for the preset itself; "" where not known."""
    if not all(k in m for k in ("d_model", "n_layers", "n_heads")):
        return ""
    return f"d{m['d_model']}-L{m['n_layers']}-H{m['n_heads']}"


def git_state(where: Path | None = None) -> tuple[str, bool]:
    """(HEAD sha, dirty flag) of the repository holding lenx's source; ("unknown", False) outside git."""
    where = where or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, check=True, timeout=10).stdout
        return sha, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def umask_mode() -> int:
    """The mode a plain open() would give a new file (0666 minus the umask); mkstemp's is 0600."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same directory and a rename: a kill mid-write leaves the previous
    file whole. The file gets the umask's mode like any other; an OSError names `path` (a full disk's write()
    error carries no file name of its own)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not e.filename:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def read_rows(run_dir: Path, name: str = "extrapolation") -> list[dict]:
    path = Path(run_dir) / f"{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_tree(root: Path, name: str = "extrapolation") -> list[dict]:
    """Every row of the <name>.jsonl files under `root` (or of `root` itself, a .jsonl file), in path order: the
    one reader of result trees (aggregate.py, compare.py)."""
    root = Path(root)
    files = [root] if root.is_file() else sorted(root.rglob(f"{name}.jsonl"))
    return [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]


def append_rows(run_dir: Path, rows: list[dict], name: str = "extrapolation",
                columns: list[str] = COLUMNS) -> list[dict]:
    """Add rows to run_dir/<name>.{jsonl,csv} (the CSV keeps `columns` first); returns all rows in the file."""
    run_dir = Path(run_dir)
    all_rows = read_rows(run_dir, name) + rows
    atomic_write_text(run_dir / f"{name}.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in all_rows))
    extra = sorted({k for r in all_rows for k in r} - set(columns))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns + extra, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(all_rows)
    atomic_write_text(run_dir / f"{name}.csv", buf.getvalue())
    return all_rows


def mode_label(r: dict) -> str:
    """The row's mode, with the context when it is not the stream and the evaluation positions when they are not
    0..T-1: nonoverlapping, sliding/document, nonoverlapping@randomized, ..."""
    label = r["mode"] if r.get("context", "stream") == "stream" else f"{r['mode']}/{r['context']}"
    at = r.get("eval_positions") or "contiguous"
    return label if at == "contiguous" else f"{label}@{at}"


def format_table(rows: list[dict]) -> str:
    """A plain-text table: one line per (pos, scaling, mode), one column per eval length."""
    lengths = sorted({r["eval_len"] for r in rows})
    keys = list(dict.fromkeys((scheme_label(r), extension_label(r), mode_label(r)) for r in rows))
    head = f"{'pos':<14} {'scaling':<12} {'mode':<15}" + "".join(f"{L:>13}" for L in lengths)
    lines = [head, "-" * len(head)]
    for key in keys:
        by_len = {r["eval_len"]: r for r in rows if (scheme_label(r), extension_label(r), mode_label(r)) == key}
        cells = []
        for L in lengths:
            r = by_len.get(L)
            cells.append("" if r is None else ("out-of-range" if r["status"] != "ok" else f"{r['ppl']:.2f}"))
        lines.append(f"{key[0]:<14} {key[1]:<12} {key[2]:<15}" + "".join(f"{c:>13}" for c in cells))
    return "\n".join(lines)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=(6.4, 4.2))


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def plot_rows(rows: list[dict], path: Path, title: str = "") -> Path:
    """ppl against eval length (log2 x axis), one line per (pos, scaling, mode); missing points are gaps."""
    plt, fig, ax = _figure()
    keys = list(dict.fromkeys((scheme_label(r), extension_label(r), mode_label(r)) for r in rows))
    for key in keys:
        pts = sorted((r["eval_len"], r["ppl"]) for r in rows if (scheme_label(r), extension_label(r), mode_label(r)) == key)
        xs = [x for x, _ in pts]
        ys = [y if (y is not None and math.isfinite(y)) else math.nan for _, y in pts]
        label = key[0] if key[1] == "none" else f"{key[0]}+{key[1]}"
        ax.plot(xs, ys, marker="o", label=label if key[2] == "nonoverlapping" else f"{label} ({key[2]})")
    train_lens = sorted({r["train_len"] for r in rows})
    for L in train_lens:
        ax.axvline(L, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(title or "perplexity vs evaluation length (dotted: training length)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_positions(rows: list[dict], path: Path) -> Path:
    """Mean NLL against position inside the window (log2 x axis, bin starts), one line per curve."""
    plt, fig, ax = _figure()
    keys = list(dict.fromkeys((scheme_label(r), extension_label(r), mode_label(r), r["eval_len"]) for r in rows))
    for key in keys:
        pts = sorted((max(r["position_bin_start"], 0.5), r["mean_nll"], r.get("nll_ci_low"), r.get("nll_ci_high"))
                     for r in rows if (scheme_label(r), extension_label(r), mode_label(r), r["eval_len"]) == key)
        name = key[0] if key[1] == "none" else f"{key[0]}+{key[1]}"
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=f"{name} {key[2][:7]} L={key[3]}")
        if all(p[2] is not None for p in pts):  # the bins' 95% bootstrap bands (rows from before them have none)
            ax.fill_between([p[0] for p in pts], [p[2] for p in pts], [p[3] for p in pts], color=line.get_color(),
                            alpha=0.15, lw=0)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("position inside the window (bin start; 0 drawn at 0.5)")
    ax.set_ylabel("mean NLL (nats)")
    ax.set_title("loss per position")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return _save(plt, fig, path)


def plot_passkey(rows: list[dict], path: Path) -> Path:
    """Passkey accuracy against length (log2 x axis), one line per (pos, scaling, depth)."""
    plt, fig, ax = _figure()
    keys = list(dict.fromkeys((scheme_label(r), extension_label(r), r["depth"]) for r in rows))
    for key in keys:
        pts = sorted((r["eval_len"], r["accuracy"]) for r in rows if (scheme_label(r), extension_label(r), r["depth"]) == key)
        name = key[0] if key[1] == "none" else f"{key[0]}+{key[1]}"
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=f"{name} depth {key[2]:g}")
    for L in sorted({r["train_len"] for r in rows}):
        ax.axvline(L, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="sequence length (tokens)", ylabel="passkey accuracy", ylim=(-0.05, 1.05),
           title="passkey retrieval (dotted: training length)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(plt, fig, path)
