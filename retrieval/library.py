"""The library: every collection under one folder, sharing one loaded embedder per model."""

from __future__ import annotations

import re
import shutil
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path

import filelock

from retrieval.collection import LOCK_FILE, STORE_FILE, Collection, check_chunking
from retrieval.embedder import Embedder, load_embedder
from retrieval.errors import CollectionExists, CollectionNotFound, RagtuneError, WriterBusy
from retrieval.settings import IndexType, RetrievalSettings
from retrieval.store import Store

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


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
        """`embedders` pre-seeds the embedder cache by name (tests and benchmarks inject their own)."""
        self.root = Path(root)
        self.settings = settings
        self._embedders: dict[str, Embedder] = dict(embedders or {})
        self._collections: dict[str, Collection] = {}
        self._lock = threading.RLock()

    def embedder(self, name: str | None = None) -> Embedder:
        name = name or self.settings.embedder
        with self._lock:
            if name not in self._embedders:
                self._embedders[name] = load_embedder(
                    name, dtype=self.settings.embed_dtype, query_cache_size=self.settings.query_cache_size
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
        if index_type not in ("flat", "hnsw", "ivf"):
            raise RagtuneError(
                f"index_type must be flat, hnsw or ivf, got {index_type!r}", param="index_type"
            )
        tokens = chunk_tokens if chunk_tokens is not None else self.settings.chunk_tokens
        overlap = chunk_overlap if chunk_overlap is not None else self.settings.chunk_overlap
        model = self.embedder(embedder)
        check_chunking(tokens, overlap, model.max_tokens)
        with self._lock:
            final = self.root / name
            if (final / STORE_FILE).exists():
                raise CollectionExists(
                    f"collection {name!r} already exists in {self.root}", param="collection"
                )
            # Build in a scratch folder and rename: a crash never leaves half a collection.
            self.root.mkdir(parents=True, exist_ok=True)
            scratch = self.root / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
            scratch.mkdir()
            try:
                store = Store(scratch / STORE_FILE)
                store.init_meta(
                    {
                        "embedder": model.id,
                        "dimension": model.dimension,
                        "index_type": index_type,
                        "chunk_tokens": tokens,
                        "chunk_overlap": overlap,
                    }
                )
                store.close()
                if final.exists() and not any(final.iterdir()):
                    final.rmdir()
                scratch.rename(final)
            except OSError:
                shutil.rmtree(scratch, ignore_errors=True)
                if final.exists():
                    raise CollectionExists(f"collection {name!r} already exists in {self.root}") from None
                raise
            return self.open(name)

    def open(self, name: str) -> Collection:
        check_name(name)
        with self._lock:
            found = self._collections.get(name)
            if found is not None:
                return found
            path = self.root / name
            if not (path / STORE_FILE).exists():
                known = ", ".join(self.names()) or "none yet"
                raise CollectionNotFound(
                    f"no collection {name!r} in {self.root} (known: {known}); create it with "
                    f"`ragtune collections create {name}`",
                    param="collection",
                )
            collection = Collection(path, self.settings, self.embedder)
            collection.try_snapshot()
            self._collections[name] = collection
            return collection

    def drop(self, name: str) -> None:
        check_name(name)
        with self._lock:
            path = self.root / name
            if not (path / STORE_FILE).exists():
                raise CollectionNotFound(f"no collection {name!r} in {self.root}", param="collection")
            collection = self._collections.pop(name, None)
            if collection is not None:
                collection.close()
            lock = filelock.FileLock(path / LOCK_FILE, thread_local=False)
            try:
                with lock.acquire(timeout=self.settings.lock_timeout):
                    # Rename first so a reader never opens a half-deleted folder.
                    trash = self.root / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
                    path.rename(trash)
            except filelock.Timeout:
                raise WriterBusy(
                    f"collection {name!r} is being written by another process; try again"
                ) from None
            shutil.rmtree(trash, ignore_errors=True)

    def names(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if (p / STORE_FILE).exists() and _NAME.fullmatch(p.name)
        )

    def close(self) -> None:
        with self._lock:
            for collection in self._collections.values():
                collection.close()
            self._collections.clear()
