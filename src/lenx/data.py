"""Corpora (lenx.corpora) -> byte-level BPE tokenizer -> token streams cached as numpy memmaps, verified on load.

A byte-level BPE (`tokenizers`) is trained on the training split; each split is tokenised into one stream in which
every document is preceded by the end-of-document token. Tokenizer and streams are cached under
$LENX_CACHE (default ~/.cache/lenx), keyed by the corpus content hash and the settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import sysconfig
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from filelock import FileLock
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lenx.corpora import (  # noqa: F401  (split_of, load_corpus: public here too)
    CORPORA,
    SPLITS,
    _sha,
    cache_root,
    load_corpus,
    local_root,
    split_of,
    stdlib_files,
    tree_fingerprint,
)
from lenx.errors import ConfigError, CorpusError, check_int
from lenx.results import atomic_write_bytes

EOD_TOKEN = "<|endoftext|>"
log = logging.getLogger(__name__)
FORMAT_VERSION = 2  # bump when the stream layout changes, so old caches are not reused


# ----------------------------------------------------------------------------------------------- config helpers
def data_config(cfg: Mapping) -> dict:
    """The data group, from a full run config (has a `data` key) or the group itself, as a plain dict."""
    d = cfg["data"] if "data" in cfg else cfg
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(d, DictConfig):
            return OmegaConf.to_container(d, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(d)




# ------------------------------------------------------------------------------------------ tokenizer + streams
def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOD_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.get_vocab_size() < vocab_size:
        raise CorpusError(f"the training split supports a vocabulary of at most {tok.get_vocab_size()} tokens, "
                          f"fewer than data.vocab_size={vocab_size}: lower data.vocab_size or use a larger corpus")
    return tok


def tokenize_stream(tok: Tokenizer, texts: list[str], eod_id: int, dtype) -> np.ndarray:
    """One stream: [EOD, doc0..., EOD, doc1..., ...] (Rust-parallel encode_batch in chunks)."""
    parts = []
    for i in range(0, len(texts), 256):
        for enc in tok.encode_batch(texts[i:i + 256]):
            parts.append(np.asarray([eod_id] + enc.ids, dtype=dtype))
    return np.concatenate(parts)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def source_key(d: Mapping) -> str:
    """A cheap key for the cache lookup (no content hashing): settings + the file tree's sizes and mtimes; a given
    tokenizer file counts by its content hash, not its path."""
    settings = {k: d.get(k) for k in sorted(d) if k not in ("cache_dir", "task", "passkey", "tokenizer")}
    tree = ""
    if d["name"] == "stdlib":
        root = Path(d.get("path") or sysconfig.get_paths()["stdlib"]).expanduser()
        tree = tree_fingerprint(root, stdlib_files(root)) + sys.version
    elif d["name"] == "local":
        root = local_root(d)
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        tree = _sha(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    tok = file_sha256(Path(d["tokenizer"])) if d.get("tokenizer") else ""
    return _sha([json.dumps(settings, sort_keys=True, default=str), tree, tok, str(FORMAT_VERSION)])[:20]


def check_data_config(d: Mapping) -> None:
    if d.get("name") not in CORPORA:  # before the name becomes part of a cache file's name
        raise ConfigError(f"unknown corpus data.name={d.get('name')!r}; known: {list(CORPORA)}")
    check_int(d.get("vocab_size"), "data.vocab_size (256 bytes + end-of-document)", minimum=257)
    fv, ft = d.get("valid_fraction", 0), d.get("test_fraction", 0)
    if not (0 < fv < 1 and 0 <= ft < 1 and fv + ft < 1):
        raise ConfigError(f"data.valid_fraction={fv} / data.test_fraction={ft} must leave a training split")


def entry_problem(root: Path, prov: Mapping) -> str | None:
    """Why a cache entry (its index record) cannot be used as it stands, or None: its directory must be inside
    the cache (relative: a copied cache never reads the original's files), every stream must exist with the size
    the index records, and the tokenizer must hash to the recorded value. Stream contents are checked by
    load_tokens (hashing is done once per file and process)."""
    entry = prov.get("entry")
    if not isinstance(entry, str) or Path(entry).is_absolute() or ".." in Path(entry).parts:
        return "its index has no relative entry directory (an older or foreign cache)"
    where = root / entry
    itemsize = np.dtype(prov.get("dtype", "uint16")).itemsize
    for s in SPLITS:
        f = where / f"{s}.bin"
        if not f.is_file():
            return f"{f} is missing"
        if f.stat().st_size != prov["n_tokens"][s] * itemsize:
            return (f"{f} holds {f.stat().st_size} bytes, the index records {prov['n_tokens'][s]} tokens "
                    f"({prov['n_tokens'][s] * itemsize} bytes)")
    tok = where / "tokenizer.json"
    if not tok.is_file() or file_sha256(tok) != prov.get("tokenizer_hash"):
        return f"{tok} is missing or differs from the recorded tokenizer_hash"
    return None


def read_index(index: Path, root: Path) -> dict | None:
    """The usable provenance recorded at `index`, or None (absent, unreadable or damaged: logged, rebuilt)."""
    if not index.exists():
        return None
    try:
        prov = json.loads(index.read_text())
        problem = entry_problem(root, prov)
    except (OSError, ValueError, KeyError, TypeError) as e:
        problem = f"its index {index} is unreadable ({type(e).__name__}: {e})"
    if problem is None:
        return {**prov, "dir": str(root / prov["entry"])}
    log.warning("lenx: the token cache entry is damaged (%s); rebuilding it", problem)
    return None


def build_entry(d: Mapping, root: Path, index: Path) -> dict:
    """Load the corpus, train (or take the given) tokenizer, tokenise every split, write the index last."""
    docs, extra = load_corpus(d)
    split_hashes = {s: _sha(p for doc in docs[s] for p in doc) for s in SPLITS}
    corpus_hash = _sha(split_hashes[s] for s in SPLITS)
    given = Path(d["tokenizer"]) if d.get("tokenizer") else None
    sub = f"tok-{file_sha256(given)[:16]}" if given else f"bpe{d['vocab_size']}-mf{d['min_frequency']}"
    entry = f"{d['name']}-{corpus_hash[:12]}/{sub}"
    out = root / entry
    out.mkdir(parents=True, exist_ok=True)
    tok_path = out / "tokenizer.json"
    if given is not None:
        atomic_write_bytes(tok_path, given.read_bytes())
    elif not tok_path.is_file() or not _loads(tok_path):
        tok = train_tokenizer((t for _, t in docs["train"]), d["vocab_size"], d["min_frequency"])
        atomic_write_bytes(tok_path, tok.to_str().encode())
    tok = Tokenizer.from_file(str(tok_path))
    eod = d.get("eod_token") or EOD_TOKEN  # (a Hugging Face model's own EOS: lenx.hf)
    eod_id = tok.token_to_id(eod)
    if eod_id is None:
        raise CorpusError(f"the tokenizer {given or tok_path} has no {eod} token")
    dtype = np.uint16 if tok.get_vocab_size() <= 65535 else np.uint32
    n_tokens, stream_hashes = {}, {}
    for s in SPLITS:
        stream = tokenize_stream(tok, [t for _, t in docs[s]], eod_id, dtype).tobytes()
        atomic_write_bytes(out / f"{s}.bin", stream)
        n_tokens[s], stream_hashes[s] = len(stream) // np.dtype(dtype).itemsize, hashlib.sha256(stream).hexdigest()
    prov = {"corpus": d["name"], "corpus_hash": corpus_hash, "split_hashes": split_hashes,
            "stream_hashes": stream_hashes, "tokenizer_hash": file_sha256(tok_path),
            "vocab_size": tok.get_vocab_size(), "eod_id": eod_id, "dtype": np.dtype(dtype).name,
            "n_tokens": n_tokens, "n_documents": {s: len(docs[s]) for s in SPLITS}, "entry": entry,
            "python_version": extra.get("python_version", ""),
            **{k: v for k, v in extra.items() if k != "python_version"}}
    atomic_write_bytes(index, json.dumps(prov, indent=1).encode())
    return {**prov, "dir": str(out)}


def _loads(tok_path: Path) -> bool:
    try:
        Tokenizer.from_file(str(tok_path))
        return True
    except Exception:  # a damaged tokenizer file in the cache: retrained
        return False


def index_path(d: Mapping) -> Path:
    """The index file of the configured corpus's cache entry (keyed by source_key)."""
    return cache_root(d) / "index" / f"{d['name']}-{source_key(d)}.json"


def cached(cfg: Mapping) -> dict | None:
    """The provenance of the configured corpus if its cache entry exists and is whole, else None (builds nothing)."""
    d = data_config(cfg)
    check_data_config(d)
    return read_index(index_path(d), cache_root(d))


def prepare(cfg: Mapping) -> dict:
    """Build (or reuse) tokenizer and token streams for the configured corpus; return its provenance.

    `data.tokenizer` (set by evaluation: the tokenizer a checkpoint was trained with) tokenises the corpus with
    that file instead of training a BPE. A damaged cache entry is rebuilt, never used."""
    d = data_config(cfg)
    check_data_config(d)
    root = cache_root(d)
    index = index_path(d)
    prov = read_index(index, root)
    if prov is not None:
        return prov
    try:
        index.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise CorpusError(f"the token cache {root} cannot be used: a file is in the way of {index.parent}") from None
    with FileLock(str(index) + ".lock"):
        prov = read_index(index, root)  # another process may have finished while we waited
        return prov if prov is not None else build_entry(d, root, index)


_VERIFIED: set[tuple] = set()


def verify_stream(path: Path, expected: str | None) -> None:
    """Hash a stream file against the index (once per file, size and mtime, per process)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if expected is None or key in _VERIFIED:
        return
    if file_sha256(path) != expected:
        raise StaleCacheError(path)
    _VERIFIED.add(key)


class StaleCacheError(Exception):
    """A stream whose bytes no longer hash to what the index records (internal: load_tokens rebuilds)."""


def held(cfg: Mapping, split: str | None = None) -> dict | None:
    """The provenance a run config already holds (`provenance`, set by train / scoring), if its entry is on disk
    and the requested stream (or, without a split, the tokenizer) hashes to what it records: then it is used as
    is, without re-walking the corpus to find the cache entry."""
    prov = cfg.get("provenance") if "data" in cfg else None
    if not isinstance(prov, Mapping) or not prov.get("dir") or not prov.get("stream_hashes"):
        return None
    path = Path(prov["dir"]) / (f"{split}.bin" if split else "tokenizer.json")
    expected = prov["stream_hashes"].get(split) if split else prov.get("tokenizer_hash")
    try:
        verify_stream(path, expected)
    except (StaleCacheError, OSError):
        return None
    return dict(prov)


def load_tokens(cfg: Mapping, split: str) -> np.ndarray:
    """The split's token stream as a read-only 1-D memmap of ids (prepares the cache on first use)."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    prov = held(cfg, split)
    if prov is not None:
        return np.memmap(Path(prov["dir"]) / f"{split}.bin", dtype=prov["dtype"], mode="r")
    prov = prepare(cfg)
    path = Path(prov["dir"]) / f"{split}.bin"
    try:
        verify_stream(path, prov.get("stream_hashes", {}).get(split))
    except StaleCacheError:
        d = data_config(cfg)
        log.warning("lenx: %s does not hash to what the cache index records (damaged); rebuilding the entry", path)
        index_path(d).unlink(missing_ok=True)
        prov = prepare(cfg)
        path = Path(prov["dir"]) / f"{split}.bin"
        verify_stream(path, prov.get("stream_hashes", {}).get(split))
    return np.memmap(path, dtype=prov["dtype"], mode="r")


def entry(cfg: Mapping) -> dict:
    """The provenance of the run's cache entry: the one the config holds when it is whole, else prepare's."""
    return held(cfg) or prepare(cfg)


def load_tokenizer(cfg: Mapping) -> Tokenizer:
    return Tokenizer.from_file(str(Path(entry(cfg)["dir"]) / "tokenizer.json"))


def digit_ids(prov: Mapping, digits: str) -> list[int]:
    """The ids of the tokens that are exactly one of `digits` in the run's tokenizer (pos=abacus on a corpus: the
    BPE's single-digit tokens; a digit inside a longer token is not one)."""
    tok = Tokenizer.from_file(str(Path(prov["dir"]) / "tokenizer.json"))
    ids = [tok.token_to_id(d) for d in digits]
    if not any(i is not None for i in ids):
        raise ConfigError(f"pos=abacus: the tokenizer has no token for any of the digits {digits!r} (pos.digits)")
    return [i for i in ids if i is not None]
