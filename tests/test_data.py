"""The data pipeline on small local corpora in every supported format, and its refusals."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE, STDLIB

from lenx import corpora, data
from lenx.errors import ConfigError, CorpusError


def cfg(name="stdlib", **over):
    d = {"name": name, "path": None, "valid_fraction": 0.2, "test_fraction": 0.2, "vocab_size": 300,
         "min_frequency": 2, "cache_dir": None, "text_field": "text"}
    d.update(over)
    return {"data": d}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LENX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_stdlib_builder_splits_streams_and_provenance(tree, cache):
    prov = data.prepare(cfg(path=str(tree)))
    assert sum(prov["n_documents"].values()) == len(SAMPLE)  # site-packages and the latin-1 file left out
    by_split = {n: data.split_of(f"pkg/{n}", 0.2, 0.2) for n in SAMPLE}
    assert prov["n_documents"]["train"] == sum(v == "train" for v in by_split.values())
    tok = data.load_tokenizer(cfg(path=str(tree)))
    for split in data.SPLITS:
        stream = data.load_tokens(cfg(path=str(tree)), split)
        assert stream.dtype == np.uint16 and stream.ndim == 1 and len(stream) == prov["n_tokens"][split]
        assert stream[0] == prov["eod_id"] and (stream == prov["eod_id"]).sum() == prov["n_documents"][split]
    # round trip: the first training document decodes to its source exactly
    stream = np.asarray(data.load_tokens(cfg(path=str(tree)), "train"))
    ends = np.flatnonzero(stream == prov["eod_id"])
    first = tok.decode(stream[1:ends[1]].tolist() if len(ends) > 1 else stream[1:].tolist())
    assert first in {(STDLIB / n).read_text() for n in SAMPLE}
    assert prov["python_version"] and len(prov["corpus_hash"]) == 64 and set(prov["split_hashes"]) == set(data.SPLITS)
    assert prov["vocab_size"] == 300 and len(prov["tokenizer_hash"]) == 64


def test_split_is_stable_when_files_come_and_go():
    assignment = {f"pkg/{i}.py": data.split_of(f"pkg/{i}.py", 0.1, 0.1) for i in range(200)}
    assert set(assignment.values()) == set(data.SPLITS)
    assert all(data.split_of(k, 0.1, 0.1) == v for k, v in assignment.items())  # a pure function of the path


def test_second_prepare_reuses_cache_and_changes_invalidate_it(tree, cache, monkeypatch):
    c = cfg(path=str(tree))
    first = data.prepare(c)
    bin_path = Path(first["dir"]) / "train.bin"
    mtime = bin_path.stat().st_mtime_ns
    monkeypatch.setattr(data, "train_tokenizer", lambda *a, **k: pytest.fail("tokenizer retrained"))
    t = time.time()
    assert data.prepare(c) == first
    assert time.time() - t < 2 and bin_path.stat().st_mtime_ns == mtime
    victim = next(n for n in SAMPLE if data.split_of(f"pkg/{n}", 0.2, 0.2) == "validation")
    (tree / "pkg" / victim).write_text("x = 1\n" * 40)
    monkeypatch.undo()
    changed = data.prepare(c)
    assert changed["corpus_hash"] != first["corpus_hash"]
    assert changed["split_hashes"]["train"] == first["split_hashes"]["train"]  # only validation changed


def test_local_txt_jsonl_parquet(tmp_path, cache):
    texts = [(STDLIB / n).read_text() for n in SAMPLE]
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, t in enumerate(texts[:6]):
        (folder / f"doc{i}.txt").write_text(t)
    (folder / "more.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[6:10]))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": texts[10:]}), folder / "rest.parquet")
    prov = data.prepare(cfg("local", path=str(folder), valid_fraction=0.3, test_fraction=0.2))
    assert sum(prov["n_documents"].values()) == len(texts)
    stream = data.load_tokens(cfg("local", path=str(folder), valid_fraction=0.3, test_fraction=0.2), "train")
    assert (np.asarray(stream) == prov["eod_id"]).sum() == prov["n_documents"]["train"]


def test_wikitext_articles_are_reassembled_from_lines():
    lines = [" = Valkyria = \n", " Body one .\n", " = = Gameplay = = \n", " More .\n", "\n",
             " = Tower = \n", " Body two .\n"]
    arts = corpora.wikitext_articles(lines)
    assert len(arts) == 2 and arts[0].startswith(" = Valkyria") and "Gameplay" in arts[0]
    assert arts[1] == " = Tower = \n Body two .\n"


def write_parquet(path, **cols):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(cols), path)
    return str(path)


def hub_files(tmp_path, splits, make):
    return {s: write_parquet(tmp_path / f"{s}.parquet", **make(s)) for s in splits}


def body(n):
    return (STDLIB / SAMPLE[n % len(SAMPLE)]).read_text()[:3000]


def test_wikitext_pg19_tinystories_processing_on_local_files_in_hub_schema(tmp_path, cache):
    def wiki(s):
        lines = []
        for a in range(3):
            lines += [f" = {s} article {a} = \n", body(a), " = = Section = = \n", body(a + 1)]
        return {"text": lines}

    prov = data.prepare(cfg("wikitext103", data_files=hub_files(tmp_path, data.SPLITS, wiki)))
    assert prov["n_documents"] == {"train": 3, "validation": 3, "test": 3}

    def book(s):
        return {"short_book_title": [f"{s}{i}" for i in range(2)], "url": [f"u/{s}/{i}" for i in range(2)],
                "text": [body(i) for i in range(2)]}

    (tmp_path / "pg").mkdir()
    prov = data.prepare(cfg("pg19", data_files=hub_files(tmp_path / "pg", data.SPLITS, book)))
    assert prov["n_documents"] == {"train": 2, "validation": 2, "test": 2}

    def stories(s):
        return {"text": [body(i) for i in range(12 if s == "train" else 20)]}

    (tmp_path / "ts").mkdir()
    prov = data.prepare(cfg("tinystories", data_files=hub_files(tmp_path / "ts", ["train", "validation"], stories)))
    assert prov["n_documents"]["train"] == 12
    assert prov["n_documents"]["validation"] + prov["n_documents"]["test"] == 20  # test carved from validation
    assert prov["n_documents"]["test"] > 0


def test_unreachable_hub_is_one_clear_error_fast(cache, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(corpora, "hub_reachable", lambda: False)
    t = time.time()
    with pytest.raises(CorpusError, match="hub is unreachable.*Salesforce/wikitext.*data=stdlib"):
        data.prepare(cfg("wikitext103", hub_id="Salesforce/wikitext", hub_config="wikitext-103-raw-v1"))
    assert time.time() - t < 5


def test_load_hub_connection_error_is_wrapped(cache, monkeypatch):
    monkeypatch.setattr(corpora, "hub_reachable", lambda: True)

    def refuse(*a, **k):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(corpora.datasets, "load_dataset", refuse)
    with pytest.raises(CorpusError, match="unreachable.*no route to host"):
        corpora.load_hub({"hub_id": "x/y", "cache_dir": None})


@pytest.mark.parametrize("setup, match", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "no .txt"),
    (lambda p: (p.mkdir(), (p / "a.txt").write_text("  \n")), "no non-empty documents"),
    (lambda p: (p.mkdir(), (p / "a.txt").write_bytes(b"\xff\xfe\xfa bad")), r"a.txt is not UTF-8 text: byte 0xff at byte offset 0"),
    (lambda p: (p.mkdir(), (p / "a.txt").write_bytes(b"ok text\0\1\2")), r"a.txt is not a text file: NUL byte at byte offset 7"),
    (lambda p: (p.mkdir(), (p / "a.jsonl").write_bytes(b"{\"text\": \"caf\xe9\"}\n")), r"a.jsonl is not UTF-8 text: byte 0xe9 at byte offset 13"),
])
def test_bad_local_corpora(tmp_path, cache, setup, match):
    path = tmp_path / "c"
    setup(path)
    with pytest.raises(CorpusError, match=match):
        data.prepare(cfg("local", path=str(path)))


def test_vocab_larger_than_corpus_supports(tree, cache):
    with pytest.raises(CorpusError, match="at most .* tokens"):
        data.prepare(cfg(path=str(tree), vocab_size=60000))


@pytest.mark.parametrize("over, match", [({"vocab_size": 100}, "vocab_size"), ({"valid_fraction": 0.0}, "fraction")])
def test_bad_data_settings(over, match, cache):
    with pytest.raises(ConfigError, match=match):
        data.prepare(cfg(**over))


def test_unknown_split():
    with pytest.raises(ValueError, match="unknown split"):
        data.load_tokens(cfg(), "dev")


@pytest.mark.slow
def test_real_stdlib_corpus(cache):
    d = {"name": "stdlib", "path": None, "valid_fraction": 0.05, "test_fraction": 0.05, "vocab_size": 8192,
         "min_frequency": 2, "cache_dir": None}
    prov = data.prepare({"data": d})
    assert prov["n_documents"]["train"] > 1000 and prov["n_tokens"]["validation"] > 16 * 512 * 4
    assert prov["vocab_size"] == 8192
