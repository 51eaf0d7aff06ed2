"""A collection: documents in SQLite (the truth) with two in-memory indexes derived from it.

The derived indexes are FAISS (dense vectors) and BM25 postings (retrieval/sparse.py, the FTS5
index's postings scored with numpy). Writes go store-first: a batch is validated, chunked and
embedded outside any lock that searches wait on, written in one SQLite transaction, and only
then applied to the in-memory indexes. The commit and the index updates happen together under
the write side of a readers-writer lock, and every search holds the read side for its whole run
with one SQLite read transaction, so a search sees the collection before or after a write,
never between. Across processes a file lock admits one writer; a search that finds the store
newer than its indexes (another process wrote) brings them up to date from the store first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, get_args

import filelock
import numpy as np

from retrieval.chunking import Chunk, split_document
from retrieval.embedder import Embedder
from retrieval.errors import (
    DimensionMismatch,
    DocumentNotFound,
    InvalidDocument,
    InvalidFilter,
    RagtuneError,
    WriterBusy,
)
from retrieval.filters import check_fields, compile_filter
from retrieval.fusion import FUSIONS, fuse
from retrieval.locks import RWLock
from retrieval.settings import RetrievalSettings, SearchMode
from retrieval.sparse import SparseIndex, Tokenizer, count, fts_text
from retrieval.store import Store, select_in, transaction
from retrieval.types import Document, Hit, UpsertResult
from retrieval.vectors import INDEX_TYPES, VectorIndex

STORE_FILE = "store.sqlite"
INDEX_FILE = "vectors.faiss"
SPARSE_FILE = "sparse.npz"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = "write.lock"
MANIFEST_FORMAT = 2
MAX_ID_CHARS = 1024
MAX_K = 1000

Progress = Callable[[int], None]
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ragtune-embed")
_TOKENIZER = Tokenizer()


def content_hash(doc: Document) -> str:
    payload = json.dumps([doc.text, doc.title, doc.source, doc.metadata], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


def validate_document(doc: Any, max_chars: int) -> None:
    if not isinstance(doc, Document):
        raise InvalidDocument(f"expected a Document, got {type(doc).__name__}")
    if not isinstance(doc.id, str) or not doc.id.strip():
        raise InvalidDocument("a document needs a non-empty string id", param="id")
    if len(doc.id) > MAX_ID_CHARS:
        raise InvalidDocument(f"document id is {len(doc.id)} characters; at most {MAX_ID_CHARS}", param="id")
    if not isinstance(doc.text, str) or not doc.text.strip():
        raise InvalidDocument(f"document {doc.id!r} has no text", param="text")
    if len(doc.text) > max_chars:
        raise InvalidDocument(
            f"document {doc.id!r} has {len(doc.text):,} characters; the limit is {max_chars:,} "
            "(split it, or raise RAGTUNE_RETRIEVAL__MAX_DOCUMENT_CHARS)",
            param="text",
        )
    for name in ("title", "source"):
        value = getattr(doc, name)
        if value is not None and not isinstance(value, str):
            raise InvalidDocument(f"document {doc.id!r}: {name} must be a string or null", param=name)
    if not isinstance(doc.metadata, dict):
        raise InvalidDocument(f"document {doc.id!r}: metadata must be a JSON object", param="metadata")
    try:
        json.dumps(doc.metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidDocument(f"document {doc.id!r}: metadata is not JSON: {exc}", param="metadata") from None


class Collection:
    """Use through `Library.create` / `Library.open`; one object per collection per process."""

    def __init__(self, path: Path, settings: RetrievalSettings, embedder_of: Callable[[str], Embedder]):
        self.path = path
        self.name = path.name
        self.settings = settings
        self._embedder_of = embedder_of
        self._embedder: Embedder | None = None
        self.store = Store(path / STORE_FILE)
        self.config = Store.meta(self.store.writer)
        self.index_type: str = self.config["index_type"]
        self.dimension: int = int(self.config["dimension"])
        self._rw = RWLock()
        self._write_mutex = threading.Lock()
        self._filelock = filelock.FileLock(path / LOCK_FILE, thread_local=False)
        self._version = -1
        self._saved_version = -1
        self._saved_at = 0.0
        self._closed = False
        self._load_indexes()

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
            self._embedder = embedder
        return self._embedder

    # -- the snapshots of the derived indexes -------------------------------------------
    def _load_indexes(self) -> None:
        """Load the snapshots if they match this store, else build them; then sync them to it."""
        cls = INDEX_TYPES[self.index_type]
        vectors: VectorIndex | None = None
        sparse: SparseIndex | None = None
        try:
            manifest = json.loads((self.path / MANIFEST_FILE).read_text())
            expected = {
                "format": MANIFEST_FORMAT,
                "store_id": self.config["store_id"],
                "embedder": self.config["embedder"],
                "dimension": self.dimension,
                "index_type": self.index_type,
            }
            if all(manifest.get(k) == v for k, v in expected.items()):
                vectors = cls.load(self.path / INDEX_FILE, self.dimension, self.settings, manifest["state"])
                if vectors.ntotal != manifest["vectors"]:
                    vectors = None
            if manifest.get("sparse_postings") is not None:
                sparse = SparseIndex.load(self.path / SPARSE_FILE, _TOKENIZER)
                if sparse.postings != manifest["sparse_postings"]:
                    sparse = None
        except (OSError, ValueError, KeyError, RuntimeError):
            pass  # missing, stale or unreadable: the store has everything to rebuild them
        conn = self.store.reader()
        with transaction(conn):
            stored = Store.chunk_ids(conn)
            if vectors is None:
                ids, vecs = Store.embeddings(conn, None, self.dimension)
                vectors = cls.build(self.dimension, self.settings, ids, vecs)
            else:
                self._sync_vectors(vectors, conn, stored)
            if sparse is None:
                self._sparse = SparseIndex.from_store(conn, _TOKENIZER, stored)
            else:
                self._sparse = sparse
                self._sync_sparse(conn, stored)
            self._version = Store.version(conn)
        self._vectors = vectors
        self._rebuild_if_needed()

    # Chunk ids are never reused and a chunk never changes, so comparing id sets is exact: each
    # index adds what it lacks and removes what the store no longer has.
    def _sync_vectors(self, vectors: VectorIndex, conn: sqlite3.Connection, stored: np.ndarray) -> None:
        """Make the FAISS index hold exactly the `stored` chunk ids (in the caller's read transaction)."""
        missing = np.setdiff1d(stored, vectors.ids(), assume_unique=True)
        if len(missing):
            ids, vecs = Store.embeddings(conn, missing.tolist(), self.dimension)
            vectors.add(ids, vecs)
        vectors.remove(np.setdiff1d(vectors.live_ids(), stored, assume_unique=True))

    def _sync_sparse(self, conn: sqlite3.Connection, stored: np.ndarray) -> None:
        missing = np.setdiff1d(stored, self._sparse.ids(), assume_unique=True)
        try:
            self._sparse.add(count(_TOKENIZER, missing, Store.fts_texts(conn, missing.tolist())))
        except ValueError:  # ids below the snapshot's (cannot happen with AUTOINCREMENT): rebuild
            self._sparse = SparseIndex.from_store(conn, _TOKENIZER, stored)
        self._sparse.remove(np.setdiff1d(self._sparse.live_ids(), stored, assume_unique=True))

    def _catch_up(self) -> None:
        """Another process wrote: bring the in-memory indexes to the store's current version."""
        with self._rw.write():
            conn = self.store.reader()
            with transaction(conn):
                version = Store.version(conn)
                if version != self._version:
                    stored = Store.chunk_ids(conn)
                    self._sync_vectors(self._vectors, conn, stored)
                    self._sync_sparse(conn, stored)
                    self._version = version

    def _rebuild_if_needed(self) -> None:
        """Compaction (HNSW tombstones) or (re)training (IVF) from the stored embeddings, and
        merging of the BM25 segments. Built beside the live index, swapped in at the end."""
        if self._sparse.needs_merge:
            version = self._version
            merged = self._sparse.merged()
            with self._rw.write():
                if self._version == version:
                    self._sparse = merged
        if not self._vectors.needs_rebuild:
            return
        conn = self.store.reader()
        with transaction(conn):
            version = Store.version(conn)
            ids, vecs = Store.embeddings(conn, None, self.dimension)
        fresh = INDEX_TYPES[self.index_type].build(self.dimension, self.settings, ids, vecs)
        with self._rw.write():
            if self._version in (version, -1):
                self._vectors, self._version = fresh, version

    def save_snapshot(self, *, force: bool = False) -> bool:
        """Write the FAISS and BM25 files and the manifest (each atomically). Callers hold the
        write file lock. The manifest goes last; on open, each index is checked against the
        store by chunk id anyway, so a crash between the files costs a sync, not correctness."""
        if self._version == self._saved_version:
            return False
        if not force and time.monotonic() - self._saved_at < self.settings.snapshot_interval:
            return False
        with self._rw.read():
            tmp = self.path / f"{INDEX_FILE}.tmp"
            self._vectors.save(tmp)
            os.replace(tmp, self.path / INDEX_FILE)
            tmp = self.path / f"{SPARSE_FILE}.tmp"
            self._sparse.save(tmp)
            os.replace(tmp, self.path / SPARSE_FILE)
            manifest = {
                "format": MANIFEST_FORMAT,
                "store_id": self.config["store_id"],
                "store_version": self._version,
                "embedder": self.config["embedder"],
                "dimension": self.dimension,
                "index_type": self.index_type,
                "vectors": self._vectors.ntotal,
                "live_vectors": self._vectors.live,
                "state": self._vectors.state(),
                "sparse_postings": self._sparse.postings,
                "saved_at": time.time(),
            }
            tmp_manifest = self.path / f"{MANIFEST_FILE}.tmp"
            tmp_manifest.write_text(json.dumps(manifest, indent=2))
            os.replace(tmp_manifest, self.path / MANIFEST_FILE)
            self._saved_version = manifest["store_version"]
        self._saved_at = time.monotonic()
        return True

    # -- writing ------------------------------------------------------------------------
    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        timeout = self.settings.lock_timeout
        if self._closed:
            raise RagtuneError(f"collection {self.name!r} is closed")
        if not self._write_mutex.acquire(timeout=timeout if timeout > 0 else -1):
            raise WriterBusy(f"collection {self.name!r}: another thread kept writing for {timeout:g} s")
        try:
            try:
                self._filelock.acquire(timeout=timeout)
            except filelock.Timeout:
                raise WriterBusy(
                    f"collection {self.name!r} is being written by another process "
                    f"(lock {self.path / LOCK_FILE}); waited {timeout:g} s. Try again when it finishes, "
                    "or raise RAGTUNE_RETRIEVAL__LOCK_TIMEOUT"
                ) from None
            try:
                if Store.version(self.store.writer) != self._version:
                    self._catch_up()
                yield self.store.writer
                self._rebuild_if_needed()
                self.save_snapshot()
            finally:
                self._filelock.release()
        finally:
            self._write_mutex.release()

    def _commit(
        self,
        conn: sqlite3.Connection,
        remove: np.ndarray,
        add_ids: np.ndarray,
        add_vecs: np.ndarray,
        add_texts: Sequence[str] = (),
    ) -> None:
        """COMMIT the open transaction and apply the same change to the in-memory indexes, as
        one step for readers. `add_texts` are the added chunks' texts as FTS5 holds them."""
        version = Store.bump_version(conn)
        counted = count(_TOKENIZER, add_ids, add_texts)  # before the lock: searches go on
        with self._rw.write():
            conn.execute("COMMIT")
            try:
                self._vectors.remove(remove)
                self._vectors.add(add_ids, add_vecs)
                self._sparse.remove(remove)
                self._sparse.add(counted)
                self._version = version
            except Exception:
                self._version = -1  # the next search re-syncs from the store
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
        reader = self.store.reader()
        before = self._existing_hashes(reader, list(hashes))
        chunks = self._chunk([d for d in docs if before.get(d.id) != hashes[d.id]])
        vectors = self._vectors_for(reader, [c for cs in chunks.values() for c in cs], progress)
        with self._writing() as conn:
            existing = self._existing_hashes(conn, list(hashes))
            changed = [d for d in docs if existing.get(d.id) != hashes[d.id]]
            unchanged = [d.id for d in docs if existing.get(d.id) == hashes[d.id]]
            if not changed:
                return UpsertResult([], [], unchanged)
            late = [d for d in changed if d.id not in chunks]  # another writer changed it meanwhile
            if late:
                chunks |= self._chunk(late)
                vectors |= self._vectors_for(conn, [c for d in late for c in chunks[d.id]], progress)
            now = time.time()
            conn.execute("BEGIN IMMEDIATE")
            try:
                old = self._chunk_ids_of(conn, [d.id for d in changed if d.id in existing])
                if len(old):
                    conn.executemany("DELETE FROM chunks WHERE id = ?", [(int(i),) for i in old])
                new_ids: list[int] = []
                new_vecs: list[np.ndarray] = []
                new_texts: list[str] = []
                for doc in changed:
                    conn.execute(
                        "INSERT INTO documents(id, title, source, metadata, text, content_hash, created_at, "
                        "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                        "title=excluded.title, source=excluded.source, metadata=excluded.metadata, "
                        "text=excluded.text, content_hash=excluded.content_hash, "
                        "updated_at=excluded.updated_at",
                        (
                            doc.id,
                            doc.title,
                            doc.source,
                            json.dumps(doc.metadata, ensure_ascii=False),
                            doc.text,
                            hashes[doc.id],
                            now,
                            now,
                        ),
                    )
                    for chunk in chunks[doc.id]:
                        vec = vectors[chunk.hash]
                        cur = conn.execute(
                            "INSERT INTO chunks(doc_id, seq, title, text, start, end, hash, embedding) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (
                                doc.id,
                                chunk.seq,
                                doc.title,
                                chunk.text,
                                chunk.start,
                                chunk.end,
                                chunk.hash,
                                vec.tobytes(),
                            ),
                        )
                        new_ids.append(int(cur.lastrowid or 0))
                        new_vecs.append(vec)
                        new_texts.append(fts_text(doc.title, chunk.text))
                self._commit(conn, old, np.asarray(new_ids, dtype=np.int64), np.vstack(new_vecs), new_texts)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
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
        self, conn: sqlite3.Connection, chunks: Sequence[Chunk], progress: Progress | None
    ) -> dict[str, np.ndarray]:
        """Embeddings by chunk hash: stored ones reused, only new texts embedded."""
        stored = Store.embeddings_by_hash(conn, [c.hash for c in chunks])
        vectors = {h: np.frombuffer(b, dtype=np.float32) for h, b in stored.items()}
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
    def _existing_hashes(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, str]:
        return dict(select_in(conn, "SELECT id, content_hash FROM documents WHERE id IN ({marks})", ids))

    @staticmethod
    def _chunk_ids_of(conn: sqlite3.Connection, doc_ids: Sequence[str]) -> np.ndarray:
        rows = select_in(conn, "SELECT id FROM chunks WHERE doc_id IN ({marks})", doc_ids)
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def delete(self, ids: Sequence[str]) -> int:
        """Delete documents by id; returns how many existed. Unknown ids are ignored."""
        if isinstance(ids, str):
            raise InvalidDocument("delete takes a list of ids, not one string", param="ids")
        ids = list(dict.fromkeys(ids))
        if not ids:
            return 0
        with self._writing() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                chunk_ids = self._chunk_ids_of(conn, ids)
                deleted = 0
                for lo in range(0, len(ids), 900):
                    part = ids[lo : lo + 900]
                    marks = ",".join("?" * len(part))
                    conn.execute(f"DELETE FROM chunks WHERE doc_id IN ({marks})", part)
                    deleted += conn.execute(f"DELETE FROM documents WHERE id IN ({marks})", part).rowcount
                if not deleted:
                    conn.execute("ROLLBACK")
                    return 0
                self._commit(
                    conn, chunk_ids, np.empty(0, np.int64), np.empty((0, self.dimension), np.float32)
                )
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return deleted

    def delete_where(self, filter: dict[str, Any]) -> int:
        """Delete every document whose metadata matches `filter`."""
        if not filter:
            raise InvalidFilter("an empty filter matches every document; drop the collection instead")
        ids = list(self.metadata_where(filter))
        if not ids:
            check_fields(self.store.reader(), filter, self.name)
        return self.delete(ids)

    # -- reading ------------------------------------------------------------------------
    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A read transaction on a snapshot that the in-memory index matches."""
        if self._closed:
            raise RagtuneError(f"collection {self.name!r} is closed")
        conn = self.store.reader()
        for _ in range(5):
            with self._rw.read():
                conn.execute("BEGIN")
                try:
                    if Store.version(conn) == self._version:
                        yield conn
                        return
                finally:
                    conn.execute("COMMIT")
            self._catch_up()
        raise WriterBusy(f"collection {self.name!r} changes faster than it can be searched; try again")

    def get(self, doc_id: str) -> Document:
        conn = self.store.reader()
        row = conn.execute(
            "SELECT id, text, title, source, metadata FROM documents WHERE id = ?", (doc_id,)
        ).fetchone()
        if row is None:
            raise DocumentNotFound(f"no document {doc_id!r} in collection {self.name!r}", param="id")
        return Document(row[0], row[1], row[2], row[3], json.loads(row[4]))

    def list_documents(self, *, offset: int = 0, limit: int = 100) -> list[Document]:
        if offset < 0 or limit < 0:
            raise RagtuneError("offset and limit must be >= 0", param="offset" if offset < 0 else "limit")
        rows = self.store.reader().execute(
            "SELECT id, text, title, source, metadata FROM documents ORDER BY rowid LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [Document(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def metadata_where(self, filter: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
        """id -> metadata of the documents matching `filter` (all when None)."""
        where, params = compile_filter(filter)
        rows = self.store.reader().execute(f"SELECT d.id, d.metadata FROM documents d WHERE {where}", params)
        return {r[0]: json.loads(r[1]) for r in rows}

    def search(
        self,
        query: str,
        *,
        k: int = 5,
        mode: str = "hybrid",
        filter: dict[str, Any] | None = None,
        fusion: str | None = None,
    ) -> list[Hit]:
        """The k best chunks for `query`. A hybrid search fuses the dense and BM25 candidates
        by `fusion` ('convex' or 'rrf'; None: the collection's settings, see retrieval/fusion.py)."""
        fusion = fusion or self.settings.fusion
        if fusion not in FUSIONS:
            raise RagtuneError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}", param="fusion")
        if mode not in get_args(SearchMode):
            raise RagtuneError(
                f"mode must be one of {', '.join(get_args(SearchMode))}, got {mode!r}", param="mode"
            )
        if not isinstance(k, int) or not 1 <= k <= MAX_K:
            raise RagtuneError(f"k must be an integer from 1 to {MAX_K}, got {k!r}", param="k")
        if not isinstance(query, str) or not query.strip():
            raise RagtuneError("the query is empty", param="query")
        where, params = compile_filter(filter)
        embedder = self.embedder
        qvec: np.ndarray | Future[np.ndarray] | None = None
        if mode == "dense":
            qvec = embedder.embed_query(query)
        elif mode == "hybrid":
            # The query embedding (the slow part) runs beside the BM25 query; it reads no store.
            qvec = embedder.cached_query(query)
            if qvec is None:
                qvec = _POOL.submit(embedder.embed_query, query)
        depth = k if mode != "hybrid" else max(k, self.settings.candidates)
        terms = _TOKENIZER.query_terms(query) if mode != "dense" else []
        with self._reading() as conn:
            allowed = None
            if filter:
                sql = f"SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE {where}"
                allowed = np.fromiter((r[0] for r in conn.execute(sql, params)), dtype=np.int64)
                if not len(allowed):
                    check_fields(conn, filter, self.name)  # a typo is an error, not "no hits"
            dense: list[tuple[int, float]] = []
            sparse = self._sparse.search(terms, depth, allowed) if terms else []
            if isinstance(qvec, Future):
                qvec = qvec.result()
            if qvec is not None:
                scores, ids = self._vectors.search(qvec, depth, allowed)
                dense = list(zip(ids.tolist(), scores.tolist(), strict=True))
            if mode == "dense":
                ranked = dense[:k]
            elif mode == "sparse":
                ranked = sparse[:k]
            else:
                s = self.settings
                ranked = fuse(dense, sparse, fusion, rrf_k=s.rrf_k, alpha=s.fusion_weight)[:k]
            return self._hits(conn, ranked)

    def _hits(self, conn: sqlite3.Connection, ranked: Sequence[tuple[int, float]]) -> list[Hit]:
        if not ranked:
            return []
        marks = ",".join("?" * len(ranked))
        rows = {
            r[0]: r
            for r in conn.execute(
                "SELECT c.id, c.doc_id, c.seq, c.text, c.start, c.end, d.title, d.source, d.metadata "
                f"FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE c.id IN ({marks})",
                [i for i, _ in ranked],
            )
        }
        hits = []
        for chunk_id, score in ranked:
            r = rows.get(chunk_id)
            if r is None:  # cannot happen while index and store agree; skip rather than fail a search
                continue
            hits.append(
                Hit(r[1], f"{r[1]}#{r[2]}", r[6], r[7], float(score), r[3], r[4], r[5], json.loads(r[8]))
            )
        return hits

    # -- bookkeeping ---------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self._reading() as conn:
            counts = Store.counts(conn)
            vectors = self._vectors.live
            tombstones = len(self._vectors.dead)
            memory = self._vectors.memory_bytes()
            sparse_chunks = self._sparse.live
            sparse_memory = self._sparse.memory_bytes()
            version = self._version
        disk = _folder_bytes(self.path)
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
            "schema_version": self.store.writer.execute("PRAGMA user_version").fetchone()[0],
            "bytes_on_disk": disk,
            "index_memory_bytes": memory,
            "sparse_memory_bytes": sparse_memory,
        }

    def check(self) -> bool:
        """Full consistency check: stats agree and the FTS index matches its content table."""
        return bool(self.stats()["consistent"]) and Store.fts_ok(self.store.writer)

    def try_snapshot(self) -> bool:
        """Save the snapshot now if it is behind and no writer (thread or process) is busy."""
        if (
            self._closed
            or self._version == self._saved_version
            or not self._write_mutex.acquire(blocking=False)
        ):
            return False
        try:
            with self._filelock.acquire(timeout=0):
                return self.save_snapshot(force=True)
        except filelock.Timeout:
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


def _folder_bytes(path: Path) -> int:
    """Bytes of the files in `path`; a snapshot's temporary file may vanish while we look."""
    total = 0
    for p in path.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if p.is_file():
                total += p.stat().st_size
    return total


def check_chunking(chunk_tokens: int, overlap: int, max_tokens: int) -> None:
    if chunk_tokens > max_tokens:
        raise RagtuneError(
            f"chunk_tokens={chunk_tokens} exceeds the embedder's {max_tokens}-token window; "
            f"set RAGTUNE_RETRIEVAL__CHUNK_TOKENS (or --chunk-tokens) to at most {max_tokens}",
            param="chunk_tokens",
        )
    if not 0 <= overlap < chunk_tokens:
        raise RagtuneError(
            f"chunk_overlap={overlap} must be at least 0 and below chunk_tokens={chunk_tokens}",
            param="chunk_overlap",
        )
