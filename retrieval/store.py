"""The SQLite document store: the source of truth of a collection.

Documents, chunks (text, offsets, content hash, float32 embedding) and an FTS5 index (BM25,
porter stemming) kept in step by triggers, so all three change in one transaction. WAL mode:
readers never block the writer and read a consistent snapshot for a whole transaction.
`meta.version` counts committed writes; the FAISS snapshot records the version it reflects.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.sparse import fts_text

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


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
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


class Store:
    """One collection's SQLite file. A single writer connection plus one reader per thread."""

    def __init__(self, path: Path):
        self.path = path
        self.writer = connect(path)
        migrate(self.writer)
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    # -- connections ---------------------------------------------------------------------
    def reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, readonly=True)
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

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

    @staticmethod
    def meta(conn: sqlite3.Connection) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}

    @staticmethod
    def version(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def bump_version(conn: sqlite3.Connection) -> int:
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'version'")
        return Store.version(conn)

    # -- reads (any connection, inside the caller's transaction) -------------------------
    @staticmethod
    def chunk_ids(conn: sqlite3.Connection) -> np.ndarray:
        rows = conn.execute("SELECT id FROM chunks ORDER BY id").fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    @staticmethod
    def embeddings(
        conn: sqlite3.Connection, ids: Sequence[int] | None, dim: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of the given chunk ids, or of every chunk when ids is None."""
        if ids is None:
            rows = conn.execute("SELECT id, embedding FROM chunks ORDER BY id").fetchall()
        else:
            rows = list(
                select_in(conn, "SELECT id, embedding FROM chunks WHERE id IN ({marks})", map(int, ids))
            )
        out_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        return out_ids, vecs

    @staticmethod
    def fts_texts(conn: sqlite3.Connection, ids: Sequence[int]) -> list[str]:
        """The text FTS5 indexes for each chunk id (title and text, see sparse.fts_text)."""
        sql = "SELECT id, title, text FROM chunks WHERE id IN ({marks})"
        found = {i: fts_text(title, text) for i, title, text in select_in(conn, sql, map(int, ids))}
        return [found[int(i)] for i in ids]

    @staticmethod
    def embeddings_by_hash(conn: sqlite3.Connection, hashes: Sequence[str]) -> dict[str, bytes]:
        sql = "SELECT hash, embedding FROM chunks WHERE hash IN ({marks}) GROUP BY hash"
        return dict(select_in(conn, sql, dict.fromkeys(hashes)))

    @staticmethod
    def counts(conn: sqlite3.Connection) -> dict[str, int]:
        docs = conn.execute("SELECT count(*) FROM documents").fetchone()[0]
        chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        fts = conn.execute("SELECT count(*) FROM chunks_fts_docsize").fetchone()[0]
        orphans = conn.execute(
            "SELECT count(*) FROM documents d WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.doc_id = d.id)"
        ).fetchone()[0]
        return {"documents": docs, "chunks": chunks, "fts_rows": fts, "documents_without_chunks": orphans}

    @staticmethod
    def fts_ok(conn: sqlite3.Connection) -> bool:
        try:
            conn.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")
        except sqlite3.DatabaseError:
            return False
        return True

    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file())
