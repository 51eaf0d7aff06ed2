"""The PostgreSQL document store: one database shared by every replica (psycopg 3).

All collections share four tables: `collections` (one row each: its config and `version`, the
count of committed writes), `documents`, `chunks` (text, offsets, content hash, float32
embedding) and `changes` (per write: the chunk ids it added and removed). A writer holds its
collection's row lock (`SELECT ... FOR UPDATE`) for the whole transaction, so writers of one
collection are serialised by the database, whichever replica they run in; a reader's
REPEATABLE READ transaction sees one committed state from its first statement to its end.
Each replica's FAISS and BM25 indexes are derived in memory and follow `changes`.

Full-text terms are not stored: BM25 tokenises chunk texts with FTS5's tokenizer in memory
(retrieval/sparse.py), so both stores rank exactly alike.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from retrieval.chunking import Chunk
from retrieval.errors import (
    CollectionExists,
    CollectionNotFound,
    InvalidDocument,
    RagtuneError,
    StoreUnavailable,
    WriterBusy,
)
from retrieval.filters import check_fields, compile_filter
from retrieval.sparse import SparseIndex, Tokenizer, count, fts_text
from retrieval.storage import Changes, ChunkRow, hide_password
from retrieval.types import Document

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
SPARSE_BATCH = 5000  # chunks tokenised per BM25 segment on a cold build


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

    def __init__(self, url: str):
        self.url = url
        self.where = hide_password(url)
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
            url, min_size=1, max_size=POOL_SIZE, kwargs={"autocommit": True}, name="ragtune-store"
        )

    def _scrub(self, exc: BaseException) -> str:
        message = " ".join(str(exc).split())
        with suppress(psycopg.ProgrammingError):
            password = psycopg.conninfo.conninfo_to_dict(self.url).get("password")
            if password:
                message = message.replace(str(password), "***")
        return message

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection; a lost server is a 503 that names the store, not a traceback."""
        try:
            with self.pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise StoreUnavailable(
                f"the PostgreSQL store at {self.where} failed: {self._scrub(exc)}"
            ) from None

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
            conn.execute("DELETE FROM collections WHERE name = %s", (name,))

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

    snapshot_dir: Path | None = None  # each replica builds its indexes from the store; nothing on local disk

    def __init__(self, backend: PostgresBackend, collection_id: int, name: str, config: dict[str, Any]):
        self.backend = backend
        self.id = collection_id
        self.name = name
        self.config = config

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[psycopg.Connection[Any]]:
        with self.backend.connection() as conn:
            conn.execute(begin)
            try:
                yield conn
            finally:
                if conn.info.transaction_status != TransactionStatus.IDLE:
                    with suppress(psycopg.Error):
                        conn.execute("ROLLBACK")

    @contextmanager
    def reading(self) -> Iterator[PgTxn]:
        with self._transaction("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY") as conn:
            yield PgTxn(conn, self)

    @contextmanager
    def writing(self, timeout: float) -> Iterator[PgTxn]:
        with self._transaction("BEGIN") as conn:
            if _lock_row(conn, "id = %s", self.id, timeout, self.name) is None:
                raise CollectionNotFound(f"collection {self.name!r} was dropped", param="collection")
            yield PgTxn(conn, self)

    def schema_version(self) -> int:
        with self.backend.connection() as conn:
            row = conn.execute("SELECT version FROM ragtune_schema").fetchone()
        return int(row[0]) if row else 0

    def check(self) -> bool:
        """The change log is whole: one entry per committed write."""
        with self.reading() as txn:
            row = txn.one(
                "SELECT c.version, (SELECT count(*) FROM changes WHERE collection = c.id) "
                "FROM collections c WHERE c.id = %s",
                self.id,
            )
        return row is not None and row[0] == row[1]

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


