"""Pure pieces of the retrieval layer: filters, FTS queries, RRF, vector indexes, migrations."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from retrieval_fixtures import real_embedder, settings

from ragtune.core.errors import InvalidFilter
from ragtune.retrieval.chunking import split_document
from ragtune.retrieval.filters import compile_filter, parse_filter
from ragtune.retrieval.fusion import rrf
from ragtune.retrieval.sparse import Tokenizer
from ragtune.retrieval.store import SCHEMA_VERSION, Store, connect
from ragtune.retrieval.vectors import INDEX_TYPES, HNSWIndex, IVFIndex

ROWS = [
    {"lang": "en", "year": 2020, "tags": "a", "draft": True, "n": {"x": 1}},
    {"lang": "fr", "year": 2023, "draft": False},
    {"lang": "en", "year": 2024},
]


def _match(filter: dict) -> list[int]:
    import json

    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE documents (i INTEGER, metadata TEXT)")
    conn.executemany("INSERT INTO documents VALUES (?, ?)", [(i, json.dumps(r)) for i, r in enumerate(ROWS)])
    where, params = compile_filter(filter, column="metadata")
    return [r[0] for r in conn.execute(f"SELECT i FROM documents WHERE {where} ORDER BY i", params)]


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        ({"lang": "en"}, [0, 2]),
        ({"lang": "en", "year": {"$gte": 2021}}, [2]),
        ({"year": {"$in": [2020, 2024]}}, [0, 2]),
        ({"year": {"$nin": [2020]}}, [1, 2]),
        ({"lang": {"$ne": "en"}}, [1]),
        ({"draft": {"$exists": True}}, [0, 1]),
        ({"draft": {"$exists": False}}, [2]),
        ({"draft": True}, [0]),
        ({"tags": {"$ne": "a"}}, [1, 2]),
        ({"n.x": 1}, [0]),
        ({"year": {"$gt": 2020, "$lt": 2024}}, [1]),
        ({}, [0, 1, 2]),
    ],
)
def test_filters_select_the_right_rows(filter: dict, expected: list[int]) -> None:
    assert _match(filter) == expected


@pytest.mark.parametrize(
    ("filter", "message"),
    [
        ({"lang": {"$regex": "e"}}, "unknown operator '$regex'"),
        ({"lang": ["en"]}, "values are JSON scalars"),
        ({"year": {"$in": []}}, "non-empty JSON array"),
        ({"year": {"$in": 2020}}, "non-empty JSON array"),
        ({"bad field!": 1}, "bad field name"),
        ({"draft": {"$exists": "yes"}}, "true or false"),
        ({"year": {"$gt": None}}, "cannot order against null"),
        ({"lang": {}}, "empty operator object"),
    ],
)
def test_malformed_filters_name_the_problem(filter: dict, message: str) -> None:
    with pytest.raises(InvalidFilter, match=message.replace("$", r"\$").replace("(", r"\(")):
        compile_filter(filter)


def test_parse_filter_rejects_non_objects() -> None:
    assert parse_filter('{"a": 1}') == {"a": 1}
    with pytest.raises(InvalidFilter, match="not valid JSON"):
        parse_filter("{a: 1}")
    with pytest.raises(InvalidFilter, match="JSON object"):
        parse_filter("[1]")


def test_query_terms_are_fts5_terms_without_stopwords() -> None:
    tok = Tokenizer()
    assert tok.query_terms('what is the "Boundary" layers? AND NOT x-y') == [
        "boundari",
        "layer",
        "not",
        "x",
        "y",
    ]
    assert tok.query_terms("the") == ["the"]  # only stopwords: keep them rather than match nothing
    assert tok.query_terms("?!") == []
    assert tok.query_terms("Café  cafe") == ["cafe"]  # unicode61 folds case and diacritics


def test_rrf_rewards_agreement() -> None:
    fused = rrf([[(1, 0.9), (2, 0.8), (3, 0.1)], [(3, 9.0), (1, 5.0)]], k=60)
    assert [i for i, _ in fused] == [1, 3, 2]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)


def test_migrations_set_schema_version(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    assert store.writer.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in store.writer.execute("SELECT name FROM sqlite_master")}
    assert {"documents", "chunks", "chunks_fts", "meta"} <= tables
    store.close()
    Store(tmp_path / "s.sqlite").close()  # re-opening an up-to-date store migrates nothing


def test_many_openers_of_a_new_database_all_get_wal(tmp_path: Path) -> None:
    """SQLite skips the busy handler while the journal mode changes: openers racing on a new
    file met "database is locked" at once (7 of 200 rounds of 8 threads before connect retried)."""

    def open_and_write(path: Path) -> str:
        conn = connect(path)
        conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        conn.close()
        return mode

    with ThreadPoolExecutor(8) as pool:
        for round_ in range(200):
            path = tmp_path / f"{round_}.sqlite"
            assert list(pool.map(open_and_write, [path] * 8)) == ["wal"] * 8


def test_chunks_have_offsets_overlap_and_titles() -> None:
    emb = real_embedder()
    text = " ".join(f"word{i} alpha beta" for i in range(120))
    chunks = split_document(text, "A title", emb, chunk_tokens=64, overlap=16)
    assert len(chunks) > 3
    for c in chunks:
        assert c.text == text[c.start : c.end]
        assert c.embed_text.startswith("A title\n") and c.tokens <= 64 + 4
        assert c.text[0] != " " and (c.start == 0 or text[c.start - 1] == " ")  # starts on a word
    assert chunks[1].start < chunks[0].end  # overlap
    assert chunks[-1].end == len(text)
    one = split_document("A title. Then the body.", "A title", emb, chunk_tokens=64, overlap=8)
    assert one[0].embed_text == "A title. Then the body."  # title already leads the text


def _vectors(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_indexes_search_delete_and_round_trip(kind: str, tmp_path: Path) -> None:
    x = _vectors(300)
    ids = np.arange(1000, 1300, dtype=np.int64)
    exact = settings(vector_precision="fp32")  # the default bf16 flat index rounds scores (~1e-3)
    index = INDEX_TYPES[kind].build(16, exact, ids, x)
    scores, found = index.search(x[5], 3)
    assert found[0] == 1005 and scores[0] == pytest.approx(1.0, abs=1e-5)
    index.remove(np.array([1005, 1006], dtype=np.int64))
    assert index.live == 298
    _, found = index.search(x[5], 10)
    assert 1005 not in found and len(found) == 10
    _, found = index.search(x[7], 5, allowed=np.array([1007, 1100], dtype=np.int64))
    assert sorted(found.tolist()) == [1007, 1100]
    index.save(tmp_path / "v.faiss")
    again = INDEX_TYPES[kind].load(tmp_path / "v.faiss", 16, exact, index.state())
    assert again.live == 298 and set(again.live_ids().tolist()) == set(ids.tolist()) - {1005, 1006}


def test_hnsw_tombstones_ask_for_compaction() -> None:
    x = _vectors(2000)
    index = HNSWIndex.build(16, settings(), np.arange(2000, dtype=np.int64), x)
    index.remove(np.arange(300, dtype=np.int64))
    assert index.ntotal == 2000 and index.live == 1700 and not index.needs_rebuild
    index.remove(np.arange(300, 500, dtype=np.int64))
    assert index.needs_rebuild  # over a fifth of the graph is dead


def test_ivf_trains_once_it_has_enough_vectors() -> None:
    small = IVFIndex.build(16, settings(), np.arange(100, dtype=np.int64), _vectors(100))
    assert not small.is_ivf and not small.needs_rebuild
    big = IVFIndex.build(16, settings(ivf_nprobe=64), np.arange(5000, dtype=np.int64), _vectors(5000))
    assert big.is_ivf and big.trained_on == 5000
    _, found = big.search(_vectors(5000)[42], 1)
    assert found[0] == 42
    big.remove(np.array([42], dtype=np.int64))
    assert 42 not in big.ids() and big.ntotal == 4999


def test_traced_query_path_matches_the_eager_model() -> None:
    emb = real_embedder()
    assert emb._traced_query_module()  # MiniLM: transformer + mean pooling + normalise
    queries = ["wing", "what is the boundary layer thickness on a flat plate?", " ".join(["shock"] * 300)]
    eager = emb._encode(queries)  # one padded batch through sentence-transformers
    eager /= np.linalg.norm(eager, axis=1, keepdims=True)
    for q, ref in zip(queries, eager, strict=True):
        vec = emb._encode_query(q)[0]
        assert float(vec @ ref) / float(np.linalg.norm(vec)) > 0.999, q  # bf16 rounding only


def test_pipelines_other_than_mean_pooling_stay_eager() -> None:
    from ragtune.retrieval.embedder import SentenceTransformerEmbedder

    emb = SentenceTransformerEmbedder("all-MiniLM-L6-v2", query_cache_size=0)
    emb.model[1].pooling_mode = "cls"
    assert emb._traced_query_module() is False
    assert emb.embed_query("wing").shape == (emb.dimension,)


def test_the_embedder_serves_many_threads_at_once() -> None:
    """Requests embed side by side (a server ranks quotations while others search or ingest).
    The tokenizer is shared, and counting tokens switches its padding off: unguarded, a batch
    tokenised meanwhile came out unpadded ("expected sequence of length 24 ... (got 23)"),
    a few times in 400 such calls."""
    emb = real_embedder()
    texts = [" ".join(["word"] * (3 + i % 40)) + f" {i}" for i in range(120)]
    alone = emb.embed(texts[::3], batch_size=4)

    def work(i: int) -> np.ndarray | None:
        if i % 2:
            emb.count_tokens(texts[i % 5 :: 5])
            emb.token_offsets(texts[i % len(texts)])
            return None
        return emb.embed(texts[::3], batch_size=4)

    with ThreadPoolExecutor(16) as pool:
        for together in pool.map(work, range(600)):
            if together is not None:
                assert np.sum(together * alone, axis=1).min() > 0.999  # bf16 rounding only
