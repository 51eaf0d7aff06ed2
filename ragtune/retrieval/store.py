"""The SQLite document store: the source of truth of a collection (the embedded default).

Documents, chunks (text, offsets, content hash, float32 embedding) and an FTS5 index (BM25,
porter stemming) kept in step by triggers, so all three change in one transaction. WAL mode:
readers never block the writer and read a consistent snapshot for a whole transaction.
`meta.version` counts committed writes; the FAISS snapshot records the version it reflects.
A file lock beside the database admits one writer across processes. `Store` and `SqliteTxn`
(retrieval/store_txn.py) implement retrieval/storage.py's Protocols; `SqliteBackend` keeps one
folder per collection.
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
from ragtune.retrieval.storage import ChunkRow
from ragtune.retrieval.store_txn import SqliteTxn

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
