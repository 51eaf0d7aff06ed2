"""A collection: documents in a store (the truth) with two in-memory indexes derived from it.

The store is SQLite or PostgreSQL behind retrieval/storage.py's Protocols; nothing here speaks
SQL. The derived indexes are FAISS (dense vectors) and BM25 postings (retrieval/sparse.py,
FTS5's formula scored with numpy). Writes go store-first: a batch is validated, chunked and
embedded outside any lock that searches wait on, written in one store transaction, and only
then applied to the in-memory indexes. The commit and the index updates happen together under
the write side of a readers-writer lock; a search (retrieval/search.py) reads both indexes under
the read side and its hits' rows at the version it searched, so it sees the collection before
or after a write, never between. Across processes (or replicas) the store admits one writer per
collection; a search that finds the store newer than its indexes (someone else wrote) brings
them up to date first, following the store's change log where it keeps one, else diffing chunk ids.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from ragtune.core.errors import (
    DimensionMismatch,
    DocumentNotFound,
    EmbedderMismatch,
    InvalidDocument,
    InvalidFilter,
    RagtuneError,
    WriterBusy,
)
from ragtune.retrieval.chunking import Chunk, split_document
from ragtune.retrieval.derived import TOKENIZER, DerivedIndexes
from ragtune.retrieval.documents import content_hash, validate_document
from ragtune.retrieval.embedder import Embedder
from ragtune.retrieval.filters import compile_filter
from ragtune.retrieval.search import IndexSearch, query_vector, search_options
from ragtune.retrieval.settings import RetrievalSettings
from ragtune.retrieval.sparse import count, fts_text
from ragtune.retrieval.storage import DocumentStore, Txn
from ragtune.retrieval.types import Document, Hit, UpsertResult

Progress = Callable[[int], None]


class Collection:
    """Use through `Library.create` / `Library.open`; one object per collection per process."""

    def __init__(
        self, store: DocumentStore, settings: RetrievalSettings, embedder_of: Callable[[str], Embedder]
    ):
        self.store = store
        self.path = store.snapshot_dir  # None: no snapshots (the indexes are built from the store)
        self.name = store.name
        self.settings = settings
        self._embedder_of = embedder_of
        self._embedder: Embedder | None = None
        self.config = store.config
        self.index_type: str = self.config["index_type"]
        self.dimension: int = int(self.config["dimension"])
        self._write_mutex = threading.Lock()
        self._closed = False
        self._idx = DerivedIndexes(store, settings)
        self._search = IndexSearch(store, settings, self._idx)

    # -- embedder -----------------------------------------------------------------------
    @property
    def embedder(self) -> Embedder:
        """Loaded on first use: listing or deleting needs no model."""
        if self._embedder is None:
            embedder = self._embedder_of(self.config["embedder"])
            if embedder.dimension != self.dimension:
                raise DimensionMismatch(
                    f"collection {self.name!r} holds {self.dimension}-dimensional vectors but embedder "
                    f"{embedder.id!r} makes {embedder.dimension}; use the embedder it was built with "
                    "or re-create the collection"
                )
            built = self.config.get("embedder_fingerprint")
            if built and embedder.fingerprint and built != embedder.fingerprint:
                raise EmbedderMismatch(
                    f"collection {self.name!r} was embedded by {embedder.id!r} with weights {built}, "
                    f"but the embedder loaded now ({embedder.label}) has weights {embedder.fingerprint}: "
                    "its query vectors would not match the stored ones. Load the model the collection "
                    "was built with, or re-create the collection"
                )
            self._embedder = embedder
        return self._embedder

    # -- writing ------------------------------------------------------------------------
    @contextmanager
    def _writing(self) -> Iterator[Txn]:
        """The store's write lock and an open transaction, rolled back unless `_commit`ted."""
        timeout = self.settings.lock_timeout
        if self._closed:
            raise RagtuneError(f"collection {self.name!r} is closed")
        if not self._write_mutex.acquire(timeout=timeout if timeout > 0 else -1):
            raise WriterBusy(f"collection {self.name!r}: another thread kept writing for {timeout:g} s")
        try:
            with self.store.writing(timeout) as txn:
                if txn.version() != self._idx.version:
                    self._idx.catch_up(txn)
                yield txn
                self._idx.rebuild_if_needed()
                if self.store.snapshot_while_writing:
                    self._idx.save_snapshot()
        finally:
            self._write_mutex.release()

    def _commit(
        self,
        txn: Txn,
        remove: np.ndarray,
        add_ids: np.ndarray,
        add_vecs: np.ndarray,
        add_texts: Sequence[str] = (),
    ) -> None:
        """Commit the open transaction and apply the same change to the in-memory indexes, as
        one step for readers. `add_texts` are the added chunks' texts as FTS5 holds them."""
        version = txn.bump_version(add_ids, remove)
        counted = count(TOKENIZER, add_ids, add_texts)  # before the lock: searches go on
        with self._idx.rw.write():
            txn.commit()
            try:
                self._idx.vectors.remove(remove)
                self._idx.vectors.add(add_ids, add_vecs)
                self._idx.sparse.remove(remove)
                self._idx.sparse.add(counted)
                self._idx.version = version
            except Exception:
                self._idx.version = -1  # the next search re-syncs from the store
                raise

    def upsert(self, docs: Sequence[Document], *, progress: Progress | None = None) -> UpsertResult:
        """Add or replace documents, all or nothing. Unchanged documents cost a hash lookup;
        chunks whose text is already stored reuse their embedding."""
        docs = list(docs)
        seen: set[str] = set()
        for doc in docs:
            validate_document(doc, self.settings.max_document_chars)
            if doc.id in seen:
                raise InvalidDocument(f"document id {doc.id!r} appears twice in one batch", param="id")
            seen.add(doc.id)
        hashes = {doc.id: content_hash(doc) for doc in docs}
        if not docs:
            return UpsertResult([], [], [])
        # Chunk and embed before taking the write lock, which then covers only the commit: a large
        # document embeds for minutes, and other writers must not wait on that.
        # Short read transactions only: a pooled database connection is not held while embedding.
        with self.store.reading() as reader:
            before = self._existing_hashes(reader, list(hashes))
        chunks = self._chunk([d for d in docs if before.get(d.id) != hashes[d.id]])
        planned = [c for cs in chunks.values() for c in cs]
        with self.store.reading() as reader:
            stored = reader.embeddings_by_hash([c.hash for c in planned])
        vectors = self._vectors_for(stored, planned, progress)
        with self._writing() as conn:
            existing = self._existing_hashes(conn, list(hashes))
            changed = [d for d in docs if existing.get(d.id) != hashes[d.id]]
            unchanged = [d.id for d in docs if existing.get(d.id) == hashes[d.id]]
            if not changed:
                return UpsertResult([], [], unchanged)
            late = [d for d in changed if d.id not in chunks]  # another writer changed it meanwhile
            if late:
                chunks |= self._chunk(late)
                todo = [c for d in late for c in chunks[d.id]]
                stored = conn.embeddings_by_hash([c.hash for c in todo])
                vectors |= self._vectors_for(stored, todo, progress)
            now = time.time()
            old = conn.chunk_ids_of([d.id for d in changed if d.id in existing])
            if len(old):
                conn.delete_chunks(old)
            new_ids = conn.add_documents(changed, hashes, chunks, vectors, now)
            new_vecs = [vectors[c.hash] for d in changed for c in chunks[d.id]]
            new_texts = [fts_text(d.title, c.text) for d in changed for c in chunks[d.id]]
            self._commit(conn, old, np.asarray(new_ids, dtype=np.int64), np.vstack(new_vecs), new_texts)
        added = [d.id for d in changed if d.id not in existing]
        updated = [d.id for d in changed if d.id in existing]
        return UpsertResult(added, updated, unchanged)

    def _chunk(self, docs: Sequence[Document]) -> dict[str, list[Chunk]]:
        out = {}
        for doc in docs:
            chunks = split_document(
                doc.text,
                doc.title,
                self.embedder,
                chunk_tokens=int(self.config["chunk_tokens"]),
                overlap=int(self.config["chunk_overlap"]),
            )
            if not chunks:
                raise InvalidDocument(f"document {doc.id!r} has no indexable text", param="text")
            out[doc.id] = chunks
        return out

    def _vectors_for(
        self, stored: dict[str, np.ndarray], chunks: Sequence[Chunk], progress: Progress | None
    ) -> dict[str, np.ndarray]:
        """Embeddings by chunk hash: `stored` ones reused, only new texts embedded."""
        vectors = dict(stored)
        todo: dict[str, Chunk] = {}
        for c in chunks:
            if c.hash not in vectors:
                todo.setdefault(c.hash, c)
        if progress is not None and len(chunks) > len(todo):
            progress(len(chunks) - len(todo))
        if todo:
            items = list(todo.values())
            embedded = self.embedder.embed(
                [c.embed_text for c in items],
                batch_size=self.settings.embed_batch_size,
                lengths=[c.tokens for c in items],
                progress=progress,
            )
            if embedded.shape[1] != self.dimension:
                raise DimensionMismatch(
                    f"embedder made {embedded.shape[1]}-dimensional vectors; collection {self.name!r} "
                    f"holds {self.dimension}"
                )
            for c, vec in zip(items, embedded, strict=True):
                vectors[c.hash] = vec
        return vectors

    @staticmethod
    def _existing_hashes(txn: Txn, ids: Sequence[str]) -> dict[str, str]:
        return txn.content_hashes(ids)

    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by id; returns how many existed. Unknown ids are ignored."""
        if isinstance(ids, str):
            raise InvalidDocument("delete takes a list of ids, not one string", param="ids")
        ids = list(dict.fromkeys(ids))
        if not ids:
            return 0
        with self._writing() as txn:
            chunk_ids = txn.chunk_ids_of(ids)
            deleted = txn.delete_documents(ids)
            if not deleted:
                return 0  # rolled back: nothing changed
            self._commit(txn, chunk_ids, np.empty(0, np.int64), np.empty((0, self.dimension), np.float32))
        return deleted

    def delete_where(self, filter: dict[str, Any]) -> int:
        """Delete every document whose metadata matches `filter`."""
        if not filter:
            raise InvalidFilter("an empty filter matches every document; drop the collection instead")
        ids = list(self.metadata_where(filter))
        if not ids:
            with self.store.reading() as txn:
                txn.check_fields(filter, self.name)
        return self.delete(ids)

    # -- reading ------------------------------------------------------------------------
    @contextmanager
    def _reading(self) -> Iterator[Txn]:
        """A read transaction on a snapshot that the in-memory index matches. The store's
        connection is taken before the readers' lock: no one waits for a connection holding it."""
        if self._closed:
            raise RagtuneError(f"collection {self.name!r} is closed")
        for _ in range(5):
            with self.store.reading() as txn, self._idx.rw.read():
                if txn.version() == self._idx.version:  # the snapshot starts at this first read
                    yield txn
                    return
            self._idx.catch_up()
        raise WriterBusy(f"collection {self.name!r} changes faster than it can be searched; try again")

    def get(self, doc_id: str) -> Document:
        with self.store.reading() as txn:
            doc = txn.document(doc_id)
        if doc is None:
            raise DocumentNotFound(f"no document {doc_id!r} in collection {self.name!r}", param="id")
        return doc

    def list_documents(self, *, offset: int = 0, limit: int = 100) -> list[Document]:
        if offset < 0 or limit < 0:
            raise RagtuneError("offset and limit must be >= 0", param="offset" if offset < 0 else "limit")
        with self.store.reading() as txn:
            return txn.documents(offset, limit)

    def metadata_where(self, filter: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
        """id -> metadata of the documents matching `filter` (all when None)."""
        compile_filter(filter)  # a bad filter fails the same way whichever store is behind
        with self.store.reading() as txn:
            return txn.metadata_where(filter)

    def search(
        self,
        query: str,
        *,
        k: int | None = None,
        mode: str | None = None,
        filter: dict[str, Any] | None = None,
        fusion: str | None = None,
    ) -> list[Hit]:
        """The k best chunks for `query`. A hybrid search fuses the dense and BM25 candidates
        by `fusion` ('convex' or 'rrf', see retrieval/fusion.py). Options left None are the
        collection's retrieval settings (retrieval/search.py's `search_options`)."""
        opts = search_options(self.settings, k=k, mode=mode, fusion=fusion)
        if not isinstance(query, str) or not query.strip():
            raise RagtuneError("the query is empty", param="query")
        compile_filter(filter)  # validated before the query is embedded
        qvec = query_vector(self.embedder, query, opts.mode)
        if self._closed:
            raise RagtuneError(f"collection {self.name!r} is closed")
        return self._search.run(query, qvec, opts, filter)

    def nearest_scores(self, query_vector: np.ndarray, k: int) -> np.ndarray:
        """The k highest inner products (cosines) of a query vector with the collection's chunks,
        from the in-memory dense index as it stands (no store read: a search brings it up to
        date); what `model: auto` compares domains by (serving.routing)."""
        if self._closed:
            raise RagtuneError(f"collection {self.name!r} is closed")
        with self._idx.rw.read():
            scores, _ = self._idx.vectors.search(query_vector, k)
        return scores

    # -- bookkeeping ---------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self._reading() as txn:
            counts = txn.counts()
            vectors = self._idx.vectors.live
            tombstones = self._idx.vectors.tombstones
            memory = self._idx.vectors.memory_bytes()
            sparse_chunks = self._idx.sparse.live
            sparse_memory = self._idx.sparse.memory_bytes()
            version = self._idx.version
        disk = self.store.disk_bytes()
        return {
            "name": self.name,
            "documents": counts["documents"],
            "chunks": counts["chunks"],
            "vectors": vectors,
            "fts_rows": counts["fts_rows"],
            "sparse_chunks": sparse_chunks,
            "tombstones": tombstones,
            "consistent": counts["chunks"] == vectors == counts["fts_rows"] == sparse_chunks
            and counts["documents_without_chunks"] == 0,
            "index_type": self.index_type,
            "embedder": self.config["embedder"],
            "dimension": self.dimension,
            "chunk_tokens": self.config["chunk_tokens"],
            "chunk_overlap": self.config["chunk_overlap"],
            "store_version": version,
            "schema_version": self.store.schema_version(),
            "bytes_on_disk": disk,
            "index_memory_bytes": memory,
            "sparse_memory_bytes": sparse_memory,
        }

    def check(self) -> bool:
        """Full consistency check: stats agree and the FTS index matches its content table."""
        return bool(self.stats()["consistent"]) and self.store.check()

    def try_snapshot(self) -> bool:
        """Save the snapshot now if it is behind and no writer (thread or process) is busy."""
        if (
            self._closed
            or self.path is None
            or self._idx.version == self._idx.saved_version
            or not self._write_mutex.acquire(blocking=False)
        ):
            return False
        try:
            with self.store.snapshot_lock():
                return self._idx.save_snapshot(force=True)
        except WriterBusy:
            return False  # another process is writing; the next open re-syncs from the store
        finally:
            self._write_mutex.release()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.try_snapshot()
        finally:
            self._closed = True
            self.store.close()
