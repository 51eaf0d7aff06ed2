"""One suite, every document store: what a collection promises holds on SQLite and PostgreSQL.

Real stores (a SQLite file in tmp_path; a database on a throwaway PostgreSQL server), real
FAISS, the real MiniLM embedder. Two Library objects on one store stand for two processes or
two replicas.
"""
# ruff: noqa: F811  (fixtures imported from the fixture modules are redefined as arguments)

from __future__ import annotations

import threading

import pytest
from retrieval_fixtures import EMBEDDER, FIXTURES, CountingEmbedder, embedder, settings  # noqa: F401
from store_fixtures import MakeLibrary, make_library, postgres, store_url  # noqa: F401

from ragtune.core.errors import (
    CollectionExists,
    CollectionNotFound,
    DocumentNotFound,
    InvalidDocument,
    InvalidFilter,
    WriterBusy,
)
from ragtune.retrieval import Document, Library
from ragtune.retrieval.ingest import load_beir


def corpus() -> list[Document]:
    return list(load_beir(FIXTURES / "beir" / "corpus.jsonl"))


def snapshot(c) -> tuple:  # everything a failed batch must leave untouched
    docs = c.list_documents(limit=1000)
    return docs, {k: v for k, v in c.stats().items() if k != "bytes_on_disk"}


def test_upsert_get_list_search(make_library: MakeLibrary) -> None:
    c = make_library().create("kb")
    result = c.upsert(corpus())
    assert len(result.added) == 16 and not result.updated and not result.unchanged
    doc = c.get("d4")
    assert doc.title == "Sourdough bread" and doc.metadata["topic"] == "other"
    assert [d.id for d in c.list_documents(offset=2, limit=3)] == ["d3", "d4", "d5"]
    c.upsert([Document("d3", "changed text keeps its place in the list")])
    assert [d.id for d in c.list_documents(offset=2, limit=3)] == ["d3", "d4", "d5"]
    for mode in ("dense", "sparse", "hybrid"):
        hits = c.search("wild yeast starter for bread", k=3, mode=mode)
        assert hits[0].document_id == "d4", mode
        assert hits[0].chunk_id == "d4#0" and hits[0].text == doc.text[hits[0].start : hits[0].end]
        assert hits[0].metadata == doc.metadata and hits[0].title == doc.title
    stats = c.stats()
    assert stats["documents"] == 16 and stats["chunks"] == stats["vectors"] == stats["sparse_chunks"] == 16
    assert stats["consistent"] and c.check() and stats["bytes_on_disk"] > 0
    with pytest.raises(DocumentNotFound):
        c.get("nope")


def test_both_stores_rank_alike(tmp_path, embedder: CountingEmbedder, postgres) -> None:  # noqa: ANN001
    """The same texts give the same hits, scores included, on SQLite and on PostgreSQL."""
    url = postgres.create_database("alike")
    found = []
    for where in (None, url):
        lib = Library(tmp_path / "i", settings(store_url=where), embedders={EMBEDDER: embedder})
        c = lib.create("kb")
        c.upsert(corpus())
        found.append(
            [
                [(h.chunk_id, round(h.score, 5)) for h in c.search(q, k=5, mode=m)]
                for q in ("wing stall", "coffee roast beans", "volcano lava flows")
                for m in ("dense", "sparse", "hybrid")
            ]
        )
        lib.close()
    assert found[0] == found[1]


