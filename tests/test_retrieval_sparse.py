"""The in-memory BM25 index against SQLite's own FTS5 bm25(), on a real store.

Every path that changes the index (a cold build from the FTS5 table, adds, removes, segment
merges, compaction, a snapshot round trip) must rank and score exactly as FTS5 does.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from ragtune.retrieval.sparse import SparseIndex, Tokenizer, count, fts_text
from ragtune.retrieval.store import Store

WORDS = (
    "wing flow boundary layer shock pressure heat transfer supersonic laminar turbulent nozzle bread yeast"
)
WORDS += " starter flour oven coffee roast bean grinder espresso train station platform ticket refund harbor"
WORDS = (WORDS + " line night bus schedule delay").split(" ")
TOK = Tokenizer()


def texts(n: int, seed: int) -> list[tuple[str | None, str]]:
    rng = random.Random(seed)
    weights = [1 / (i + 1) for i in range(len(WORDS))]  # Zipf-like: some words in most chunks
    out = []
    for i in range(n):
        body = " ".join(rng.choices(WORDS, weights, k=rng.randint(3, 40)))
        out.append((f"Title {rng.choice(WORDS)}" if i % 3 else None, f"{body} the of Flows."))
    return out


def add_chunks(store: Store, docs: list[tuple[str | None, str]], prefix: str) -> list[int]:
    conn = store.writer
    ids = []
    conn.execute("BEGIN")
    for n, (title, text) in enumerate(docs):
        conn.execute(
            "INSERT INTO documents(id, title, text, content_hash, created_at, updated_at) "
            "VALUES (?, ?, ?, '', 0, 0)",
            (f"{prefix}{n}", title, text),
        )
        cur = conn.execute(
            "INSERT INTO chunks(doc_id, seq, title, text, start, end, hash, embedding) "
            "VALUES (?, 0, ?, ?, 0, ?, ?, x'')",
            (f"{prefix}{n}", title, text, len(text), f"{prefix}{n}"),
        )
        ids.append(int(cur.lastrowid))
    conn.execute("COMMIT")
    return ids


def delete_chunks(store: Store, ids: list[int]) -> None:
    store.writer.executemany("DELETE FROM chunks WHERE id = ?", [(i,) for i in ids])


def fts5_ranking(conn: sqlite3.Connection, terms: list[str], k: int) -> list[tuple[int, float]]:
    match = " OR ".join(f'"{t}"' for t in terms)
    rows = conn.execute(
        "SELECT rowid, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ? "
        "ORDER BY rank, rowid LIMIT ?",
        (match, k),
    )
    return [(r[0], -r[1]) for r in rows]


QUERIES = ["supersonic wing flow", "bread oven", "night bus delay refund", "the flows", "espresso", "zzz"]


def assert_same_as_fts5(index: SparseIndex, conn: sqlite3.Connection, k: int = 10) -> None:
    for q in QUERIES:
        terms = TOK.query_terms(q)
        want = fts5_ranking(conn, terms, k)
        got = index.search(terms, k)
        assert [i for i, _ in got] == [i for i, _ in want], q
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store.sqlite")
    yield s
    s.close()


def test_every_path_scores_like_fts5(store: Store, tmp_path: Path) -> None:
    conn = store.writer
    first = add_chunks(store, texts(300, 1), "a")
    assert_same_as_fts5(SparseIndex.from_store(conn, TOK), conn)

    # The same chunks added in batches, as writes do: many small segments, then merges.
    index = SparseIndex(TOK)
    batches = [first[i : i + 7] for i in range(0, len(first), 7)]
    by_id = dict(zip(first, Store.fts_texts(conn, first), strict=True))
    for batch in batches:
        index.add(count(TOK, batch[::-1], [by_id[i] for i in batch[::-1]]))  # any order within a batch
        while index.needs_merge:
            index = index.merged()
    assert len(index.segments) < len(batches) / 4
    assert_same_as_fts5(index, conn)

    # Removals (dead postings skipped, statistics updated), then more chunks.
    gone = first[::3]
    delete_chunks(store, gone)
    index.remove(np.array(gone))
    index.remove(np.array([gone[0], 10**9]))  # already gone / never there: ignored
    more = add_chunks(store, texts(40, 2), "b")
    index.add(count(TOK, more, Store.fts_texts(conn, more)))
    assert index.live == 300 - len(gone) + 40
    assert_same_as_fts5(index, conn)

    # Compaction: a third of the slots dead -> one segment, slots renumbered, unused terms dropped.
    delete_chunks(store, first[1::3])
    index.remove(np.array(first[1::3]))
    assert index.needs_merge
    compacted = index.merged()
    assert len(compacted.segments) == 1 and len(compacted.chunk_ids) == compacted.live
    assert_same_as_fts5(compacted, conn)

    # Snapshot round trip.
    compacted.save(tmp_path / "sparse.npz")
    loaded = SparseIndex.load(tmp_path / "sparse.npz", TOK)
    assert loaded.postings == compacted.postings and loaded.live == compacted.live
    assert_same_as_fts5(loaded, conn)


def test_allowed_ids_filter_and_edge_cases(store: Store) -> None:
    ids = add_chunks(store, texts(50, 3), "a")
    index = SparseIndex.from_store(store.writer, TOK)
    terms = TOK.query_terms("wing flow")
    allowed = np.array(ids[10:20])
    hits = index.search(terms, 50, allowed)
    assert hits and {i for i, _ in hits} <= set(ids[10:20])
    assert [i for i, _ in hits] == [i for i, _ in index.search(terms, 50) if i in set(ids[10:20])]
    assert index.search(terms, 5, np.array([], np.int64)) == []
    assert index.search(["neverseen"], 5) == []
    assert SparseIndex(TOK).search(terms, 5) == []
    assert fts_text("A title", "body") == "A title\nbody" and fts_text(None, "body") == "body"


def test_ids_must_grow(store: Store) -> None:
    ids = add_chunks(store, texts(5, 4), "a")
    index = SparseIndex.from_store(store.writer, TOK)
    with pytest.raises(ValueError, match="grow"):
        index.add(count(TOK, [ids[0]], ["again"]))
