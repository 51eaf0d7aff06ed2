"""Collections end to end: real SQLite in tmp_path, real FAISS, the real MiniLM embedder."""
# ruff: noqa: F811  (pytest fixtures imported from retrieval_fixtures are redefined as arguments)

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import filelock
import pytest
from retrieval_fixtures import EMBEDDER, FIXTURES, CountingEmbedder, embedder, library, settings  # noqa: F401

from ragtune.core.errors import (
    CollectionExists,
    CollectionNotFound,
    DimensionMismatch,
    DocumentNotFound,
    InvalidDocument,
    InvalidFilter,
    RagtuneError,
    WriterBusy,
)
from ragtune.retrieval import Document, Library
from ragtune.retrieval.ingest import load_beir


def corpus() -> list[Document]:
    return list(load_beir(FIXTURES / "beir" / "corpus.jsonl"))


def snapshot(c) -> tuple:  # everything a failed batch must leave untouched
    docs = c.list_documents(limit=1000)
    return docs, {k: v for k, v in c.stats().items() if k not in ("bytes_on_disk",)}


def test_upsert_get_list_search(library: Library) -> None:
    c = library.create("kb")
    result = c.upsert(corpus())
    assert len(result.added) == 16 and not result.updated and not result.unchanged
    doc = c.get("d4")
    assert doc.title == "Sourdough bread" and doc.metadata["topic"] == "other"
    assert [d.id for d in c.list_documents(offset=2, limit=3)] == ["d3", "d4", "d5"]
    for mode in ("dense", "sparse", "hybrid"):
        hits = c.search("wild yeast starter for bread", k=3, mode=mode)
        assert hits[0].document_id == "d4", mode
        assert hits[0].chunk_id == "d4#0" and hits[0].text == doc.text[hits[0].start : hits[0].end]
    stats = c.stats()
    assert stats["documents"] == 16 and stats["chunks"] == stats["vectors"] == stats["fts_rows"] == 16
    assert stats["sparse_chunks"] == 16
    assert stats["consistent"] and c.check()


def test_search_with_metadata_filter(library: Library) -> None:
    c = library.create("kb")
    c.upsert(corpus())
    for mode in ("dense", "sparse", "hybrid"):
        hits = c.search("coffee and a wing", k=10, mode=mode, filter={"topic": "aero"})
        assert hits and {h.document_id for h in hits} <= {"d1", "d2", "d3"}, mode
    assert c.search("wing", filter={"topic": {"$in": ["nothing"]}}) == []
    with pytest.raises(InvalidFilter, match="unknown operator"):
        c.search("wing", filter={"topic": {"$like": "a"}})


def test_unchanged_documents_are_not_embedded_again(library: Library, embedder: CountingEmbedder) -> None:
    c = library.create("kb")
    c.upsert(corpus())
    first = len(embedder.embedded)
    result = c.upsert(corpus())
    assert len(result.unchanged) == 16 and len(embedder.embedded) == first
    # metadata-only change: an update, but the chunk text is stored already -> no embedding
    d1 = c.get("d1")
    result = c.upsert([Document(d1.id, d1.text, d1.title, d1.source, {**d1.metadata, "topic": "x"})])
    assert result.updated == ["d1"] and len(embedder.embedded) == first
    assert c.search("lift and drag", filter={"topic": "x"}, mode="dense")[0].document_id == "d1"


def test_changed_text_reembeds_only_changed_chunks(library: Library, embedder: CountingEmbedder) -> None:
    c = library.create("kb", chunk_tokens=32, chunk_overlap=0)
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


def test_delete_and_delete_where(library: Library) -> None:
    c = library.create("kb")
    c.upsert(corpus())
    assert c.delete(["d1", "missing"]) == 1
    assert c.delete_where({"topic": "aero"}) == 2
    assert c.delete([]) == 0
    with pytest.raises(DocumentNotFound):
        c.get("d1")
    assert all(h.document_id not in ("d1", "d2", "d3") for h in c.search("wing stall aircraft", k=20))
    with pytest.raises(InvalidFilter, match="empty filter"):
        c.delete_where({})
    stats = c.stats()
    assert stats["documents"] == 13 and stats["consistent"]