ROWS = [
    {"lang": "en", "year": 2020, "tags": "a", "draft": True, "n": {"x": 1}},
    {"lang": "fr", "year": 2023, "draft": False},
    {"lang": "en", "year": 2024, "note": None},
]


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        ({"lang": "en"}, [0, 2]),
        ({"lang": "en", "year": {"$gte": 2021}}, [2]),
        ({"year": {"$in": [2020, 2024]}}, [0, 2]),
        ({"year": {"$nin": [2020]}}, [1, 2]),
        ({"lang": {"$ne": "en"}}, [1]),
        ({"lang": {"$lt": "f"}}, [0, 2]),
        ({"draft": {"$exists": True}}, [0, 1]),
        ({"draft": {"$exists": False}}, [2]),
        ({"draft": True}, [0]),
        ({"tags": {"$ne": "a"}}, [1, 2]),
        ({"n.x": 1}, [0]),
        ({"note": None}, [2]),
        ({"note": {"$ne": None}}, [0, 1]),
        ({"year": {"$gt": 2020, "$lt": 2024}}, [1]),
        ({}, [0, 1, 2]),
    ],
)
def test_filters_select_the_same_documents(
    make_library: MakeLibrary, filter: dict, expected: list[int]
) -> None:
    c = make_library().create("kb")
    c.upsert([Document(f"r{i}", f"row number {i}", metadata=m) for i, m in enumerate(ROWS)])
    assert sorted(c.metadata_where(filter)) == [f"r{i}" for i in expected]
    hits = c.search("row number", k=10, mode="sparse", filter=filter or None)
    assert sorted(h.document_id for h in hits) == [f"r{i}" for i in expected]


def test_search_with_metadata_filter(make_library: MakeLibrary) -> None:
    c = make_library().create("kb")
    c.upsert(corpus())
    for mode in ("dense", "sparse", "hybrid"):
        hits = c.search("coffee and a wing", k=10, mode=mode, filter={"topic": "aero"})
        assert hits and {h.document_id for h in hits} <= {"d1", "d2", "d3"}, mode
    assert c.search("wing", filter={"topic": {"$in": ["nothing"]}}) == []
    with pytest.raises(InvalidFilter, match="unknown filter field 'topc'.*metadata fields here: topic"):
        c.search("wing", filter={"topc": "aero"})
    with pytest.raises(InvalidFilter, match="'source' is a document field"):
        c.delete_where({"source": "x"})
    with pytest.raises(InvalidFilter, match="unknown operator"):
        c.search("wing", filter={"topic": {"$like": "a"}})


def test_unchanged_documents_are_not_embedded_again(
    make_library: MakeLibrary, embedder: CountingEmbedder
) -> None:
    c = make_library().create("kb")
    c.upsert(corpus())
    first = len(embedder.embedded)
    result = c.upsert(corpus())
    assert len(result.unchanged) == 16 and len(embedder.embedded) == first
    d1 = c.get("d1")  # metadata-only change: an update, but the chunk text is stored already
    result = c.upsert([Document(d1.id, d1.text, d1.title, d1.source, {**d1.metadata, "topic": "x"})])
    assert result.updated == ["d1"] and len(embedder.embedded) == first
    assert c.search("lift and drag", filter={"topic": "x"}, mode="dense")[0].document_id == "d1"


def test_changed_text_reembeds_only_changed_chunks(
    make_library: MakeLibrary, embedder: CountingEmbedder
) -> None:
    c = make_library().create("kb", chunk_tokens=32, chunk_overlap=0)
    paragraphs = [f"Paragraph {i} talks about topic number {i} in some detail here." for i in range(12)]
    c.upsert([Document("long", " ".join(paragraphs))])
    chunks_before = c.stats()["chunks"]
    assert chunks_before > 2
    embedder.embedded.clear()
    paragraphs[-1] = "The final paragraph now says something entirely new about espresso."
    c.upsert([Document("long", " ".join(paragraphs))])
    assert 0 < len(embedder.embedded) < chunks_before
    assert c.search("espresso", mode="sparse")[0].document_id == "long"
    assert c.stats()["consistent"]


