"""The document-store seam: what a Collection and a Library need from where documents live.

Two implementations, chosen by `RAGTUNE_RETRIEVAL__STORE_URL`: unset, one SQLite file per
collection under the indexes folder (retrieval/store.py, the embedded default); a
`postgresql://` URL, one PostgreSQL database shared by every replica (retrieval/store_pg.py).
Both hold the truth - documents, chunks with their embeddings, a version that counts writes -
and serialise writers per collection; the FAISS and BM25 indexes are derived from them in
memory by `Collection`, which speaks only these Protocols and never SQL.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from ragtune.retrieval.chunking import Chunk
from ragtune.retrieval.sparse import SparseIndex, Tokenizer
from ragtune.retrieval.types import Document


class ChunkRow(NamedTuple):
    """What a search hit needs of a stored chunk and its document."""

    doc_id: str
    seq: int
    text: str
    start: int
    end: int
    title: str | None
    source: str | None
    metadata: dict[str, Any]


class Changes(NamedTuple):
    """The net effect of the writes after some version: chunk ids added (still stored) and removed."""

    added: np.ndarray
    removed: np.ndarray


class Txn(Protocol):
    """One transaction on one collection: a consistent read snapshot (`DocumentStore.reading`)
    or the collection's only writer (`DocumentStore.writing`), which the methods under
    "writing" need."""

    def version(self) -> int: ...
    def changes_since(self, version: int) -> Changes | None:
        """None when the store keeps no change log reaching back that far (diff by chunk id then)."""
        ...

    def chunk_ids(self) -> np.ndarray: ...
    def embeddings(self, ids: Sequence[int] | None, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, float32 vectors) of the given chunk ids, or of every chunk when ids is None."""
        ...

    def fts_texts(self, ids: Sequence[int]) -> list[str]: ...
    def sparse_index(self, tokenizer: Tokenizer, ids: np.ndarray) -> SparseIndex:
        """A BM25 index over chunks `ids` (every stored chunk), built from the store."""
        ...

    def embeddings_by_hash(self, hashes: Sequence[str]) -> dict[str, np.ndarray]: ...
    def content_hashes(self, doc_ids: Sequence[str]) -> dict[str, str]: ...
    def chunk_ids_of(self, doc_ids: Sequence[str]) -> np.ndarray: ...
    def document(self, doc_id: str) -> Document | None: ...
    def documents(self, offset: int, limit: int) -> list[Document]:
        """In the order they were first added."""
        ...

    def metadata_where(self, filter: dict[str, Any] | None) -> dict[str, dict[str, Any]]: ...
    def chunk_ids_where(self, filter: dict[str, Any]) -> np.ndarray: ...
    def check_fields(self, filter: dict[str, Any], collection: str) -> None:
        """InvalidFilter when `filter` names a metadata field no document has."""
        ...

    def chunk_rows(self, ids: Sequence[int]) -> dict[int, ChunkRow]: ...
    def counts(self) -> dict[str, int]:
        """documents, chunks, fts_rows (full-text entries) and documents_without_chunks."""
        ...

    # -- writing ------------------------------------------------------------------------
    def add_documents(
        self,
        docs: Sequence[Document],
        hashes: dict[str, str],
        chunks: dict[str, list[Chunk]],
        vectors: dict[str, np.ndarray],
        now: float,
    ) -> list[int]:
        """Insert or replace documents (their old chunks deleted already) and insert their chunks,
        `vectors` by chunk hash. Returns the new chunk ids in order; ids grow, never reused."""
        ...

    def delete_chunks(self, ids: np.ndarray) -> None: ...
    def delete_documents(self, ids: Sequence[str]) -> int: ...
    def bump_version(self, added: np.ndarray, removed: np.ndarray) -> int:
        """Count this write (and record its chunk ids where a change log is kept)."""
        ...

    def commit(self) -> None: ...


class DocumentStore(Protocol):
    """One collection's documents. `config` holds what it was created with (embedder,
    dimension, index_type, chunk_tokens, chunk_overlap) and a `store_id` unique to it."""

    name: str
    config: dict[str, Any]
    snapshot_dir: Path | None  # where snapshots of the derived indexes may be kept; None: nowhere
    # Whether a writer also saves the snapshot (under the collection's write lock). False where
    # that lock is shared by every replica: a replica saves its own at open and close only.
    snapshot_while_writing: bool

    def reading(self) -> AbstractContextManager[Txn]: ...
    def writing(self, timeout: float) -> AbstractContextManager[Txn]:
        """The collection's write lock and an open transaction (rolled back unless committed).
        WriterBusy after `timeout` seconds (0: one try)."""
        ...

    def rows_at(self, ids: Sequence[int]) -> tuple[int, dict[int, ChunkRow]]:
        """The store's version and the rows of chunks `ids`, read in one snapshot."""
        ...

    def ids_where_at(self, filter: dict[str, Any]) -> tuple[int, np.ndarray]:
        """The store's version and the ids of the chunks whose documents match `filter`, read
        in one snapshot."""
        ...

    def snapshot_lock(self) -> AbstractContextManager[object]:
        """Held while the snapshot files are written; WriterBusy at once if another holds it."""
        ...

    def schema_version(self) -> int: ...
    def is_current(self) -> bool:
        """False once the collection this handle opened was dropped (and perhaps made again under
        its name, by another process or replica): the handle must not be used any more."""
        ...

    def check(self) -> bool:
        """The store's own integrity check (SQLite: the FTS5 index against its table)."""
        ...

    def disk_bytes(self) -> int:
        """What the collection takes on disk where it is stored (its snapshots included)."""
        ...

    def close(self) -> None: ...


class Backend(Protocol):
    """Where a Library's collections live."""

    where: str  # for messages: a folder, or the database URL without its password

    def names(self) -> list[str]: ...
    def exists(self, name: str) -> bool: ...
    def create(self, name: str, config: dict[str, Any]) -> None:
        """Make an empty collection, whole or not at all; CollectionExists if the name is taken."""
        ...

    def open(self, name: str) -> DocumentStore: ...
    def drop(self, name: str, timeout: float) -> None: ...
    def ping(self, timeout: float) -> None:
        """Raise StoreUnavailable, within about `timeout` seconds, unless the store answers."""
        ...

    def close(self) -> None: ...


def hide_password(url: str) -> str:
    """The URL as it may be shown: `postgresql://user:***@host/db`."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
