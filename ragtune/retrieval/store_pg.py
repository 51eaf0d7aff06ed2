"""The PostgreSQL document store: one database shared by every replica (psycopg 3).

All collections share four tables: `collections` (one row each: its config and `version`, the
count of committed writes), `documents`, `chunks` (text, offsets, content hash, float32
embedding) and `changes` (per write: the chunk ids it added and removed). A writer holds its
collection's row lock (`SELECT ... FOR UPDATE`) for the whole transaction, so writers of one
collection are serialised by the database, whichever replica they run in; a reader's
REPEATABLE READ transaction sees one committed state from its first statement to its end.
Each replica's FAISS and BM25 indexes are derived in memory and follow `changes`.

The SQL of reads and writes inside a transaction is in retrieval/store_pg_txn.py.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Any

import filelock
import numpy as np
import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from ragtune.core.errors import (
    CollectionExists,
    CollectionNotFound,
    RagtuneError,
    StoreUnavailable,
    WriterBusy,
)
from ragtune.retrieval.filters import compile_filter
from ragtune.retrieval.storage import ChunkRow, hide_password
from ragtune.retrieval.store_pg_txn import PgTxn

# Ordered migrations: index i brings the schema from version i to i + 1. Append only.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE collections (
        id serial PRIMARY KEY,
        name text NOT NULL UNIQUE,
        meta jsonb NOT NULL,
        version bigint NOT NULL DEFAULT 0
    );
    CREATE TABLE documents (
        collection integer NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
        id text NOT NULL,
        pos bigserial,  -- first-insertion order, kept on update (SQLite's rowid)
        title text,
        source text,
        metadata jsonb NOT NULL,
        text text NOT NULL,
        content_hash text NOT NULL,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL,
        PRIMARY KEY (collection, id)
    );
    CREATE INDEX documents_pos ON documents(collection, pos);
    CREATE TABLE chunks (
        id bigserial PRIMARY KEY,  -- never reused: FAISS ids stay unambiguous
        collection integer NOT NULL,
        doc_id text NOT NULL,
        seq integer NOT NULL,
        title text,
        text text NOT NULL,
        start integer NOT NULL,
        "end" integer NOT NULL,
        hash text NOT NULL,
        embedding bytea NOT NULL,
        UNIQUE (collection, doc_id, seq),
        FOREIGN KEY (collection, doc_id) REFERENCES documents(collection, id) ON DELETE CASCADE
    );
    CREATE INDEX chunks_collection ON chunks(collection, id);
    CREATE INDEX chunks_hash ON chunks(collection, hash);
    CREATE TABLE changes (
        collection integer NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
        version bigint NOT NULL,
        added bigint[] NOT NULL,
        removed bigint[] NOT NULL,
        PRIMARY KEY (collection, version)
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
MIGRATION_LOCK = 0x5241_4754  # pg_advisory_xact_lock key: replicas starting together migrate once
POOL_SIZE = 16


def migrate(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS ragtune_schema (version integer NOT NULL)")
        row = conn.execute("SELECT version FROM ragtune_schema").fetchone()
        current = row[0] if row else 0
        if row is None:
            conn.execute("INSERT INTO ragtune_schema VALUES (0)")
        if current > SCHEMA_VERSION:
            raise RagtuneError(f"store schema {current} is newer than this ragtune ({SCHEMA_VERSION})")
        for version in range(current, SCHEMA_VERSION):
            conn.execute(MIGRATIONS[version])
            conn.execute("UPDATE ragtune_schema SET version = %s", (version + 1,))


class PostgresBackend:
    """Every collection in one database, reached through one connection pool."""

    def __init__(self, url: str, snapshots: Path | None = None, *, timeout: float = 5.0):
        """`snapshots`: a local folder where this replica keeps snapshots of its derived indexes,
        so that opening a large collection again reads files instead of every embedding.
        `timeout`: seconds a request waits for a connection before its 503 (and the connect timeout)."""
        self.url = url
        self.where = hide_password(url)
        self.snapshots = snapshots
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                migrate(conn)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(
                f"cannot reach the PostgreSQL store at {self.where}: {self._scrub(exc)} "
                "(check RAGTUNE_RETRIEVAL__STORE_URL and that the server is up)",
                param="store_url",
            ) from None
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=POOL_SIZE,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(timeout))},
            timeout=timeout,
            name="ragtune-store",
        )
        self.prune_snapshots()

    def _scrub(self, exc: BaseException) -> str:
        message = " ".join(str(exc).split())
        with suppress(psycopg.ProgrammingError):
            password = psycopg.conninfo.conninfo_to_dict(self.url).get("password")
            if password:
                message = message.replace(str(password), "***")
        return message

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection (waiting up to `timeout`, else the store's timeout); a lost server
        is a 503 that names the store, not a traceback."""
        try:
            with self.pool.connection(timeout=timeout) as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            # Idle connections died with this one: drop them now, so that the first request
            # after the server is back gets a fresh connection rather than another failure.
            with suppress(Exception):
                self.pool.check()
            raise StoreUnavailable(
                f"the PostgreSQL store at {self.where} failed: {self._scrub(exc)}"
            ) from None

    def ping(self, timeout: float) -> None:
        with self.connection(timeout) as conn:
            conn.execute("SELECT 1")

    def names(self) -> list[str]:
        with self.connection() as conn:
            return [r[0] for r in conn.execute("SELECT name FROM collections ORDER BY name")]

    def exists(self, name: str) -> bool:
        with self.connection() as conn:
            return conn.execute("SELECT 1 FROM collections WHERE name = %s", (name,)).fetchone() is not None

    def create(self, name: str, config: dict[str, Any]) -> None:
        meta = {"store_id": uuid.uuid4().hex, "created_at": time.time(), **config}
        try:
            with self.connection() as conn:
                conn.execute(
                    "INSERT INTO collections(name, meta) VALUES (%s, %s::jsonb)", (name, json.dumps(meta))
                )
        except pg_errors.UniqueViolation:
            raise CollectionExists(
                f"collection {name!r} already exists in {self.where}", param="collection"
            ) from None

    def open(self, name: str) -> PgStore:
        with self.connection() as conn:
            row = conn.execute("SELECT id, meta FROM collections WHERE name = %s", (name,)).fetchone()
        if row is None:
            raise CollectionNotFound(f"no collection {name!r} in {self.where}", param="collection")
        return PgStore(self, row[0], name, row[1])

    def drop(self, name: str, timeout: float) -> None:
        with self.connection() as conn, conn.transaction():
            row = _lock_row(conn, "name = %s", name, timeout, name)
            if row is None:
                raise CollectionNotFound(f"no collection {name!r} in {self.where}", param="collection")
            store_id = conn.execute(
                "DELETE FROM collections WHERE name = %s RETURNING meta->>'store_id'", (name,)
            ).fetchone()
        if self.snapshots is not None and store_id is not None:
            shutil.rmtree(self.snapshots / str(store_id[0]), ignore_errors=True)

    def prune_snapshots(self) -> None:
        """Delete this machine's snapshots of collections that no longer exist (dropped through
        another replica meanwhile)."""
        if self.snapshots is None or not self.snapshots.is_dir():
            return
        with self.connection() as conn:
            live = {r[0] for r in conn.execute("SELECT meta->>'store_id' FROM collections")}
        recent = time.time() - 60  # a collection made since the query may be saving its first one
        for folder in self.snapshots.iterdir():
            with suppress(OSError):
                if folder.is_dir() and folder.name not in live and folder.stat().st_mtime < recent:
                    shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        self.pool.close()


