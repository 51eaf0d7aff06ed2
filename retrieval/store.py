"""The SQLite document store: the source of truth of a collection (the embedded default).

Documents, chunks (text, offsets, content hash, float32 embedding) and an FTS5 index (BM25,
porter stemming) kept in step by triggers, so all three change in one transaction. WAL mode:
readers never block the writer and read a consistent snapshot for a whole transaction.
`meta.version` counts committed writes; the FAISS snapshot records the version it reflects.
A file lock beside the database admits one writer across processes. `Store` and `SqliteTxn`
implement retrieval/storage.py's Protocols; `SqliteBackend` keeps one folder per collection.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import filelock
import numpy as np

from ragtune.core.errors import CollectionExists, CollectionNotFound, StoreUnavailable, WriterBusy
from ragtune.retrieval.chunking import Chunk
from ragtune.retrieval.filters import SqliteFields, check_fields, compile_filter
from ragtune.retrieval.sparse import SparseIndex, Tokenizer, fts_text
from ragtune.retrieval.storage import Changes, ChunkRow
from ragtune.retrieval.types import Document

# Ordered migrations: index i brings the schema from user_version i to i + 1. Append only.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE documents (
        id TEXT PRIMARY KEY,
        title TEXT,
        source TEXT,
        metadata TEXT NOT NULL DEFAULT '{}',
        text TEXT NOT NULL,
        content_hash TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX documents_source ON documents(source);
    CREATE TABLE chunks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: FAISS ids stay unambiguous
        doc_id TEXT NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        title TEXT,
        text TEXT NOT NULL,
        start INTEGER NOT NULL,
        end INTEGER NOT NULL,
        hash TEXT NOT NULL,
        embedding BLOB NOT NULL,
        UNIQUE (doc_id, seq)
    );
    CREATE INDEX chunks_hash ON chunks(hash);
    CREATE VIRTUAL TABLE chunks_fts USING fts5(
        title, text, content='chunks', content_rowid='id', tokenize='porter unicode61'
    );
    CREATE TRIGGER chunks_ai AFTER INSERT ON chunks BEGIN
        INSERT INTO chunks_fts(rowid, title, text) VALUES (new.id, new.title, new.text);
    END;
    CREATE TRIGGER chunks_ad AFTER DELETE ON chunks BEGIN
        INSERT INTO chunks_fts(chunks_fts, rowid, title, text) VALUES ('delete', old.id, old.title, old.text);
    END;
    """,
    # Per-posting view of the FTS5 index: the in-memory BM25 index (retrieval/sparse.py) is
    # rebuilt from it.
    """
    CREATE VIRTUAL TABLE chunks_fts_instance USING fts5vocab(chunks_fts, instance);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


BUSY_TIMEOUT_S = 30.0


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the database to WAL once; several processes may open a new file at the same moment.

    SQLite does not call the busy handler while a connection changes the journal mode, so a
    second opener meets "database is locked" at once rather than after the timeout: retry until
    the mode is WAL (set by whichever opener won) or the usual busy timeout has passed.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            # The pragma answers the mode in force: the old one when it could not change it.
            if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal":
                return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
        if time.monotonic() > deadline:
            raise StoreUnavailable(f"could not switch the database to WAL within {BUSY_TIMEOUT_S:.0f} s")
        time.sleep(0.01)


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_S)
    _use_wal(conn)
    # NORMAL in WAL mode: a commit survives a killed process; only a power cut may lose the last ones.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    if readonly:
        conn.execute("PRAGMA query_only=ON")
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection, mode: str = "") -> Iterator[sqlite3.Connection]:
    conn.execute(f"BEGIN {mode}")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def migrate(conn: sqlite3.Connection) -> None:
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise RuntimeError(f"store schema {current} is newer than this ragtune ({SCHEMA_VERSION})")
    for version in range(current, SCHEMA_VERSION):
        with transaction(conn, "IMMEDIATE"):
            for statement in _statements(MIGRATIONS[version]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")


def _statements(script: str) -> Iterable[str]:
    """Split a migration script into statements (executescript would commit on its own)."""
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                yield buf
            buf = ""


def select_in(conn: sqlite3.Connection, sql: str, values: Iterable[Any]) -> Iterator[Any]:
    """Rows of `sql`, whose `{marks}` is an IN list, for every value: run in batches of 900
    (SQLite caps the parameters of one statement)."""
    values = list(values)
    for lo in range(0, len(values), 900):
        part = values[lo : lo + 900]
        yield from conn.execute(sql.format(marks=",".join("?" * len(part))), part)


STORE_FILE = "store.sqlite"
LOCK_FILE = "write.lock"


def folder_bytes(path: Path) -> int:
    """Bytes of the files in `path`; a snapshot's temporary file may vanish while we look."""
    total = 0
    for p in path.iterdir() if path.exists() else ():
        with contextlib.suppress(OSError):
            if p.is_file():
                total += p.stat().st_size
    return total


