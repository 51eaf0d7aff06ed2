"""The transactions of the SQLite store (retrieval/store.py): its reads and writes in SQL.

`SqliteTxn` implements retrieval/storage.py's `Txn` over one connection inside a transaction;
the FTS5 index follows the chunks table by the schema's triggers, so it is never written here.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from ragtune.retrieval.chunking import Chunk
from ragtune.retrieval.filters import SqliteFields, check_fields, compile_filter
from ragtune.retrieval.sparse import SparseIndex, Tokenizer, fts_text
from ragtune.retrieval.storage import Changes, ChunkRow
from ragtune.retrieval.types import Document


def select_in(conn: sqlite3.Connection, sql: str, values: Iterable[Any]) -> Iterator[Any]:
    """Rows of `sql`, whose `{marks}` is an IN list, for every value: run in batches of 900
    (SQLite caps the parameters of one statement)."""
    values = list(values)
    for lo in range(0, len(values), 900):
        part = values[lo : lo + 900]
        yield from conn.execute(sql.format(marks=",".join("?" * len(part))), part)


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
