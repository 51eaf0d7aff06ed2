"""The library: every collection of one store backend, sharing one loaded embedder per model.

The backend is SQLite files under the indexes folder, or a PostgreSQL database when
`RAGTUNE_RETRIEVAL__STORE_URL` names one (retrieval/storage.py).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import get_args

from ragtune.core.errors import CollectionNotFound, RagtuneError
from ragtune.core.names import NAME_PATTERN
from ragtune.retrieval.collection import Collection
from ragtune.retrieval.documents import check_chunking
from ragtune.retrieval.embed_backends import load_embedder
from ragtune.retrieval.embedder import Embedder
from ragtune.retrieval.settings import IndexType, RetrievalSettings
from ragtune.retrieval.storage import Backend, hide_password

_NAME = re.compile(NAME_PATTERN)


SNAPSHOTS = ".pg-snapshots"  # under the indexes folder: a PostgreSQL replica's local snapshots


def open_backend(root: Path, store_url: str | None, *, timeout: float = 5.0) -> Backend:
    """SQLite under `root` when `store_url` is unset, else the database it names (`timeout`:
    how long PostgreSQL connections are waited for)."""
    if not store_url:
        from ragtune.retrieval.store import SqliteBackend

        return SqliteBackend(root)
    if store_url.startswith(("postgresql://", "postgres://")):
        from ragtune.retrieval.store_pg import PostgresBackend

        return PostgresBackend(store_url, snapshots=root / SNAPSHOTS, timeout=timeout)
    raise RagtuneError(
        f"RAGTUNE_RETRIEVAL__STORE_URL must be unset (SQLite under the indexes folder) or a "
        f"postgresql:// URL, got {hide_password(store_url)!r}",
        param="store_url",
    )


def check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith(".tmp"):
        raise RagtuneError(
            f"bad collection name {name!r}: 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit",
            param="collection",
        )


class Library:
    def __init__(
        self, root: Path, settings: RetrievalSettings, *, embedders: Mapping[str, Embedder] | None = None
    ):
        """`embedders` pre-seeds the embedder cache by name (tests and benchmarks inject their own).
        Collections live under `root`, or in the database `settings.store_url` names."""
        self.root = Path(root)
        self.settings = settings
        self.backend = open_backend(self.root, settings.store_url, timeout=settings.store_timeout)
        self._embedders: dict[str, Embedder] = dict(embedders or {})
        self._collections: dict[str, Collection] = {}
        self._lock = threading.RLock()

    def embedder(self, name: str | None = None) -> Embedder:
        name = name or self.settings.embedder
        with self._lock:
            if name not in self._embedders:
                self._embedders[name] = load_embedder(
                    name,
                    backend=self.settings.embed_backend,
                    dtype=self.settings.embed_dtype,
                    query_backend=self.settings.embed_query_backend,
                    cache_dir=self.settings.embed_cache,
                    query_cache_size=self.settings.query_cache_size,
                )
            return self._embedders[name]

    def create(
        self,
        name: str,
        *,
        index_type: IndexType | str | None = None,
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        embedder: str | None = None,
    ) -> Collection:
        check_name(name)
        index_type = index_type or self.settings.index_type
        if index_type not in get_args(IndexType):
            raise RagtuneError(
                f"index_type must be one of {', '.join(get_args(IndexType))}, got {index_type!r}",
                param="index_type",
            )
        tokens = chunk_tokens if chunk_tokens is not None else self.settings.chunk_tokens
        overlap = chunk_overlap if chunk_overlap is not None else self.settings.chunk_overlap
        model = self.embedder(embedder)
        check_chunking(tokens, overlap, model.max_tokens)
        with self._lock:
            self.backend.create(
                name,
                {
                    "embedder": model.id,
                    "dimension": model.dimension,
                    # Any backend may search the collection later; the weights must be the same.
                    **({"embedder_fingerprint": model.fingerprint} if model.fingerprint else {}),
                    "index_type": index_type,
                    "chunk_tokens": tokens,
                    "chunk_overlap": overlap,
                },
            )
            return self.open(name)

    def open(self, name: str) -> Collection:
        check_name(name)
        with self._lock:
            found = self._collections.get(name)
            if found is not None:
                if found.store.is_current():
                    return found
                # Dropped by another process or replica (perhaps made again): open it afresh. The
                # old handle is left to requests still holding it; they fail with "was dropped".
                del self._collections[name]
            if not self.backend.exists(name):
                known = ", ".join(self.names()) or "none yet"
                raise CollectionNotFound(
                    f"no collection {name!r} in {self.backend.where} (known: {known}); create it with "
                    f"`ragtune collections create {name}`, or over HTTP: POST /v1/collections "
                    f'{{"name": "{name}"}}',
                    param="collection",
                )
            collection = Collection(self.backend.open(name), self.settings, self.embedder)
            collection.try_snapshot()
            self._collections[name] = collection
            return collection

    def drop(self, name: str) -> None:
        check_name(name)
        with self._lock:
            if not self.backend.exists(name):
                raise CollectionNotFound(
                    f"no collection {name!r} in {self.backend.where}", param="collection"
                )
            collection = self._collections.pop(name, None)
            if collection is not None:
                collection.close()
            self.backend.drop(name, self.settings.lock_timeout)

    def names(self) -> list[str]:
        return [n for n in self.backend.names() if _NAME.fullmatch(n)]

    def close(self) -> None:
        with self._lock:
            for collection in self._collections.values():
                collection.close()
            self._collections.clear()
            self.backend.close()
