"""The durable record of adapters and profiles changed over HTTP, in the document store.

One row per (kind, name): kind 'adapter' (value {"path": folder under the adapters folder,
"fingerprint": ...}) or 'profile' (value: ProfileSettings.model_dump()); a NULL value is a
deletion. An adapter's files (core.packing.pack_adapter) are kept once per fingerprint
beside the rows, written in the same transaction as the row that names them and deleted with
the last row that does, so a replica without the folder can still serve the recorded version.
`seq` grows across the whole record: each write takes max(seq) + 1 while it is the only writer
(SQLite's write lock, a PostgreSQL advisory lock), so rows commit in `seq` order and a
reader that has seen `seq` N has seen every row up to N.

SQLite: a file in the indexes folder whose name starts with '.', which no collection name can.
PostgreSQL: the table `ragtune_records` in the database of RAGTUNE_RETRIEVAL__STORE_URL.
serving/converge.py applies the rows at start and keeps every replica following them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

from ragtune.core.errors import StoreUnavailable
from ragtune.retrieval.storage import Backend

if TYPE_CHECKING:
    from ragtune.retrieval.store_pg import PostgresBackend

Kind = Literal["adapter", "profile"]
SQLITE_FILE = ".ragtune-records.sqlite"
BUSY_TIMEOUT_MS = 30_000  # how long a SQLite write waits for another process's write

PG_TABLE = """
CREATE TABLE IF NOT EXISTS ragtune_records (
    kind text NOT NULL,
    name text NOT NULL,
    value jsonb,
    seq bigint NOT NULL UNIQUE,
    updated_at double precision NOT NULL,
    PRIMARY KEY (kind, name)
)
"""
SQLITE_TABLE = """
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT,
    seq INTEGER NOT NULL UNIQUE,
    updated_at REAL NOT NULL,
    PRIMARY KEY (kind, name)
)
"""
PG_FILES = """
CREATE TABLE IF NOT EXISTS ragtune_adapter_files (fingerprint text PRIMARY KEY, data bytea NOT NULL)
"""
SQLITE_FILES = "CREATE TABLE IF NOT EXISTS adapter_files (fingerprint TEXT PRIMARY KEY, data BLOB NOT NULL)"
# Files no adapter row names any more (replaced or deleted adapters).
PG_PRUNE = (
    "DELETE FROM ragtune_adapter_files WHERE fingerprint NOT IN (SELECT value->>'fingerprint' "
    "FROM ragtune_records WHERE kind = 'adapter' AND value IS NOT NULL)"
)
SQLITE_PRUNE = (
    "DELETE FROM adapter_files WHERE fingerprint NOT IN (SELECT json_extract(value, '$.fingerprint') "
    "FROM records WHERE kind = 'adapter' AND value IS NOT NULL)"
)
RECORDS_LOCK = 0x5241_4752  # pg_advisory_xact_lock key of record writers (store_pg's + 0xFE)


class Row(NamedTuple):
    seq: int
    kind: Kind
    name: str
    value: dict[str, Any] | None  # None: deleted
    updated_at: float


class Records(Protocol):
    where: str

    def put(
        self, kind: Kind, name: str, value: dict[str, Any] | None, *, files: tuple[str, bytes] | None = None
    ) -> int:
        """Record the current value of `name` (None: deleted); returns its seq. `files`: an
        adapter's (fingerprint, packed files), kept unless that fingerprint is already there."""
        ...

    def files(self, fingerprint: str) -> bytes | None:
        """The packed files of a recorded adapter version, None when the store has none."""
        ...

    def since(self, seq: int) -> list[Row]:
        """The rows written after `seq`, in seq order."""
        ...

    def close(self) -> None: ...


def open_records(backend: Backend) -> Records:
    """The record beside the document store `backend`: the same SQLite folder or database."""
    from ragtune.retrieval.store import SqliteBackend

    if isinstance(backend, SqliteBackend):
        return SqliteRecords(backend.root / SQLITE_FILE)
    from ragtune.retrieval.store_pg import PostgresBackend

    if isinstance(backend, PostgresBackend):
        return PgRecords(backend)
    raise TypeError(f"no record of adapters and profiles for a {type(backend).__name__}")


