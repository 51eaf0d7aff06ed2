"""One search of a collection: its options resolved once, then both derived indexes read at one
version of the store.

Callers (the HTTP routes, chat, the CLI, evaluation) pass what their request or profile says and
None where it says nothing; `search_options` fills the rest from the retrieval settings
(`RAGTUNE_RETRIEVAL__TOP_K`, `__MODE`, `__FUSION`) and checks every value, so no default is
written twice. `IndexSearch` runs the query against the in-memory indexes (FAISS and BM25,
retrieval/derived.py) and reads the hits' rows from the store at the version it searched.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast, get_args

import numpy as np

from ragtune.core.errors import RagtuneError, WriterBusy
from ragtune.retrieval.derived import TOKENIZER, DerivedIndexes
from ragtune.retrieval.embedder import Embedder
from ragtune.retrieval.fusion import FUSIONS, fuse
from ragtune.retrieval.settings import Fusion, RetrievalSettings, SearchMode
from ragtune.retrieval.storage import ChunkRow, DocumentStore
from ragtune.retrieval.types import Hit

MAX_K = 1000

_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ragtune-embed")
QueryVector = np.ndarray | Future[np.ndarray] | None


@dataclass(frozen=True)
class SearchOptions:
    k: int
    mode: SearchMode
    fusion: Fusion


def search_options(
    settings: RetrievalSettings,
    *,
    k: int | None = None,
    mode: str | None = None,
    fusion: str | None = None,
) -> SearchOptions:
    """The options of one search: each one given, else the retrieval settings' default."""
    k = settings.top_k if k is None else k
    mode = mode or settings.mode
    fusion = fusion or settings.fusion
    if fusion not in FUSIONS:
        raise RagtuneError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}", param="fusion")
    if mode not in get_args(SearchMode):
        raise RagtuneError(
            f"mode must be one of {', '.join(get_args(SearchMode))}, got {mode!r}", param="mode"
        )
    if not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise RagtuneError(f"k must be an integer from 1 to {MAX_K}, got {k!r}", param="k")
    return SearchOptions(k, cast(SearchMode, mode), cast(Fusion, fusion))


def query_vector(embedder: Embedder, query: str, mode: str) -> QueryVector:
    """The query's embedding, or a future of it: in a hybrid search it is computed (the slow
    part) beside the BM25 lookup, and reads no store. None for a sparse search."""
    if mode == "dense":
        return embedder.embed_query(query)
    if mode == "hybrid":
        cached = embedder.cached_query(query)
        return cached if cached is not None else _POOL.submit(embedder.embed_query, query)
    return None


class IndexSearch:
    """Searches of one collection's derived indexes, each consistent with one store version."""

    def __init__(self, store: DocumentStore, settings: RetrievalSettings, idx: DerivedIndexes):
        self.store = store
        self.settings = settings
        self.idx = idx

    def run(
        self, query: str, qvec: QueryVector, opts: SearchOptions, filter: dict[str, Any] | None
    ) -> list[Hit]:
        """Search the in-memory indexes at their version, then read the hits' rows together with
        the store's version (one statement on PostgreSQL): equal versions mean the hits are those
        of one committed state. Otherwise someone wrote: catch up and search again."""
        depth = opts.k if opts.mode != "hybrid" else max(opts.k, self.settings.candidates)
        terms = TOKENIZER.query_terms(query) if opts.mode != "dense" else []
        for _ in range(5):
            allowed_at, allowed = self._allowed(filter)
            if filter and allowed_at != self.idx.version:
                self.idx.catch_up()
                continue
            with self.idx.rw.read():
                searched_at = self.idx.version
                sparse = self.idx.sparse.search(terms, depth, allowed) if terms else []
                if isinstance(qvec, Future):  # BM25 ran while the query was embedded
                    qvec = qvec.result()
                dense: list[tuple[int, float]] = []
                if qvec is not None:
                    scores, ids = self.idx.vectors.search(qvec, depth, allowed)
                    dense = list(zip(ids.tolist(), scores.tolist(), strict=True))
            ranked = self._ranked(dense, sparse, opts)
            version, rows = self.store.rows_at([i for i, _ in ranked])
            if version == searched_at and allowed_at in (None, searched_at):
                return _hits(rows, ranked)
            self.idx.catch_up()
        raise WriterBusy(f"collection {self.store.name!r} changes faster than it can be searched; try again")

    def _allowed(self, filter: dict[str, Any] | None) -> tuple[int | None, np.ndarray | None]:
        """The chunk ids `filter` admits and the store version they were read at (None, None
        without a filter). A filter that admits nothing is checked for unknown fields: a typo
        is an error, not "no hits"."""
        if not filter:
            return None, None
        allowed_at, allowed = self.store.ids_where_at(filter)
        if not len(allowed) and allowed_at == self.idx.version:
            with self.store.reading() as txn:
                txn.check_fields(filter, self.store.name)
        return allowed_at, allowed

    def _ranked(
        self, dense: list[tuple[int, float]], sparse: list[tuple[int, float]], opts: SearchOptions
    ) -> list[tuple[int, float]]:
        if opts.mode == "dense":
            return dense[: opts.k]
        if opts.mode == "sparse":
            return sparse[: opts.k]
        s = self.settings
        return fuse(dense, sparse, opts.fusion, rrf_k=s.rrf_k, alpha=s.fusion_weight)[: opts.k]


def _hits(rows: dict[int, ChunkRow], ranked: Sequence[tuple[int, float]]) -> list[Hit]:
    hits = []
    for chunk_id, score in ranked:
        r = rows.get(chunk_id)
        if r is None:  # cannot happen while index and store agree; skip rather than fail a search
            continue
        hits.append(
            Hit(
                r.doc_id,
                f"{r.doc_id}#{r.seq}",
                r.title,
                r.source,
                float(score),
                r.text,
                r.start,
                r.end,
                r.metadata,
            )
        )
    return hits