def _lock_row(conn: psycopg.Connection[Any], where: str, key: Any, timeout: float, name: str) -> Any:
    """Lock one collection's row for the open transaction: its writers queue here."""
    if timeout > 0:
        conn.execute(f"SET LOCAL lock_timeout = '{int(timeout * 1000)}ms'")
    wait = "" if timeout > 0 else " NOWAIT"
    try:
        return conn.execute(
            f"SELECT version FROM collections WHERE {where} FOR UPDATE{wait}", (key,)
        ).fetchone()
    except pg_errors.LockNotAvailable:
        raise WriterBusy(
            f"collection {name!r} is being written by another process or replica; waited {timeout:g} s. "
            "Try again when it finishes, or raise RAGTUNE_RETRIEVAL__LOCK_TIMEOUT"
        ) from None


class PgStore:
    """One collection in the shared database (retrieval/storage.py's `DocumentStore`)."""

    # Each replica keeps its own snapshots, on its own disk, saved at open and close: a save under
    # the collection's row lock would hold up the writers of every replica.
    snapshot_while_writing = False

    def __init__(self, backend: PostgresBackend, collection_id: int, name: str, config: dict[str, Any]):
        self.backend = backend
        self.id = collection_id
        self.name = name
        self.config = config
        # Named by the collection's store_id: one made again under the same name starts afresh.
        self.snapshot_dir = backend.snapshots / str(config["store_id"]) if backend.snapshots else None

    @contextmanager
    def snapshot_lock(self) -> Iterator[object]:
        """A file lock in the snapshot folder: other processes of this machine share it."""
        assert self.snapshot_dir is not None
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(self.snapshot_dir / ".lock", thread_local=False)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            raise WriterBusy(f"another process is saving the snapshot of {self.name!r}") from None
        try:
            yield lock
        finally:
            lock.release()

    @contextmanager
    def _transaction(self, begin: str, lock: str = "") -> Iterator[PgTxn]:
        """`begin` and the collection's version in one round trip (a search makes three: this,
        its rows, the end). `lock` makes the version's read take the collection's row lock."""
        with self.backend.connection() as conn:
            try:
                try:
                    cur = conn.execute(
                        f"{begin}; SELECT version FROM collections WHERE id = {int(self.id)}{lock}"
                    )
                except pg_errors.LockNotAvailable:
                    raise WriterBusy(
                        f"collection {self.name!r} is being written by another process or replica; "
                        "try again when it finishes, or raise RAGTUNE_RETRIEVAL__LOCK_TIMEOUT"
                    ) from None
                while cur.description is None and cur.nextset():
                    pass
                row = cur.fetchone()
                if row is None:
                    raise CollectionNotFound(f"collection {self.name!r} was dropped", param="collection")
                yield PgTxn(conn, self.id, int(row[0]))
            finally:
                if conn.info.transaction_status != TransactionStatus.IDLE:
                    with suppress(psycopg.Error):
                        conn.execute("ROLLBACK")

    def reading(self) -> AbstractContextManager[PgTxn]:
        return self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def writing(self, timeout: float) -> AbstractContextManager[PgTxn]:
        """Writers of this collection queue on its row, whichever replica they run in."""
        if timeout > 0:
            return self._transaction(f"BEGIN; SET LOCAL lock_timeout = {int(timeout * 1000)}", " FOR UPDATE")
        return self._transaction("BEGIN", " FOR UPDATE NOWAIT")

    # One statement each: a statement sees one snapshot, so no transaction (and no round trips
    # to open and end one) is needed for a search's reads.
    def rows_at(self, ids: Sequence[int]) -> tuple[int, dict[int, ChunkRow]]:
        with self.backend.connection() as conn:
            rows = conn.execute(
                "SELECT k.version, r.* FROM collections k LEFT JOIN LATERAL ("
                'SELECT c.id, c.doc_id, c.seq, c.text, c.start, c."end", d.title, d.source, d.metadata '
                "FROM chunks c JOIN documents d ON d.collection = c.collection AND d.id = c.doc_id "
                "WHERE c.collection = k.id AND c.id = ANY(%s::bigint[])) r ON true WHERE k.id = %s",
                ([int(i) for i in ids], self.id),
            ).fetchall()
        if not rows:
            raise CollectionNotFound(f"collection {self.name!r} was dropped", param="collection")
        return int(rows[0][0]), {r[1]: ChunkRow(*r[2:]) for r in rows if r[1] is not None}

    def ids_where_at(self, filter: dict[str, Any]) -> tuple[int, np.ndarray]:
        where, params = compile_filter(filter, dialect="postgres")
        with self.backend.connection() as conn:
            row = conn.execute(
                "SELECT k.version, ARRAY(SELECT c.id FROM chunks c JOIN documents d "
                "ON d.collection = c.collection AND d.id = c.doc_id "
                f"WHERE c.collection = k.id AND ({where})) FROM collections k WHERE k.id = %s",
                (*params, self.id),
            ).fetchone()
        if row is None:
            raise CollectionNotFound(f"collection {self.name!r} was dropped", param="collection")
        return int(row[0]), np.asarray(row[1], dtype=np.int64)

    def is_current(self) -> bool:
        with self.backend.connection() as conn:
            return conn.execute("SELECT 1 FROM collections WHERE id = %s", (self.id,)).fetchone() is not None

    def schema_version(self) -> int:
        with self.backend.connection() as conn:
            row = conn.execute("SELECT version FROM ragtune_schema").fetchone()
        return int(row[0]) if row else 0

    def check(self) -> bool:
        """The change log is whole: one entry per committed write, from its oldest kept entry (older
        ones are pruned, store_pg_txn.CHANGES_KEPT) up to the collection's version."""
        with self.reading() as txn:
            row = txn.one(
                "SELECT c.version, count(g.version), coalesce(min(g.version), c.version + 1), "
                "coalesce(max(g.version), 0) FROM collections c LEFT JOIN changes g ON g.collection = c.id "
                "WHERE c.id = %s GROUP BY c.version",
                self.id,
            )
        if row is None:
            return False
        version, count, oldest, newest = (int(x) for x in row)
        return count == version - oldest + 1 and newest == version

    def disk_bytes(self) -> int:
        with self.reading() as txn:
            row = txn.one(
                "SELECT (SELECT coalesce(sum(pg_column_size(d.*)), 0) FROM documents d WHERE collection = %s)"
                " + (SELECT coalesce(sum(pg_column_size(c.*)), 0) FROM chunks c WHERE collection = %s)",
                self.id,
                self.id,
            )
        return int(row[0])

    def close(self) -> None:
        pass  # the connections belong to the backend's pool
