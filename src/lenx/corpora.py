"""Corpora as documents: every corpus becomes three splits of (id, text) documents, loaded through `datasets`.

The default corpus is the running Python's standard library (zero download; one document per .py file), through a
local `datasets` builder. Hub corpora (WikiText-103, PG-19, TinyStories) load through `datasets.load_dataset`, or
from local files in the hub's format (`data.data_files`); `data=local` reads .txt / .jsonl / .json / .parquet.
Splits the corpus does not have are carved by a hash of each document's identity (stable as documents come and go).
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import datasets

from lenx.errors import ConfigError, CorpusError

SPLITS = ("train", "validation", "test")


HUB_CORPORA = ("wikitext103", "pg19", "tinystories")
CORPORA = ("stdlib", "local", *HUB_CORPORA)  # data.name of a corpus (a task run's data.name is its task's)


def cache_root(d: Mapping) -> Path:
    """Where tokenizers, token streams and `datasets` caches live: data.cache_dir, else $LENX_CACHE, else
    ~/.cache/lenx."""
    root = Path(d.get("cache_dir") or os.environ.get("LENX_CACHE") or Path.home() / ".cache" / "lenx").expanduser()
    if root.exists() and not root.is_dir():
        raise CorpusError(f"the token cache {root} (data.cache_dir, else $LENX_CACHE) is a file, not a directory")
    return root


def split_of(doc_id: str, valid_fraction: float, test_fraction: float) -> str:
    """Deterministic split from a hash of the document's identity: stable when other documents come or go."""
    u = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64
    return "validation" if u < valid_fraction else "test" if u < valid_fraction + test_fraction else "train"


def _sha(parts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()


# ---------------------------------------------------------------------------------- the stdlib local builder
def stdlib_files(root: Path) -> list[str]:
    """Sorted relative paths of the .py files under root, without installed third-party packages."""
    if not root.is_dir():
        raise CorpusError(f"corpus path {root} is not a directory")
    skip = {"site-packages", "dist-packages", "__pycache__"}
    rels = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(n for n in dirnames if n not in skip)
        rels += [os.path.relpath(os.path.join(dirpath, f), root) for f in filenames if f.endswith(".py")]
    return sorted(rels)


@dataclass
class PythonSourceConfig(datasets.BuilderConfig):
    root: str = ""
    valid_fraction: float = 0.05
    test_fraction: float = 0.05
    fingerprint: str = ""  # file list + sizes + mtimes: a changed tree gets a new builder cache


class PythonSource(datasets.GeneratorBasedBuilder):
    """A local `datasets` builder: one example {id: relative path, text: source} per UTF-8 .py file."""

    BUILDER_CONFIG_CLASS = PythonSourceConfig

    def _info(self):
        return datasets.DatasetInfo(description="Python source files as documents",
                                    features=datasets.Features({"id": datasets.Value("string"),
                                                                "text": datasets.Value("string")}))

    def _split_generators(self, dl_manager):
        c = self.config
        by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
        for rel in stdlib_files(Path(c.root)):
            by_split[split_of(rel, c.valid_fraction, c.test_fraction)].append(rel)
        return [datasets.SplitGenerator(name=s, gen_kwargs={"rels": by_split[s]}) for s in SPLITS]

    def _generate_examples(self, rels):
        for rel in rels:
            try:
                text = (Path(self.config.root) / rel).read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # a few test fixtures are deliberately not UTF-8: skipped, not fatal
            if text.strip():
                yield rel, {"id": rel, "text": text}


def tree_fingerprint(root: Path, rels: list[str]) -> str:
    return _sha(f"{r}:{(s := (root / r).stat()).st_size}:{s.st_mtime_ns}" for r in rels)


def load_stdlib(d: Mapping) -> tuple[dict[str, datasets.Dataset], dict]:
    root = Path(d.get("path") or sysconfig.get_paths()["stdlib"]).expanduser()
    rels = stdlib_files(root)
    if not rels:
        raise CorpusError(f"no .py files under {root}")
    builder = PythonSource(cache_dir=str(cache_root(d) / "datasets"), config_name="python_source",
                           root=str(root), valid_fraction=d["valid_fraction"], test_fraction=d["test_fraction"],
                           fingerprint=tree_fingerprint(root, rels))
    builder.download_and_prepare()
    return {s: builder.as_dataset(split=s) for s in SPLITS}, {"python_version": sys.version.split()[0],
                                                                "source": str(root)}


# ---------------------------------------------------------------------------------------- hub and local corpora
def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_hub(d: Mapping) -> dict[str, datasets.Dataset]:
    """The corpus's splits from the hub, or from local files in the hub's schema when `data_files` is set."""
    if d.get("data_files"):
        files = d["data_files"]
        fmt = d.get("data_format") or Path(next(iter(files.values())) if isinstance(files, Mapping)
                                          else files).suffix.lstrip(".").replace("jsonl", "json")
        try:
            return dict(datasets.load_dataset(fmt, data_files=dict(files) if isinstance(files, Mapping) else files))
        except FileNotFoundError as e:  # one line: which file (or pattern) is missing
            raise CorpusError(f"data.data_files: {e}") from None
    hub_id = d["hub_id"]
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    hint = (f"the Hugging Face hub is unreachable, so dataset {hub_id!r} cannot be downloaded. Use data=stdlib "
            f"(no download), data=local data.path=<files>, or point data.data_files at a local copy in the hub's "
            f"format")
    if not offline and not hub_reachable():
        raise CorpusError(hint)
    try:
        return dict(datasets.load_dataset(hub_id, d.get("hub_config"), cache_dir=str(cache_root(d) / "hub")))
    except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as e:
        raise CorpusError(f"{hint} ({type(e).__name__}: {e})") from None


def wikitext_articles(lines: Iterable[str]) -> list[str]:
    """Re-assemble WikiText's line rows into articles: one starts at each top-level ' = Title = ' heading."""
    articles, current = [], []
    for line in lines:
        s = line.strip()
        if s.startswith("= ") and s.endswith(" =") and not s.startswith("= ="):
            if "".join(current).strip():
                articles.append("".join(current))
            current = []
        current.append(line)
    if "".join(current).strip():
        articles.append("".join(current))
    return articles


def documents(name: str, raw: dict[str, datasets.Dataset], d: Mapping) -> dict[str, list[tuple[str, str]]]:
    """{split: [(id, text), ...]} for a hub/local corpus, carving missing splits by hashed identity."""
    field = d.get("text_field", "text")
    out: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    if name == "wikitext103":
        for s in SPLITS:
            out[s] = [(f"{s}/{i}", t) for i, t in enumerate(wikitext_articles(raw[s][field]))]
        return out
    if name == "pg19":
        for s in SPLITS:
            out[s] = [(r.get("url") or f"{s}/{i}", r[field]) for i, r in enumerate(raw[s])]
        return out
    if name == "tinystories":  # train + validation only: half of validation (by hash) becomes test
        out["train"] = [(f"train/{i}", t) for i, t in enumerate(raw["train"][field])]
        for i, t in enumerate(raw["validation"][field]):
            doc_id = f"validation/{i}"
            out["test" if split_of(doc_id, 0.5, 0.0) == "train" else "validation"].append((doc_id, t))
        return out
    raise ConfigError(f"no document rules for corpus {name!r}")


def local_root(d: Mapping) -> Path:
    """data.path of a local corpus, which must be given and exist."""
    if d.get("path") in (None, "", "???"):
        raise ConfigError("data=local needs data.path=<a file or folder of .txt/.jsonl/.json/.parquet files>")
    root = Path(d["path"]).expanduser()
    if not root.exists():
        raise CorpusError(f"corpus path {root} does not exist")
    return root


def check_text_file(f: Path) -> None:
    """A text corpus file must be UTF-8 without NUL bytes: refused naming the file and the byte offset."""
    raw = f.read_bytes()
    nul = raw.find(b"\0")
    if nul >= 0:
        raise CorpusError(f"{f} is not a text file: NUL byte at byte offset {nul}")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{f} is not UTF-8 text: byte 0x{raw[e.start]:02x} at byte offset {e.start} "
                          f"({e.reason})") from None