def test_delete_and_delete_where(make_library: MakeLibrary) -> None:
    c = make_library().create("kb")
    c.upsert(corpus())
    assert c.delete(["d1", "missing"]) == 1
    assert c.delete_where({"topic": "aero"}) == 2
    assert c.delete([]) == 0 and c.delete(["missing"]) == 0
    with pytest.raises(DocumentNotFound):
        c.get("d1")
    assert all(h.document_id not in ("d1", "d2", "d3") for h in c.search("wing stall aircraft", k=20))
    stats = c.stats()
    assert stats["documents"] == 13 and stats["chunks"] == 13 and stats["consistent"]


def test_library_names_open_drop(make_library: MakeLibrary) -> None:
    lib = make_library()
    a = lib.create("a")
    lib.create("b", index_type="hnsw")
    assert lib.names() == ["a", "b"]
    assert lib.open("a") is a
    with pytest.raises(CollectionExists):
        lib.create("a")
    with pytest.raises(CollectionExists):
        make_library().create("b")  # another replica sees it too
    lib.drop("a")
    assert lib.names() == ["b"] and make_library().names() == ["b"]
    with pytest.raises(CollectionNotFound, match="ragtune collections create nope"):
        lib.open("nope")
    with pytest.raises(CollectionNotFound):
        lib.drop("a")
    assert lib.open("b").stats()["index_type"] == "hnsw"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (Document("x", "y" * 5001), "limit is 5,000"),
        (Document("x", "text", metadata={"f": {1, 2}}), "metadata is not JSON"),
        (Document("d1", "a duplicate id in the batch"), "appears twice"),
    ],
)
def test_a_bad_document_fails_the_whole_batch(make_library: MakeLibrary, bad: Document, message: str) -> None:
    c = make_library(max_document_chars=5000).create("kb")
    c.upsert(corpus()[:3])
    before = snapshot(c)
    with pytest.raises(InvalidDocument, match=message):
        c.upsert([Document("d1", "changed text that must not land"), Document("new", "fine"), bad])
    assert snapshot(c) == before


def test_a_failure_inside_the_transaction_rolls_the_batch_back(make_library: MakeLibrary) -> None:
    """The store fails after some rows of the batch were written: none of them stay."""
    c = make_library().create("kb")
    c.upsert(corpus()[:3])
    before = snapshot(c)
    calls = []
    real = type(c)._commit

    def failing_commit(self, txn, *args, **kwargs):  # noqa: ANN001, ANN202
        calls.append(txn.counts())  # the new rows are there inside the transaction ...
        raise RuntimeError("crash before commit")

    type(c)._commit = failing_commit  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError, match="crash before commit"):
            c.upsert([Document("d1", "replacement text"), Document("new", "brand new text")])
    finally:
        type(c)._commit = real  # type: ignore[method-assign]
    assert calls and calls[0]["documents"] == 4
    assert snapshot(c) == before  # ... and gone after it
    c.upsert([Document("new", "brand new text")])
    assert c.get("new").text == "brand new text" and c.stats()["consistent"]


def test_indexes_are_rebuilt_from_the_store_without_embedding(
    make_library: MakeLibrary, embedder: CountingEmbedder
) -> None:
    lib = make_library()
    c = lib.create("kb")
    c.upsert(corpus())
    c.delete(["d16"])
    expected = {m: [h.chunk_id for h in c.search("volcano lava", k=5, mode=m)] for m in ("dense", "sparse")}
    folder = c.path
    lib.close()
    if folder is not None:  # a store with snapshots: take them away, so the indexes are rebuilt
        for name in ("vectors.faiss", "sparse.npz", "manifest.json"):
            (folder / name).unlink()
    embedder.embedded.clear()
    c = make_library().open("kb")
    for mode, want in expected.items():
        assert [h.chunk_id for h in c.search("volcano lava", k=5, mode=mode)] == want, mode
    assert c.stats()["consistent"] and c.stats()["vectors"] == 15
    assert embedder.embedded == ["volcano lava"]  # the query only; no document re-embedded


