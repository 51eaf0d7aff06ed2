"""Vector indexes: the `VectorIndex` seam the derived indexes speak, and its FAISS
implementations, chosen by `index_type`: exact flat, HNSW, IVF.

Another engine (Qdrant, Milvus) would be one more class with the same methods, registered in
INDEX_TYPES; `Collection` and `DerivedIndexes` never touch FAISS objects.

An index maps chunk ids (the store's rowids) to unit vectors and is always derivable from the
store. Deletes differ by type: flat and IVF remove vectors; HNSW cannot, so removed ids become
tombstones that searches skip, and once they pass a fifth of the graph `needs_rebuild` asks
the collection to rebuild it from the stored embeddings (compaction). IVF keeps an exact flat
index until it has enough vectors to train its cells, and asks to be retrained as it grows.
"""

from __future__ import annotations

import math
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Protocol

import faiss
import numpy as np

from ragtune.retrieval.settings import RetrievalSettings

_faiss: Any = faiss  # the bundled type stubs lack the SearchParameters* keyword arguments
# One query searches on one OpenMP thread: on this 2-core machine with other jobs running, a flat
# search of 10k vectors took p50 32 ms on 2 threads and 0.6 ms on one (barrier waits). Builds
# (HNSW inserts, IVF training) switch to every core while they run.
faiss.omp_set_num_threads(1)


@contextmanager
def _all_cores() -> Iterator[None]:
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(1)


class VectorIndex(Protocol):
    """Chunk ids (the store's, never reused) to unit vectors, searched by inner product. Always
    derivable from the store: `build` from stored embeddings, `load` from a snapshot file that
    `save` wrote, with `state()` kept beside it in the snapshot's manifest."""

    kind: ClassVar[str]

    @classmethod
    def build(
        cls, dim: int, settings: RetrievalSettings, ids: np.ndarray, vecs: np.ndarray
    ) -> VectorIndex: ...
    @classmethod
    def load(
        cls, path: Path, dim: int, settings: RetrievalSettings, state: dict[str, Any]
    ) -> VectorIndex: ...
    def save(self, path: Path) -> None: ...
    def state(self) -> dict[str, Any]: ...
    @property
    def ntotal(self) -> int:
        """Vectors held, tombstones included."""
        ...

    @property
    def live(self) -> int: ...
    @property
    def tombstones(self) -> int:
        """Removed ids still held (searches skip them) until a rebuild."""
        ...

    def ids(self) -> np.ndarray: ...
    def live_ids(self) -> np.ndarray: ...
    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None: ...
    def remove(self, ids: np.ndarray) -> None: ...
    @property
    def needs_rebuild(self) -> bool:
        """True when a fresh `build` from the store would serve better (compaction, retraining)."""
        ...

    def memory_bytes(self) -> int: ...
    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]: ...