def load_local(d: Mapping) -> dict[str, list[tuple[str, str]]]:
    """.txt (a document per file), .jsonl/.json (a document per record), .parquet (a document per row)."""
    root = local_root(d)
    exts = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix in exts)
    if not files:
        raise CorpusError(f"no .txt/.jsonl/.json/.parquet files at {root}")
    field = d.get("text_field", "text")
    out: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    for f in files:
        fmt = exts.get(f.suffix)
        if fmt is None:
            raise CorpusError(f"{f}: unsupported file type (use .txt, .jsonl, .json or .parquet)")
        kw = {"sample_by": "document"} if fmt == "text" else {}
        if fmt in ("text", "json"):
            check_text_file(f)
        try:
            rows = datasets.load_dataset(fmt, data_files=str(f), split="train", **kw)
        except Exception as e:  # undecodable bytes, malformed json, ...: name the file
            raise CorpusError(f"cannot read {f} as {fmt}: {type(e).__name__}: {e}") from None
        rel = os.path.relpath(f, root if root.is_dir() else root.parent)
        for i, text in enumerate(rows[field] if len(rows) else []):
            doc_id = rel if fmt == "text" else f"{rel}#{i}"
            out[split_of(doc_id, d["valid_fraction"], d["test_fraction"])].append((doc_id, text))
    return out


def load_corpus(d: Mapping) -> tuple[dict[str, list[tuple[str, str]]], dict]:
    """{split: [(id, text)]} and extra provenance, for the configured corpus; empty documents dropped."""
    name = d["name"]
    extra: dict = {}
    if name == "stdlib":
        ds, extra = load_stdlib(d)
        docs = {s: list(zip(ds[s]["id"], ds[s]["text"])) for s in SPLITS}
    elif name == "local":
        docs = load_local(d)
    elif name in HUB_CORPORA:
        docs = documents(name, load_hub(d), d)
    else:
        raise ConfigError(f"unknown corpus {name!r}")
    docs = {s: [(i, t) for i, t in v if t and t.strip()] for s, v in docs.items()}
    for s in SPLITS:
        if not docs[s]:
            raise CorpusError(f"corpus {name!r} has no non-empty documents in its {s} split "
                              f"({sum(map(len, docs.values()))} documents in all); it is too small or empty")
    return docs, extra
