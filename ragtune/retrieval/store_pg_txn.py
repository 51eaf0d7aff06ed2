"""The transactions of the PostgreSQL store (retrieval/store_pg.py): its reads and writes in SQL.

Full-text terms are not stored: BM25 tokenises chunk texts with FTS5's tokenizer in memory
(retrieval/sparse.py), so both stores rank exactly alike. Arrays travel as one parameter
(`= ANY(%s)`, `unnest`), so a batch is a few statements whatever its size.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import psycopg

from ragtune.core.errors import InvalidDocument
from ragtune.retrieval.chunking import Chunk
from ragtune.retrieval.filters import check_fields, compile_filter
from ragtune.retrieval.sparse import SparseIndex, Tokenizer, count, fts_text
from ragtune.retrieval.storage import Changes, ChunkRow
from ragtune.retrieval.types import Document

SPARSE_BATCH = 5000  # chunks tokenised per BM25 segment on a cold build


CHANGES_KEPT = 1000  # writes the change log reaches back, per collection
PRUNE_EVERY = 100  # every this many writes, older entries are deleted


class PgTxn:
    """retrieval/storage.py's `Txn` on one pooled connection inside a transaction."""

    def __init__(self, conn: psycopg.Connection[Any], collection_id: int, version: int):
        self.conn = conn
        self.id = collection_id
        self._version = version  # read when the transaction began (its snapshot, or under the lock)

    def one(self, sql: str, *params: Any) -> Any:
        return self.conn.execute(sql, params).fetchone()

    def rows(self, sql: str, *params: Any, binary: bool = False) -> list[Any]:
        return self.conn.execute(sql, params, binary=binary).fetchall()

    def _ints(self, sql: str, *params: Any) -> np.ndarray:
        rows = self.rows(sql, *params, binary=True)
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    # -- reads ---------------------------------------------------------------------------
    def version(self) -> int:
        return self._version

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
    def add_documents(
        self,
        docs: Sequence[Document],
        hashes: dict[str, str],
        chunks: dict[str, list[Chunk]],
        vectors: dict[str, np.ndarray],
        now: float,
    ) -> list[int]:
        """Two statements for the whole batch: documents upserted, then every chunk inserted."""
        metadata = [json.dumps(d.metadata, ensure_ascii=False) for d in docs]
        for doc, meta in zip(docs, metadata, strict=True):
            if "\x00" in "".join((doc.text, doc.title or "", doc.source or "", doc.id)) or "\\u0000" in meta:
                raise InvalidDocument(
                    f"document {doc.id!r}: PostgreSQL cannot store NUL characters", param="text"
                )
        self.conn.execute(
            "INSERT INTO documents(collection, id, title, source, metadata, text, content_hash, created_at, "
            "updated_at) SELECT %s, i, t, s, m::jsonb, x, h, %s, %s FROM unnest(%s::text[], %s::text[], "
            "%s::text[], %s::text[], %s::text[], %s::text[]) WITH ORDINALITY AS u(i, t, s, m, x, h, n) "
            "ORDER BY n "
            "ON CONFLICT (collection, id) DO UPDATE SET title = excluded.title, source = excluded.source, "
            "metadata = excluded.metadata, text = excluded.text, content_hash = excluded.content_hash, "
            "updated_at = excluded.updated_at",
            (
                self.id,
                now,
                now,
                [d.id for d in docs],
                [d.title for d in docs],
                [d.source for d in docs],
                metadata,
                [d.text for d in docs],
                [hashes[d.id] for d in docs],
            ),
        )
        flat = [(d, c) for d in docs for c in chunks[d.id]]
        rows = self.rows(
            'INSERT INTO chunks(collection, doc_id, seq, title, text, start, "end", hash, embedding) '
            "SELECT %s, d, s, ti, t, a, b, h, e FROM unnest(%s::text[], %s::int[], %s::text[], %s::text[], "
            "%s::int[], %s::int[], %s::text[], %s::bytea[]) WITH ORDINALITY AS u(d, s, ti, t, a, b, h, e, n) "
            "ORDER BY n RETURNING doc_id, seq, id",
            self.id,
            [d.id for d, _ in flat],
            [c.seq for _, c in flat],
            [d.title for d, _ in flat],
            [c.text for _, c in flat],
            [c.start for _, c in flat],
            [c.end for _, c in flat],
            [c.hash for _, c in flat],
            [vectors[c.hash].astype(np.float32).tobytes() for _, c in flat],
        )
        ids = {(d, seq): i for d, seq, i in rows}
        return [int(ids[d.id, c.seq]) for d, c in flat]

    def delete_chunks(self, ids: np.ndarray) -> None:
        sql = "DELETE FROM chunks WHERE collection = %s AND id = ANY(%s::bigint[])"
        self.conn.execute(sql, (self.id, [int(i) for i in ids]))

    def delete_documents(self, ids: Sequence[str]) -> int:
        sql = "DELETE FROM documents WHERE collection = %s AND id = ANY(%s::text[])"
        return self.conn.execute(sql, (self.id, list(ids))).rowcount

    def bump_version(self, added: np.ndarray, removed: np.ndarray) -> int:
        row = self.one(
            "UPDATE collections SET version = version + 1 WHERE id = %s RETURNING version", self.id
        )
        self._version = int(row[0])
        self.conn.execute(
            "INSERT INTO changes(collection, version, added, removed) "
            "VALUES (%s, %s, %s::bigint[], %s::bigint[])",
            (self.id, self._version, [int(i) for i in added], [int(i) for i in removed]),
        )
        if self._version % PRUNE_EVERY == 0:
            # A replica further behind than the log reaches diffs its indexes by chunk id instead.
            self.conn.execute(
                "DELETE FROM changes WHERE collection = %s AND version <= %s",
                (self.id, self._version - CHANGES_KEPT),
            )
        return self._version

    def commit(self) -> None:
        self.conn.execute("COMMIT")