def test_library_names_open_drop(library: Library, tmp_path: Path) -> None:
    a = library.create("a")
    library.create("b", index_type="hnsw")
    assert library.names() == ["a", "b"]
    assert library.open("a") is a
    with pytest.raises(CollectionExists):
        library.create("a")
    with pytest.raises(RagtuneError, match="bad collection name"):
        library.create("../evil")
    with pytest.raises(RagtuneError, match="index_type"):
        library.create("c", index_type="annoy")
    with pytest.raises(RagtuneError, match="chunk_tokens=1000 exceeds"):
        library.create("c", chunk_tokens=1000)
    with pytest.raises(RagtuneError, match="chunk_overlap"):
        library.create("c", chunk_tokens=64, chunk_overlap=64)
    library.drop("a")
    assert library.names() == ["b"]
    with pytest.raises(CollectionNotFound, match="ragtune collections create nope"):
        library.open("nope")
    with pytest.raises(CollectionNotFound):
        library.drop("a")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (Document("", "text"), "non-empty string id"),
        (Document("x", "   \n"), "has no text"),
        (Document("x", "y" * 5001), "limit is 5,000"),
        (Document("x", "text", metadata={"f": {1, 2}}), "metadata is not JSON"),
        (Document("x", "text", title=3), "title must be a string"),  # type: ignore[arg-type]
        (Document("x", "text", metadata=[1]), "metadata must be a JSON object"),  # type: ignore[arg-type]
        (Document("d1", "a duplicate id in the batch"), "appears twice"),
    ],
)
def test_bad_documents_leave_the_collection_as_it_was(
    tmp_path: Path, embedder: CountingEmbedder, bad: Document, message: str
) -> None:
    lib = Library(tmp_path, settings(max_document_chars=5000), embedders={EMBEDDER: embedder})
    c = lib.create("kb")
    c.upsert(corpus()[:3])
    before = snapshot(c)
    good = Document("d1", "changed text that must not land")
    with pytest.raises(InvalidDocument, match=message):
        c.upsert([good, Document("new", "fine"), bad])
    assert snapshot(c) == before
    lib.close()


def test_a_failing_embedder_leaves_the_collection_as_it_was(
    library: Library, embedder: CountingEmbedder
) -> None:
    c = library.create("kb")
    c.upsert(corpus()[:3])
    before = snapshot(c)

    def boom(texts):  # noqa: ANN001
        raise RuntimeError("embedder crashed")

    embedder._encode = boom  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        c.upsert([Document("new", "brand new text"), Document("d1", "replacement")])
    assert snapshot(c) == before


def test_snapshots_are_rebuilt_from_the_store_without_embedding(
    tmp_path: Path, embedder: CountingEmbedder
) -> None:
    lib = Library(tmp_path, settings(), embedders={EMBEDDER: embedder})
    c = lib.create("kb")
    c.upsert(corpus())
    expected = {m: [h.chunk_id for h in c.search("volcano lava", k=5, mode=m)] for m in ("dense", "sparse")}
    lib.close()
    manifest = json.loads((tmp_path / "kb" / "manifest.json").read_text())
    assert manifest["vectors"] == 16 and manifest["embedder"] == EMBEDDER and manifest["dimension"] == 384
    assert manifest["sparse_postings"] > 16
    for damage in ("delete", "garbage", "stale"):
        for name in ("vectors.faiss", "sparse.npz"):
            if damage == "delete":
                (tmp_path / "kb" / name).unlink()
            elif damage == "garbage":
                (tmp_path / "kb" / name).write_bytes(b"not a snapshot")
        if damage == "stale":  # snapshots older than the store: delete a document behind their back
            conn = sqlite3.connect(tmp_path / "kb" / "store.sqlite")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("DELETE FROM chunks WHERE doc_id = 'd16'")
            conn.execute("DELETE FROM documents WHERE id = 'd16'")
            conn.commit()
            conn.close()
            expected = {m: [e for e in ids if not e.startswith("d16#")] for m, ids in expected.items()}
        embedder.embedded.clear()
        lib = Library(tmp_path, settings(), embedders={EMBEDDER: embedder})
        c = lib.open("kb")
        for mode, want in expected.items():
            got = [h.chunk_id for h in c.search("volcano lava", k=5, mode=mode)]
            assert got[: len(want)] == want[: len(got)], (damage, mode)
        assert c.stats()["consistent"], damage
        assert embedder.embedded == ["volcano lava"]  # the query only; no document re-embedded
        lib.close()


