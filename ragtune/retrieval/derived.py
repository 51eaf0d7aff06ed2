"""A collection's derived indexes: FAISS (dense) and BM25 (sparse) in memory, over its store.

Built from the store (never by embedding again), saved as snapshots where the store keeps a
folder for them, and kept in step with the store by version: after a write elsewhere (another
process, another replica) `catch_up` applies the store's change log, or diffs chunk ids where
the store keeps no log. `rw` is the readers-writer lock searches and index updates share.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

import numpy as np

from ragtune.retrieval.locks import RWLock
from ragtune.retrieval.settings import RetrievalSettings
from ragtune.retrieval.sparse import SparseIndex, Tokenizer, count
from ragtune.retrieval.storage import DocumentStore, Txn
from ragtune.retrieval.vectors import INDEX_TYPES, VectorIndex

INDEX_FILE = "vectors.faiss"
SPARSE_FILE = "sparse.npz"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 2
TOKENIZER = Tokenizer()


class DerivedIndexes:
    def __init__(self, store: DocumentStore, settings: RetrievalSettings):
        self.store = store
        self.path = store.snapshot_dir  # None: no snapshots (the indexes are built from the store)
        self.settings = settings
        self.config = store.config
        self.index_type: str = self.config["index_type"]
        self.dimension: int = int(self.config["dimension"])
        self.rw = RWLock()
        self.version = -1
        self.saved_version = -1
        self._saved_at = 0.0
        self.vectors: VectorIndex
        self.sparse: SparseIndex
        self.load()

    def load(self) -> None:
        """Load the snapshots if they match this store, else build them; then sync them to it."""
        cls = INDEX_TYPES[self.index_type]
        vectors: VectorIndex | None = None
        sparse: SparseIndex | None = None
        try:
            if self.path is None:
                raise FileNotFoundError("this store keeps no snapshots")
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
                sparse = SparseIndex.load(self.path / SPARSE_FILE, TOKENIZER)
                if sparse.postings != manifest["sparse_postings"]:
                    sparse = None
        except (OSError, ValueError, KeyError, RuntimeError):
            pass  # missing, stale or unreadable: the store has everything to rebuild them
        with self.store.reading() as txn:
            stored = txn.chunk_ids()
            if vectors is None:
                ids, vecs = txn.embeddings(None, self.dimension)
                vectors = cls.build(self.dimension, self.settings, ids, vecs)
            else:
                self.sync_vectors(vectors, txn, stored)
            if sparse is None:
                self.sparse = txn.sparse_index(TOKENIZER, stored)
            else:
                self.sparse = sparse
                self.sync_sparse(txn, stored)
            self.version = txn.version()
        self.vectors = vectors
        self.rebuild_if_needed()

    # Chunk ids are never reused and a chunk never changes, so comparing id sets is exact: each
    # index adds what it lacks and removes what the store no longer has.
    def sync_vectors(self, vectors: VectorIndex, txn: Txn, stored: np.ndarray) -> None:
        """Make the FAISS index hold exactly the `stored` chunk ids (in the caller's read transaction)."""
        missing = np.setdiff1d(stored, vectors.ids(), assume_unique=True)
        if len(missing):
            ids, vecs = txn.embeddings(missing.tolist(), self.dimension)
            vectors.add(ids, vecs)
        vectors.remove(np.setdiff1d(vectors.live_ids(), stored, assume_unique=True))

    def sync_sparse(self, txn: Txn, stored: np.ndarray | None, added: np.ndarray | None = None) -> None:
        """Make the BM25 index hold exactly the `stored` chunk ids, or add chunks `added`."""
        if stored is None:
            assert added is not None
            missing = added
        else:
            missing = np.setdiff1d(stored, self.sparse.ids(), assume_unique=True)
        try:
            self.sparse.add(count(TOKENIZER, missing, txn.fts_texts(missing.tolist())))
        except ValueError:  # ids below the index's (cannot happen: ids only grow): rebuild
            stored = txn.chunk_ids() if stored is None else stored
            self.sparse = txn.sparse_index(TOKENIZER, stored)
        if stored is not None:
            self.sparse.remove(np.setdiff1d(self.sparse.live_ids(), stored, assume_unique=True))

    def catch_up(self, writer: Txn | None = None) -> None:
        """Someone else wrote: bring the in-memory indexes to the store's current version, by the
        store's change log when it has one (a few rows), else by comparing chunk ids (all of them).
        A writer passes its own transaction: it holds the lock, so it sees the latest version."""
        with contextlib.ExitStack() as stack:
            txn = writer or stack.enter_context(self.store.reading())
            with self.rw.write():
                version = txn.version()
                if version == self.version:
                    return
                changes = txn.changes_since(self.version) if self.version >= 0 else None
                if changes is None:
                    stored = txn.chunk_ids()
                    self.sync_vectors(self.vectors, txn, stored)
                    self.sync_sparse(txn, stored)
                else:
                    self.vectors.remove(changes.removed)
                    self.sparse.remove(changes.removed)
                    ids, vecs = txn.embeddings(changes.added.tolist(), self.dimension)
                    self.vectors.add(ids, vecs)
                    self.sync_sparse(txn, None, added=ids)
                self.version = version

    def rebuild_if_needed(self) -> None:
        """Compaction (HNSW tombstones) or (re)training (IVF) from the stored embeddings, and
        merging of the BM25 segments. Built beside the live index, swapped in at the end."""
        if self.sparse.needs_merge:
            version = self.version
            merged = self.sparse.merged()
            with self.rw.write():
                if self.version == version:
                    self.sparse = merged
        if not self.vectors.needs_rebuild:
            return
        with self.store.reading() as txn:
            version = txn.version()
            ids, vecs = txn.embeddings(None, self.dimension)
        fresh = INDEX_TYPES[self.index_type].build(self.dimension, self.settings, ids, vecs)
        with self.rw.write():
            if self.version in (version, -1):
                self.vectors, self.version = fresh, version

    def save_snapshot(self, *, force: bool = False) -> bool:
        """Write the FAISS and BM25 files and the manifest (each atomically). Callers hold the
        write file lock. The manifest goes last; on open, each index is checked against the
        store by chunk id anyway, so a crash between the files costs a sync, not correctness."""
        if self.path is None or self.version == self.saved_version:
            return False
        if not force and time.monotonic() - self._saved_at < self.settings.snapshot_interval:
            return False
        self.path.mkdir(parents=True, exist_ok=True)
        with self.rw.read():
            tmp = self.path / f"{INDEX_FILE}.tmp"
            self.vectors.save(tmp)
            os.replace(tmp, self.path / INDEX_FILE)
            tmp = self.path / f"{SPARSE_FILE}.tmp"
            self.sparse.save(tmp)
            os.replace(tmp, self.path / SPARSE_FILE)
            manifest = {
                "format": MANIFEST_FORMAT,
                "store_id": self.config["store_id"],
                "store_version": self.version,
                "embedder": self.config["embedder"],
                "dimension": self.dimension,
                "index_type": self.index_type,
                "vectors": self.vectors.ntotal,
                "live_vectors": self.vectors.live,
                "state": self.vectors.state(),
                "sparse_postings": self.sparse.postings,
                "saved_at": time.time(),
            }
            tmp_manifest = self.path / f"{MANIFEST_FILE}.tmp"
            tmp_manifest.write_text(json.dumps(manifest, indent=2))
            os.replace(tmp_manifest, self.path / MANIFEST_FILE)
            self.saved_version = manifest["store_version"]
        self._saved_at = time.monotonic()
        return True