class PgTxn:
    """retrieval/storage.py's `Txn` on one pooled connection inside a transaction."""

    def __init__(self, conn: psycopg.Connection[Any], store: PgStore):
        self.conn = conn
        self.store = store
        self.id = store.id

    def one(self, sql: str, *params: Any) -> Any:
        return self.conn.execute(sql, params).fetchone()

    def rows(self, sql: str, *params: Any, binary: bool = False) -> list[Any]:
        return self.conn.execute(sql, params, binary=binary).fetchall()

    def _ints(self, sql: str, *params: Any) -> np.ndarray:
        rows = self.rows(sql, *params, binary=True)
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    # -- reads ---------------------------------------------------------------------------
    def version(self) -> int:
        row = self.one("SELECT version FROM collections WHERE id = %s", self.id)
        if row is None:
            raise CollectionNotFound(f"collection {self.store.name!r} was dropped", param="collection")
        return int(row[0])

    def changes_since(self, version: int) -> Changes | None:
        rows = self.rows(
            "SELECT version, added, removed FROM changes WHERE collection = %s AND version > %s "
            "ORDER BY version",
            self.id,
            version,
        )
        if not rows or rows[0][0] != version + 1:
            return None  # not logged that far back: diff by chunk id instead
        added = np.array([i for r in rows for i in r[1]], dtype=np.int64)
        removed = np.array([i for r in rows for i in r[2]], dtype=np.int64)
        return Changes(np.setdiff1d(added, removed), removed)

    def chunk_ids(self) -> np.ndarray:
        return self._ints("SELECT id FROM chunks WHERE collection = %s ORDER BY id", self.id)

    def embeddings(self, ids: Sequence[int] | None, dim: int) -> tuple[np.ndarray, np.ndarray]:
        params: tuple[Any, ...] = (self.id,)
        if ids is None:
            sql = "SELECT id, embedding FROM chunks WHERE collection = %s ORDER BY id"
        else:
            sql = (
                "SELECT id, embedding FROM chunks WHERE collection = %s AND id = ANY(%s::bigint[]) "
                "ORDER BY id"
            )
            params = (self.id, [int(i) for i in ids])
        rows = self.rows(sql, *params, binary=True)
        out_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
        return out_ids, vecs

    def fts_texts(self, ids: Sequence[int]) -> list[str]:
        rows = self.rows(
            "SELECT id, title, text FROM chunks WHERE collection = %s AND id = ANY(%s::bigint[])",
            self.id,
            [int(i) for i in ids],
        )
        found = {i: fts_text(title, text) for i, title, text in rows}
        return [found[int(i)] for i in ids]

    def sparse_index(self, tokenizer: Tokenizer, ids: np.ndarray) -> SparseIndex:
        index = SparseIndex(tokenizer)
        for lo in range(0, len(ids), SPARSE_BATCH):
            part = ids[lo : lo + SPARSE_BATCH]
            index.add(count(tokenizer, part, self.fts_texts(part.tolist())))
        return index.merged() if index.needs_merge else index

    def embeddings_by_hash(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        rows = self.rows(
            "SELECT DISTINCT ON (hash) hash, embedding FROM chunks "
            "WHERE collection = %s AND hash = ANY(%s::text[])",
            self.id,
            list(dict.fromkeys(hashes)),
            binary=True,
        )
        return {h: np.frombuffer(b, dtype=np.float32) for h, b in rows}

    def content_hashes(self, doc_ids: Sequence[str]) -> dict[str, str]:
        sql = "SELECT id, content_hash FROM documents WHERE collection = %s AND id = ANY(%s::text[])"
        return dict(self.rows(sql, self.id, list(doc_ids)))

    def chunk_ids_of(self, doc_ids: Sequence[str]) -> np.ndarray:
        sql = "SELECT id FROM chunks WHERE collection = %s AND doc_id = ANY(%s::text[])"
        return self._ints(sql, self.id, list(doc_ids))

    def document(self, doc_id: str) -> Document | None:
        sql = "SELECT id, text, title, source, metadata FROM documents WHERE collection = %s AND id = %s"
        row = self.one(sql, self.id, doc_id)
        return None if row is None else Document(*row)

    def documents(self, offset: int, limit: int) -> list[Document]:
        rows = self.rows(
            "SELECT id, text, title, source, metadata FROM documents WHERE collection = %s "
            "ORDER BY pos LIMIT %s OFFSET %s",
            self.id,
            limit,
            offset,
        )
        return [Document(*r) for r in rows]

    def metadata_where(self, filter: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
        where, params = compile_filter(filter, dialect="postgres")
        sql = f"SELECT d.id, d.metadata FROM documents d WHERE d.collection = %s AND ({where})"
        return dict(self.rows(sql, self.id, *params))

    def chunk_ids_where(self, filter: dict[str, Any]) -> np.ndarray:
        where, params = compile_filter(filter, dialect="postgres")
        sql = (
            "SELECT c.id FROM chunks c JOIN documents d ON d.collection = c.collection AND d.id = c.doc_id "
            f"WHERE c.collection = %s AND ({where})"
        )
        return self._ints(sql, self.id, *params)

    def check_fields(self, filter: dict[str, Any], collection: str) -> None:
        check_fields(self, filter, collection)

    # `FieldProbe` for check_fields
    def has_documents(self) -> bool:
        return self.one("SELECT 1 FROM documents WHERE collection = %s LIMIT 1", self.id) is not None

    def has_field(self, name: str) -> bool:
        sql = "SELECT 1 FROM documents WHERE collection = %s AND metadata #> %s::text[] IS NOT NULL LIMIT 1"
        return self.one(sql, self.id, name.split(".")) is not None

    def field_names(self, limit: int) -> list[str]:
        sql = (
            'SELECT DISTINCT k COLLATE "C" FROM documents, jsonb_object_keys(metadata) k '
            "WHERE collection = %s ORDER BY 1 LIMIT %s"
        )
        return [r[0] for r in self.rows(sql, self.id, limit)]

    def chunk_rows(self, ids: Sequence[int]) -> dict[int, ChunkRow]:
        rows = self.rows(
            'SELECT c.id, c.doc_id, c.seq, c.text, c.start, c."end", d.title, d.source, d.metadata '
            "FROM chunks c JOIN documents d ON d.collection = c.collection AND d.id = c.doc_id "
            "WHERE c.collection = %s AND c.id = ANY(%s::bigint[])",
            self.id,
            [int(i) for i in ids],
        )
        return {r[0]: ChunkRow(*r[1:]) for r in rows}

    def counts(self) -> dict[str, int]:
        row = self.conn.execute(
            "SELECT (SELECT count(*) FROM documents WHERE collection = %(c)s), "
            "(SELECT count(*) FROM chunks WHERE collection = %(c)s), "
            "(SELECT count(*) FROM documents d WHERE collection = %(c)s AND NOT EXISTS "
            "(SELECT 1 FROM chunks c WHERE c.collection = d.collection AND c.doc_id = d.id))",
            {"c": self.id},
        ).fetchone()
        assert row is not None
        # No separate full-text table: BM25 reads the chunks themselves, so its rows are the chunks.
        return {"documents": row[0], "chunks": row[1], "fts_rows": row[1], "documents_without_chunks": row[2]}

    # -- writing -------------------------------------------------------------------------
    def put_document(self, doc: Document, content_hash: str, now: float) -> None:
        metadata = json.dumps(doc.metadata, ensure_ascii=False)
        if (
            any("\x00" in s for s in (doc.text, doc.title or "", doc.source or "", doc.id))
            or "\\u0000" in metadata
        ):
            raise InvalidDocument(
                f"document {doc.id!r}: PostgreSQL cannot store NUL characters", param="text"
            )
        self.conn.execute(
            "INSERT INTO documents(collection, id, title, source, metadata, text, content_hash, created_at, "
            "updated_at) VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s) "
            "ON CONFLICT (collection, id) DO UPDATE SET title = excluded.title, source = excluded.source, "
            "metadata = excluded.metadata, "
            "text = excluded.text, content_hash = excluded.content_hash, updated_at = excluded.updated_at",
            (self.id, doc.id, doc.title, doc.source, metadata, doc.text, content_hash, now, now),
        )

    def add_chunks(self, doc: Document, chunks: Sequence[Chunk], vectors: dict[str, np.ndarray]) -> list[int]:
        rows = self.rows(
            'INSERT INTO chunks(collection, doc_id, seq, title, text, start, "end", hash, embedding) '
            "SELECT %s, %s, s, %s, t, a, b, h, e FROM unnest(%s::int[], %s::text[], %s::int[], %s::int[], "
            "%s::text[], %s::bytea[]) AS u(s, t, a, b, h, e) ORDER BY s RETURNING seq, id",
            self.id,
            doc.id,
            doc.title,
            [c.seq for c in chunks],
            [c.text for c in chunks],
            [c.start for c in chunks],
            [c.end for c in chunks],
            [c.hash for c in chunks],
            [vectors[c.hash].astype(np.float32).tobytes() for c in chunks],
        )
        by_seq = dict(rows)
        return [int(by_seq[c.seq]) for c in chunks]

    def delete_chunks(self, ids: np.ndarray) -> None:
        sql = "DELETE FROM chunks WHERE collection = %s AND id = ANY(%s::bigint[])"
        self.conn.execute(sql, (self.id, [int(i) for i in ids]))

    def delete_documents(self, ids: Sequence[str]) -> int:
        sql = "DELETE FROM documents WHERE collection = %s AND id = ANY(%s::text[])"
        return self.conn.execute(sql, (self.id, list(ids))).rowcount

    def bump_version(self, added: np.ndarray, removed: np.ndarray) -> int:
        version = int(
            self.one("UPDATE collections SET version = version + 1 WHERE id = %s RETURNING version", self.id)[
                0
            ]
        )
        self.conn.execute(
            "INSERT INTO changes(collection, version, added, removed) "
            "VALUES (%s, %s, %s::bigint[], %s::bigint[])",
            (self.id, version, [int(i) for i in added], [int(i) for i in removed]),
        )
        return version

    def commit(self) -> None:
        self.conn.execute("COMMIT")
