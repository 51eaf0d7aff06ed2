"""A slow embedding does not hold the collection's write lock (issue 10, point 6).

Before: a 3.3 MB document held the lock for its whole embedding (185 s) and a small upsert
meanwhile got WriterBusy after 30 s. Now the lock covers only the commit.
"""
# ruff: noqa: F811  (pytest fixtures imported from retrieval_fixtures are redefined as arguments)

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from retrieval_fixtures import EMBEDDER, CountingEmbedder, embedder, settings  # noqa: F401

from ragtune.retrieval import Document, Library


class GatedEmbedder(CountingEmbedder):
    """Blocks while embedding any text that contains 'slow' until the test opens the gate."""

    def __init__(self, inner: CountingEmbedder):
        super().__init__(inner.inner)
        self.started = threading.Event()
        self.gate = threading.Event()

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        if any("slow" in t for t in texts):
            self.started.set()
            assert self.gate.wait(30), "the test never opened the gate"
        return super()._encode(texts)


def test_a_writer_embedding_does_not_block_another_writer(tmp_path: Path, embedder: CountingEmbedder) -> None:
    gated = GatedEmbedder(embedder)
    lib = Library(tmp_path, settings(lock_timeout=2.0), embedders={EMBEDDER: gated})
    coll = lib.create("kb")
    errors: list[BaseException] = []

    def slow_writer() -> None:
        try:
            coll.upsert([Document("big", "a slow document about granite quarries")])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    worker = threading.Thread(target=slow_writer)
    worker.start()
    try:
        assert gated.started.wait(30)
        # The slow writer is embedding; a small write commits at once (lock_timeout is 2 s).
        coll.upsert([Document("small", "a quick note about tides")])
        assert coll.get("small").text == "a quick note about tides"
    finally:
        gated.gate.set()
        worker.join(60)
    assert not errors, errors
    assert coll.get("big").text.startswith("a slow document")
    assert {h.document_id for h in coll.search("granite quarries", mode="sparse")} == {"big"}
    lib.close()


def test_a_document_changed_meanwhile_is_embedded_under_the_lock(
    tmp_path: Path, embedder: CountingEmbedder
) -> None:
    """The pre-lock plan can go stale: a document unchanged when planned but rewritten by another
    writer before the commit is still written (and embedded) correctly."""
    lib = Library(tmp_path, settings(), embedders={EMBEDDER: embedder})
    coll = lib.create("kb")
    doc = Document("d", "first version of the text")
    coll.upsert([doc])
    original = coll._existing_hashes

    def stale(conn, ids):  # noqa: ANN001, ANN202 - the first (pre-lock) read sees the old state
        coll._existing_hashes = original  # type: ignore[method-assign]
        coll.upsert([Document("d", "second version, written by someone else")])
        return {"d": __import__("ragtune.retrieval.collection", fromlist=["content_hash"]).content_hash(doc)}

    coll._existing_hashes = stale  # type: ignore[method-assign]
    result = coll.upsert([doc])
    assert result.updated == ["d"] and coll.get("d").text == "first version of the text"
    assert [h.document_id for h in coll.search("first version", mode="sparse")] == ["d"]
    lib.close()