class FaissIndex(ABC):
    """The FAISS implementations' common part: an IndexIDMap2 (or IVF) over inner product."""

    kind: ClassVar[str]

    def __init__(self, dim: int, settings: RetrievalSettings):
        self.dim = dim
        self.settings = settings
        self.index: Any = None
        self.dead: set[int] = set()
        self._not_dead: Any = None  # cached selector excluding tombstones

    # -- construction --------------------------------------------------------------------
    @classmethod
    def build(cls, dim: int, settings: RetrievalSettings, ids: np.ndarray, vecs: np.ndarray) -> FaissIndex:
        """A fresh index over exactly these vectors."""
        self = cls(dim, settings)
        with _all_cores():
            self._create(len(ids), vecs)
            if len(ids):
                self.add(ids, vecs)
        return self

    @abstractmethod
    def _create(self, n: int, sample: np.ndarray) -> None:
        """Make an empty `self.index` suited to about n vectors (`sample` trains it if needed)."""

    @classmethod
    def load(cls, path: Path, dim: int, settings: RetrievalSettings, state: dict[str, Any]) -> FaissIndex:
        self = cls(dim, settings)
        self.index = faiss.read_index(str(path))
        if self.index.d != dim:
            raise ValueError(f"snapshot has dimension {self.index.d}, collection has {dim}")
        self._restore(state)
        return self

    def _restore(self, state: dict[str, Any]) -> None:  # noqa: B027 - optional hook
        pass

    def state(self) -> dict[str, Any]:
        """What the manifest records beside the FAISS file."""
        return {}

    def save(self, path: Path) -> None:
        faiss.write_index(self.index, str(path))

    # -- contents ------------------------------------------------------------------------
    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def live(self) -> int:
        return self.ntotal - len(self.dead)

    @property
    def tombstones(self) -> int:
        return len(self.dead)

    def ids(self) -> np.ndarray:
        """Every id stored in the FAISS structure (tombstoned ones included)."""
        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    def live_ids(self) -> np.ndarray:
        ids = self.ids()
        if self.dead:
            ids = ids[~np.isin(ids, np.fromiter(self.dead, dtype=np.int64))]
        return ids

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), ids.astype(np.int64))

    def remove(self, ids: np.ndarray) -> None:
        if len(ids):
            self.index.remove_ids(ids.astype(np.int64))

    @property
    def needs_rebuild(self) -> bool:
        return False

    def memory_bytes(self) -> int:
        """Estimated resident size: vectors plus the id maps."""
        return self.ntotal * (self.dim * 4 + 24)

    # -- search --------------------------------------------------------------------------
    def _params(self, sel: Any, k: int) -> Any:
        return _faiss.SearchParameters(sel=sel)

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) by inner product; `allowed` limits the ids considered."""
        if self.live == 0 or k <= 0 or (allowed is not None and len(allowed) == 0):
            return np.empty(0, np.float32), np.empty(0, np.int64)
        sel = None
        if allowed is not None:
            sel = faiss.IDSelectorBatch(allowed.astype(np.int64))
        elif self.dead:
            if self._not_dead is None:
                self._not_dead = faiss.IDSelectorNot(
                    faiss.IDSelectorBatch(np.fromiter(self.dead, dtype=np.int64))
                )
            sel = self._not_dead
        q = np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32)
        scores, ids = self.index.search(q, min(k, self.ntotal), params=self._params(sel, k))
        keep = ids[0] >= 0
        return scores[0][keep], ids[0][keep]


_HALF = {"fp16": faiss.ScalarQuantizer.QT_fp16, "bf16": faiss.ScalarQuantizer.QT_bf16}


class FlatIndex(FaissIndex):
    """Exhaustive inner-product search; O(n) per query, exact deletes. The default.

    `vector_precision` 'fp16' or 'bf16' holds the vectors in 16 bits (FAISS's scalar quantizer):
    a search reads half the bytes, and a single query is bound by that read."""

    kind = "flat"

    def _create(self, n: int, sample: np.ndarray) -> None:
        inner: Any
        precision = self.settings.vector_precision
        if precision in _HALF:
            inner = faiss.IndexScalarQuantizer(self.dim, _HALF[precision], faiss.METRIC_INNER_PRODUCT)
        else:
            inner = faiss.IndexFlatIP(self.dim)
        self.index = faiss.IndexIDMap2(inner)

    def _restore(self, state: dict[str, Any]) -> None:
        saved = state.get("precision", "fp32")
        if saved != self.settings.vector_precision:  # the caller rebuilds from the store
            raise ValueError(f"snapshot holds {saved} vectors, settings ask {self.settings.vector_precision}")

    def state(self) -> dict[str, Any]:
        return {"precision": self.settings.vector_precision}

    def memory_bytes(self) -> int:
        width = 2 if self.settings.vector_precision in _HALF else 4
        return self.ntotal * (self.dim * width + 24)


class HNSWIndex(FaissIndex):
    """Graph search: sub-linear queries, slower inserts, no real deletes (tombstones)."""

    kind = "hnsw"

    def _create(self, n: int, sample: np.ndarray) -> None:
        inner = faiss.IndexHNSWFlat(self.dim, self.settings.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = self.settings.hnsw_ef_construction
        self.index = faiss.IndexIDMap2(inner)

    def _restore(self, state: dict[str, Any]) -> None:
        self.dead = {int(i) for i in state.get("tombstones", [])}

    def state(self) -> dict[str, Any]:
        return {"tombstones": sorted(self.dead)}

    def remove(self, ids: np.ndarray) -> None:
        present = set(self.ids().tolist())
        self.dead |= {int(i) for i in ids if int(i) in present}
        self._not_dead = None

    @property
    def needs_rebuild(self) -> bool:
        return len(self.dead) > max(256, self.ntotal // 5)

    def memory_bytes(self) -> int:
        return self.ntotal * (self.dim * 4 + 24 + self.settings.hnsw_m * 2 * 4)

    def _params(self, sel: Any, k: int) -> Any:
        # efSearch bounds how many results the graph walk can return.
        return _faiss.SearchParametersHNSW(sel=sel, efSearch=max(self.settings.hnsw_ef_search, k))


class IVFIndex(FaissIndex):
    """Inverted file: vectors bucketed by k-means cell, `ivf_nprobe` cells searched per query.

    Below MIN_TRAIN vectors there is nothing to train on, so it stays an exact flat index.
    """

    kind = "ivf"
    MIN_TRAIN = 4096

    def __init__(self, dim: int, settings: RetrievalSettings):
        super().__init__(dim, settings)
        self.trained_on = 0

    def _create(self, n: int, sample: np.ndarray) -> None:
        if n < self.MIN_TRAIN:
            self.index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            self.trained_on = 0
            return
        nlist = self.settings.ivf_nlist or int(4 * math.sqrt(n))
        nlist = max(1, min(nlist, n // 39))  # FAISS wants ~39 training points per cell
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        train = (
            sample
            if len(sample) <= 256 * nlist
            else sample[rng.choice(len(sample), 256 * nlist, replace=False)]
        )
        index.train(np.ascontiguousarray(train, dtype=np.float32))
        self._quantizer = quantizer  # keep the Python object alive with the index
        self.index = index
        self.trained_on = n

    @property
    def is_ivf(self) -> bool:
        return isinstance(self.index, faiss.IndexIVF)

    def _restore(self, state: dict[str, Any]) -> None:
        self.trained_on = int(state.get("trained_on", 0))

    def state(self) -> dict[str, Any]:
        return {"trained_on": self.trained_on}

    def ids(self) -> np.ndarray:
        if not self.is_ivf:
            return super().ids()
        invlists = self.index.invlists
        parts = [
            faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
            for i in range(self.index.nlist)
            if invlists.list_size(i)
        ]
        return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)

    @property
    def needs_rebuild(self) -> bool:
        if not self.is_ivf:
            return self.ntotal >= self.MIN_TRAIN
        return self.ntotal > 4 * self.trained_on

    def _params(self, sel: Any, k: int) -> Any:
        if not self.is_ivf:
            return super()._params(sel, k)
        params = _faiss.SearchParametersIVF()
        params.sel = sel  # the caller keeps `sel` alive for the search
        params.nprobe = self.settings.ivf_nprobe
        return params


INDEX_TYPES: dict[str, type[VectorIndex]] = {"flat": FlatIndex, "hnsw": HNSWIndex, "ivf": IVFIndex}