@pytest.mark.parametrize(("precision", "tolerance"), [("fp16", 2e-3), ("bf16", 1e-2)])
def test_half_vectors_rank_as_fp32_and_a_precision_change_rebuilds_without_embedding(
    tmp_path: Path, embedder: CountingEmbedder, precision: str, tolerance: float
) -> None:
    lib = Library(tmp_path, settings(vector_precision="fp32"), embedders={EMBEDDER: embedder})
    c = lib.create("kb")
    c.upsert(corpus())
    queries = ["volcano lava", "ocean tides and the moon", "ancient roman roads"]
    want = {q: [(h.chunk_id, h.score) for h in c.search(q, k=8, mode="dense")] for q in queries}
    lib.close()
    embedder.embedded.clear()
    lib = Library(tmp_path, settings(vector_precision=precision), embedders={EMBEDDER: embedder})
    c = lib.open("kb")
    for q in queries:
        got = [(h.chunk_id, h.score) for h in c.search(q, k=8, mode="dense")]
        assert [i for i, _ in got] == [i for i, _ in want[q]], q
        assert max(abs(a[1] - b[1]) for a, b in zip(got, want[q], strict=True)) < tolerance
    assert embedder.embedded == queries  # the queries only: rebuilt from the stored embeddings
    assert c.stats()["consistent"]
    c.delete(["d1"])  # deletes work on the half-precision index too
    assert all(not h.chunk_id.startswith("d1#") for h in c.search("volcano lava", k=16, mode="dense"))
    lib.close()
    manifest = json.loads((tmp_path / "kb" / "manifest.json").read_text())
    assert manifest["state"] == {"precision": precision}


class Projected(CountingEmbedder):
    """The real embedder cut to its first `dim` dimensions: stands in for another model."""

    def __init__(self, inner: CountingEmbedder, dim: int):
        super().__init__(inner.inner)
        self.id, self.dimension = "small", dim

    def _encode(self, texts):  # noqa: ANN001, ANN202
        return super()._encode(texts)[:, : self.dimension]


def test_dimension_mismatch_is_refused(tmp_path: Path, embedder: CountingEmbedder) -> None:
    lib = Library(tmp_path, settings(), embedders={"small": Projected(embedder, 128)})
    lib.create("kb", embedder="small").upsert(corpus()[:2])
    assert lib.open("kb").stats()["dimension"] == 128
    lib.close()
    # the folder behind "small" now holds a model with another dimension
    lib = Library(tmp_path, settings(), embedders={"small": Projected(embedder, 384)})
    c = lib.open("kb")
    before = snapshot(c)
    with pytest.raises(DimensionMismatch, match="holds 128-dimensional vectors"):
        c.search("anything")
    with pytest.raises(DimensionMismatch):
        c.upsert([Document("z", "new")])
    assert snapshot(c) == before
    lib.close()


def test_search_rejects_bad_arguments(library: Library) -> None:
    c = library.create("kb")
    c.upsert(corpus()[:2])
    with pytest.raises(RagtuneError, match="mode must be"):
        c.search("x", mode="fuzzy")
    with pytest.raises(RagtuneError, match="k must be"):
        c.search("x", k=0)
    with pytest.raises(RagtuneError, match="query is empty"):
        c.search("  ")
    assert c.search("??", mode="sparse") == []


def test_second_writer_waits_then_gets_writer_busy(tmp_path: Path, embedder: CountingEmbedder) -> None:
    lib = Library(tmp_path, settings(lock_timeout=0.3), embedders={EMBEDDER: embedder})
    c = lib.create("kb")
    c.upsert(corpus()[:2])
    other = filelock.FileLock(tmp_path / "kb" / "write.lock")  # another fd: flock conflicts like a process
    with other.acquire(), pytest.raises(WriterBusy, match="another process"):
        c.upsert([Document("z", "new text")])
    assert c.search("new text", mode="sparse") == []
    c.upsert([Document("z", "new text")])  # the lock is free again
    assert c.get("z").text == "new text"
    lib.close()


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_searches_never_see_a_torn_write(tmp_path: Path, embedder: CountingEmbedder, index_type: str) -> None:
    """Each write adds or deletes a pair of one-chunk documents, so a consistent view always
    holds whole pairs; readers check that while the writer runs."""
    lib = Library(tmp_path, settings(), embedders={EMBEDDER: embedder})
    c = lib.create("kb", index_type=index_type)
    c.upsert(corpus()[:2])
    stop = threading.Event()
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            for mode in ("dense", "sparse"):
                hits = c.search("pair document marker", k=1000, mode=mode)
                ids = {h.document_id for h in hits if h.document_id.startswith("p")}
                for i in ids:
                    twin = i[:-1] + ("b" if i.endswith("a") else "a")
                    if mode == "dense" and twin not in ids:
                        problems.append(f"{mode}: {i} without {twin}")
            s = c.stats()
            if not s["consistent"]:
                problems.append(f"inconsistent stats {s}")

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(12):
            text = f"pair document marker number {i}"
            c.upsert([Document(f"p{i}a", text + " alpha"), Document(f"p{i}b", text + " beta")])
            if i % 3 == 2:
                c.delete([f"p{i - 1}a", f"p{i - 1}b"])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not problems, problems[:3]
    assert c.stats()["documents"] == 2 + 2 * 12 - 2 * 4
    lib.close()