class SqliteRecords:
    def __init__(self, path: Path):
        from ragtune.retrieval.store import connect

        path.parent.mkdir(parents=True, exist_ok=True)
        self.where = str(path)
        self._conn = connect(path)
        self._conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_MS)}")
        self._conn.execute(SQLITE_TABLE)
        self._conn.execute(SQLITE_FILES)
        self._lock = threading.Lock()  # one connection, used from worker threads

    def put(
        self, kind: Kind, name: str, value: dict[str, Any] | None, *, files: tuple[str, bytes] | None = None
    ) -> int:
        from ragtune.retrieval.store import transaction

        with self._lock, _sqlite_errors(self.where), transaction(self._conn, "IMMEDIATE") as conn:
            if files is not None:
                conn.execute("INSERT INTO adapter_files VALUES (?, ?) ON CONFLICT DO NOTHING", files)
            seq = int(conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM records").fetchone()[0])
            conn.execute(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, name) DO UPDATE "
                "SET value = excluded.value, seq = excluded.seq, updated_at = excluded.updated_at",
                (kind, name, _dumps(value), seq, time.time()),
            )
            if kind == "adapter":
                conn.execute(SQLITE_PRUNE)
            return seq

    def files(self, fingerprint: str) -> bytes | None:
        with self._lock, _sqlite_errors(self.where):
            row = self._conn.execute(
                "SELECT data FROM adapter_files WHERE fingerprint = ?", (fingerprint,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def since(self, seq: int) -> list[Row]:
        with self._lock, _sqlite_errors(self.where):
            rows = self._conn.execute(
                "SELECT seq, kind, name, value, updated_at FROM records WHERE seq > ? ORDER BY seq", (seq,)
            ).fetchall()
        return [Row(s, k, n, None if v is None else json.loads(v), u) for s, k, n, v, u in rows]

    def close(self) -> None:
        self._conn.close()


@contextmanager
def _sqlite_errors(where: str) -> Iterator[None]:
    """A SQLite failure (locked past the timeout, disk full, file gone) as store_unavailable."""
    try:
        yield
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"the record of adapters and profiles at {where} failed: {exc}") from None


class PgRecords:
    """A table in the store's database, reached through the store's connection pool."""

    def __init__(self, backend: PostgresBackend):
        self._backend = backend
        self.where = backend.where
        with backend.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (RECORDS_LOCK,))  # replicas starting together
            conn.execute(PG_TABLE)
            conn.execute(PG_FILES)

    def put(
        self, kind: Kind, name: str, value: dict[str, Any] | None, *, files: tuple[str, bytes] | None = None
    ) -> int:
        with self._backend.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (RECORDS_LOCK,))  # seq order = commit order
            if files is not None:
                conn.execute(
                    "INSERT INTO ragtune_adapter_files VALUES (%s, %s) ON CONFLICT DO NOTHING", files
                )
            row = conn.execute(
                "INSERT INTO ragtune_records VALUES (%s, %s, %s::jsonb, "
                "(SELECT coalesce(max(seq), 0) + 1 FROM ragtune_records), %s) ON CONFLICT (kind, name) "
                "DO UPDATE SET value = excluded.value, seq = excluded.seq, updated_at = excluded.updated_at "
                "RETURNING seq",
                (kind, name, _dumps(value), time.time()),
            ).fetchone()
            if kind == "adapter":
                conn.execute(PG_PRUNE)
        assert row is not None  # RETURNING gives the row written
        return int(row[0])

    def files(self, fingerprint: str) -> bytes | None:
        with self._backend.connection() as conn:
            row = conn.execute(
                "SELECT data FROM ragtune_adapter_files WHERE fingerprint = %s", (fingerprint,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def since(self, seq: int) -> list[Row]:
        with self._backend.connection() as conn:
            rows = conn.execute(
                "SELECT seq, kind, name, value, updated_at FROM ragtune_records WHERE seq > %s ORDER BY seq",
                (seq,),
            ).fetchall()
        return [Row(*r) for r in rows]

    def close(self) -> None:
        pass  # the connections belong to the store's pool


def _dumps(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)