def _identity(path: Path) -> tuple[int, int]:
    """The file's device and inode: a collection dropped and made again is another file."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


class Store:
    """One collection's SQLite file. A single writer connection plus one reader per thread."""

    def __init__(self, path: Path):
        self.path = path
        self.name = path.parent.name
        self.snapshot_dir: Path | None = path.parent
        self.snapshot_while_writing = True
        self.writer = connect(path)
        migrate(self.writer)
        self.config = self.meta(self.writer)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._filelock = filelock.FileLock(path.parent / LOCK_FILE, thread_local=False)
        self._identity = _identity(path)

    def is_current(self) -> bool:
        try:
            return _identity(self.path) == self._identity
        except OSError:
            return False

    # -- connections ---------------------------------------------------------------------
    def reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, readonly=True)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    @contextmanager
    def reading(self) -> Iterator[SqliteTxn]:
        """A read transaction: WAL gives it one snapshot from its first read to its end. A
        thread has one reader connection; a read nested in another shares its snapshot."""
        conn = self.reader()
        if conn.in_transaction:
            yield SqliteTxn(conn)
            return
        with transaction(conn):
            yield SqliteTxn(conn)

    @contextmanager
    def writing(self, timeout: float) -> Iterator[SqliteTxn]:
        try:
            self._filelock.acquire(timeout=timeout)
        except filelock.Timeout:
            raise WriterBusy(
                f"collection {self.name!r} is being written by another process "
                f"(lock {self._filelock.lock_file}); waited {timeout:g} s. Try again when it finishes, "
                "or raise RAGTUNE_RETRIEVAL__LOCK_TIMEOUT"
            ) from None
        try:
            self.writer.execute("BEGIN IMMEDIATE")
            try:
                yield SqliteTxn(self.writer)
            finally:
                if self.writer.in_transaction:
                    self.writer.execute("ROLLBACK")
        finally:
            self._filelock.release()

    def rows_at(self, ids: Sequence[int]) -> tuple[int, dict[int, ChunkRow]]:
        with self.reading() as txn:
            return txn.version(), txn.chunk_rows(ids)

    def ids_where_at(self, filter: dict[str, Any]) -> tuple[int, np.ndarray]:
        with self.reading() as txn:
            return txn.version(), txn.chunk_ids_where(filter)

    def close(self) -> None:
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self.writer.close()

    # -- meta ----------------------------------------------------------------------------
    def init_meta(self, values: dict[str, Any]) -> None:
        with transaction(self.writer, "IMMEDIATE"):
            rows = {"version": 0, "store_id": uuid.uuid4().hex, "created_at": time.time(), **values}
            self.writer.executemany(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in rows.items()],
            )
        self.config = self.meta(self.writer)

    @staticmethod
    def meta(conn: sqlite3.Connection) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}

    def schema_version(self) -> int:
        return int(self.writer.execute("PRAGMA user_version").fetchone()[0])

    def check(self) -> bool:
        try:
            self.writer.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")
        except sqlite3.DatabaseError:
            return False
        return True

    def disk_bytes(self) -> int:
        return folder_bytes(self.path.parent)

    def snapshot_lock(self) -> AbstractContextManager[object]:
        return self.writing(timeout=0)  # the snapshot files live beside the database, under its lock

    # Kept for callers that hold a raw connection (the sparse index tests, the benchmarks).
    @staticmethod
    def fts_texts(conn: sqlite3.Connection, ids: Sequence[int]) -> list[str]:
        return SqliteTxn(conn).fts_texts(ids)


def _ints(rows: Iterable[Any]) -> np.ndarray:
    return np.fromiter((r[0] for r in rows), dtype=np.int64)