def test_a_second_writer_waits_then_gets_writer_busy(make_library: MakeLibrary) -> None:
    c = make_library(lock_timeout=0.3).create("kb")
    c.upsert(corpus()[:2])
    other = make_library().open("kb")  # another process or replica holding the write lock
    with other.store.writing(timeout=5), pytest.raises(WriterBusy, match="another process"):
        c.upsert([Document("z", "new text")])
    assert c.search("new text", mode="sparse") == []
    c.upsert([Document("z", "new text")])  # the lock is free again
    assert c.get("z").text == "new text"


def test_a_write_through_one_replica_is_found_on_another(make_library: MakeLibrary) -> None:
    a = make_library().create("kb")
    b = make_library().open("kb")
    a.upsert(corpus())
    assert b.search("wild yeast starter", k=1)[0].document_id == "d4"
    a.upsert([Document("d4", "Espresso is brewed by forcing hot water through finely ground coffee.")])
    assert b.search("wild yeast starter", k=3, mode="sparse") == []
    assert b.search("finely ground espresso", k=1, mode="sparse")[0].document_id == "d4"
    b.delete(["d5", "d6"])
    for c in (a, b):
        stats = c.stats()
        assert stats["documents"] == 14 and stats["consistent"], stats
    assert {h.document_id for h in a.search("anything at all", k=100)} == {d.id for d in b.list_documents()}


def test_a_collection_dropped_and_made_again_elsewhere_is_reopened(make_library: MakeLibrary) -> None:
    """Replica A has "kb" open; replica B drops it and makes a new "kb": A serves the new one."""
    lib_a, lib_b = make_library(), make_library()
    lib_a.create("kb").upsert(corpus())
    assert lib_a.open("kb").search("wild yeast starter", k=1)[0].document_id == "d4"
    lib_b.drop("kb")
    lib_b.create("kb").upsert([Document("new", "Tram timetables change on Sunday.")])
    fresh = lib_a.open("kb")
    assert [h.document_id for h in fresh.search("tram timetables", k=5)] == ["new"]
    assert fresh.stats()["documents"] == 1 and fresh.check()
    lib_b.drop("kb")
    with pytest.raises(CollectionNotFound):
        lib_a.open("kb")


def test_two_replicas_writing_at_once_land_whole_batches(make_library: MakeLibrary) -> None:
    """Each replica writes pairs of documents; every pair lands whole, none is lost."""
    replicas = [make_library().create("kb"), make_library().open("kb")]
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            for i in range(6):
                text = f"batch {n} pair {i} marker"
                replicas[n].upsert(
                    [Document(f"r{n}p{i}a", text + " one"), Document(f"r{n}p{i}b", text + " two")]
                )
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for c in replicas:
        hits = {h.document_id for h in c.search("pair marker", k=100, mode="sparse")}
        assert len(hits) == 24 and c.stats()["consistent"]


def test_searches_on_a_replica_never_see_a_torn_write(make_library: MakeLibrary) -> None:
    """A writer on one replica adds or deletes pairs of documents; searches on another always
    see whole pairs."""
    writer = make_library().create("kb")
    reader_side = make_library().open("kb")
    writer.upsert(corpus()[:2])
    stop = threading.Event()
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            hits = reader_side.search("pair document marker", k=1000, mode="dense")
            ids = {h.document_id for h in hits if h.document_id.startswith("p")}
            problems.extend(
                f"{i} without its twin" for i in ids if i[:-1] + ("b" if i[-1] == "a" else "a") not in ids
            )
            if not reader_side.stats()["consistent"]:
                problems.append("inconsistent stats")

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(10):
            text = f"pair document marker number {i}"
            writer.upsert([Document(f"p{i}a", text + " alpha"), Document(f"p{i}b", text + " beta")])
            if i % 3 == 2:
                writer.delete([f"p{i - 1}a", f"p{i - 1}b"])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not problems, problems[:3]
    assert reader_side.stats()["documents"] == 2 + 2 * 10 - 2 * 3