class SqliteTxn:
    """retrieval/storage.py's `Txn` over one SQLite connection inside a transaction."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    # -- reads ---------------------------------------------------------------------------
    def version(self) -> int:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        return int(row[0]) if row else 0

    def changes_since(self, version: int) -> Changes | None:
        return None  # no change log: one process's indexes diff against the chunk ids

    def chunk_ids(self) -> np.ndarray:
        return _ints(self.conn.execute("SELECT id FROM chunks ORDER BY id"))

    def embeddings(self, ids: Sequence[int] | None, dim: int) -> tuple[np.ndarray, np.ndarray]:
        if ids is None:
            rows = self.conn.execute("SELECT id, embedding FROM chunks ORDER BY id").fetchall()
        else:
            sql = "SELECT id, embedding FROM chunks WHERE id IN ({marks})"
            rows = list(select_in(self.conn, sql, map(int, ids)))
        out_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        return out_ids, vecs

    def fts_texts(self, ids: Sequence[int]) -> list[str]:
        """The text FTS5 indexes for each chunk id (title and text, see sparse.fts_text)."""
        sql = "SELECT id, title, text FROM chunks WHERE id IN ({marks})"
        found = {i: fts_text(title, text) for i, title, text in select_in(self.conn, sql, map(int, ids))}
        return [found[int(i)] for i in ids]

    def sparse_index(self, tokenizer: Tokenizer, ids: np.ndarray) -> SparseIndex:
        return SparseIndex.from_store(self.conn, tokenizer, ids)  # FTS5's own postings

    def embeddings_by_hash(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        sql = "SELECT hash, embedding FROM chunks WHERE hash IN ({marks}) GROUP BY hash"
        rows = select_in(self.conn, sql, dict.fromkeys(hashes))
        return {h: np.frombuffer(b, dtype=np.float32) for h, b in rows}

    def content_hashes(self, doc_ids: Sequence[str]) -> dict[str, str]:
        return dict(
            select_in(self.conn, "SELECT id, content_hash FROM documents WHERE id IN ({marks})", doc_ids)
        )

    def chunk_ids_of(self, doc_ids: Sequence[str]) -> np.ndarray:
        return _ints(select_in(self.conn, "SELECT id FROM chunks WHERE doc_id IN ({marks})", doc_ids))

    def document(self, doc_id: str) -> Document | None:
        sql = "SELECT id, text, title, source, metadata FROM documents WHERE id = ?"
        row = self.conn.execute(sql, (doc_id,)).fetchone()
        return None if row is None else Document(row[0], row[1], row[2], row[3], json.loads(row[4]))

    def documents(self, offset: int, limit: int) -> list[Document]:
        rows = self.conn.execute(
            "SELECT id, text, title, source, metadata FROM documents ORDER BY rowid LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [Document(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows]

    def metadata_where(self, filter: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
        where, params = compile_filter(filter)
        rows = self.conn.execute(f"SELECT d.id, d.metadata FROM documents d WHERE {where}", params)
        return {r[0]: json.loads(r[1]) for r in rows}

    def chunk_ids_where(self, filter: dict[str, Any]) -> np.ndarray:
        where, params = compile_filter(filter)
        sql = f"SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE {where}"
        return _ints(self.conn.execute(sql, params))

    def check_fields(self, filter: dict[str, Any], collection: str) -> None:
        check_fields(SqliteFields(self.conn), filter, collection)

    def chunk_rows(self, ids: Sequence[int]) -> dict[int, ChunkRow]:
        sql = (
            "SELECT c.id, c.doc_id, c.seq, c.text, c.start, c.end, d.title, d.source, d.metadata "
            "FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE c.id IN ({marks})"
        )
        return {
            r[0]: ChunkRow(r[1], r[2], r[3], r[4], r[5], r[6], r[7], json.loads(r[8]))
            for r in select_in(self.conn, sql, map(int, ids))
        }

    def counts(self) -> dict[str, int]:
        one = self.conn.execute
        return {
            "documents": one("SELECT count(*) FROM documents").fetchone()[0],
            "chunks": one("SELECT count(*) FROM chunks").fetchone()[0],
            "fts_rows": one("SELECT count(*) FROM chunks_fts_docsize").fetchone()[0],
            "documents_without_chunks": one(
                "SELECT count(*) FROM documents d WHERE NOT EXISTS "
                "(SELECT 1 FROM chunks c WHERE c.doc_id = d.id)"
            ).fetchone()[0],
        }

    # -- writing -------------------------------------------------------------------------
    def add_documents(
        self,
        docs: Sequence[Document],
        hashes: dict[str, str],
        chunks: dict[str, list[Chunk]],
        vectors: dict[str, np.ndarray],
        now: float,
    ) -> list[int]:
        ids: list[int] = []
        for doc in docs:
            self._put_document(doc, hashes[doc.id], now)
            ids += self._add_chunks(doc, chunks[doc.id], vectors)
        return ids

    def _put_document(self, doc: Document, content_hash: str, now: float) -> None:
        self.conn.execute(
            "INSERT INTO documents(id, title, source, metadata, text, content_hash, created_at, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
            "title=excluded.title, source=excluded.source, metadata=excluded.metadata, "
            "text=excluded.text, content_hash=excluded.content_hash, updated_at=excluded.updated_at",
            (
                doc.id,
                doc.title,
                doc.source,
                json.dumps(doc.metadata, ensure_ascii=False),
                doc.text,
                content_hash,
                now,
                now,
            ),
        )

    def _add_chunks(
        self, doc: Document, chunks: Sequence[Chunk], vectors: dict[str, np.ndarray]
    ) -> list[int]:
        ids = []
        for c in chunks:
            cur = self.conn.execute(
                "INSERT INTO chunks(doc_id, seq, title, text, start, end, hash, embedding) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (doc.id, c.seq, doc.title, c.text, c.start, c.end, c.hash, vectors[c.hash].tobytes()),
            )
            ids.append(int(cur.lastrowid or 0))
        return ids

    def delete_chunks(self, ids: np.ndarray) -> None:
        self.conn.executemany("DELETE FROM chunks WHERE id = ?", [(int(i),) for i in ids])

    def delete_documents(self, ids: Sequence[str]) -> int:
        deleted = 0
        for lo in range(0, len(ids), 900):
            part = list(ids[lo : lo + 900])
            marks = ",".join("?" * len(part))
            self.conn.execute(f"DELETE FROM chunks WHERE doc_id IN ({marks})", part)
            deleted += self.conn.execute(f"DELETE FROM documents WHERE id IN ({marks})", part).rowcount
        return deleted

    def bump_version(self, added: np.ndarray, removed: np.ndarray) -> int:
        self.conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'version'")
        return self.version()

    def commit(self) -> None:
        self.conn.execute("COMMIT")


class SqliteBackend:
    """One folder per collection under `root`: `store.sqlite` and the index snapshots."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.where = str(self.root)

    def names(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / STORE_FILE).exists() and p.name[0] != ".")

    def exists(self, name: str) -> bool:
        return (self.root / name / STORE_FILE).exists()

    def ping(self, timeout: float) -> None:
        """The folder is there and writable (created on the first write when it does not exist)."""
        folder = self.root if self.root.exists() else self.root.parent
        if not os.access(folder, os.W_OK | os.X_OK):
            raise StoreUnavailable(f"the indexes folder {self.root} cannot be written")

    def create(self, name: str, config: dict[str, Any]) -> None:
        final = self.root / name
        if self.exists(name):
            raise CollectionExists(f"collection {name!r} already exists in {self.root}", param="collection")
        # Build in a scratch folder and rename: a crash never leaves half a collection.
        self.root.mkdir(parents=True, exist_ok=True)
        scratch = self.root / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        scratch.mkdir()
        try:
            store = Store(scratch / STORE_FILE)
            store.init_meta(config)
            store.close()
            if final.exists() and not any(final.iterdir()):
                final.rmdir()
            scratch.rename(final)
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
            if final.exists():
                raise CollectionExists(f"collection {name!r} already exists in {self.root}") from None
            raise

    def open(self, name: str) -> Store:
        return Store(self.root / name / STORE_FILE)

    def drop(self, name: str, timeout: float) -> None:
        path = self.root / name
        if not self.exists(name):
            raise CollectionNotFound(f"no collection {name!r} in {self.root}", param="collection")
        lock = filelock.FileLock(path / LOCK_FILE, thread_local=False)
        try:
            with lock.acquire(timeout=timeout):
                # Rename first so a reader never opens a half-deleted folder.
                trash = self.root / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
                path.rename(trash)
        except filelock.Timeout:
            raise WriterBusy(f"collection {name!r} is being written by another process; try again") from None
        shutil.rmtree(trash, ignore_errors=True)

    def close(self) -> None:
        pass
