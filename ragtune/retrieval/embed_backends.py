"""Which embedder backend runs: chosen by a setting, or measured once per machine ('auto').

Backends: `torch` (sentence-transformers, fp32 or bf16), `onnx` (ONNX Runtime, fp32) and
`onnx-int8` (ONNX Runtime, dynamic int8). All of them run the same weights, so a collection
embedded by one is searched by another; what differs is speed and a little precision.

'auto' measures instead of guessing, because the fastest one depends on the CPU (bf16 is several
times fp32 on a CPU with AMX, about 2x on one with AVX512-BF16 only; bench/results/embedders.md):
each candidate embeds the same probe texts, timed A B B A, and the fastest whose vectors keep a
cosine of at least `MIN_COSINE` to fp32 torch on every probe text wins. A search's query may be
embedded by another backend than the documents: the fastest single query within
`MIN_QUERY_COSINE`. The choice is written beside the exported models, keyed by the model's hash
and the machine, and reused.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from ragtune.retrieval.embedder import (
    Dtype,
    Embedder,
    EmbedderError,
    SentenceTransformerEmbedder,
    model_fingerprint,
    resolve_model_path,
)
from ragtune.retrieval.onnx_embedder import default_cache, load_onnx

logger = logging.getLogger(__name__)
Backend = Literal["auto", "torch", "onnx", "onnx-int8"]
QueryBackend = Literal["same", "auto", "torch", "onnx", "onnx-int8"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnx", "onnx-int8")
# Measured on Cranfield (bench/results/embedders.md): a minimum cosine of 0.9999 (bf16) kept
# dense nDCG@10 within 0.001 of fp32; 0.977 (dynamic int8) lost 0.008, more than the 0.005 we allow.
MIN_COSINE = 0.995
# A query's vector may be rougher: documents by bf16 and queries by dynamic int8 (least cosine
# 0.985 on the probe) lost 0.0024 nDCG@10 on Cranfield and 0.0012 on DisflQA (bench/results/
# embedders.md), at half the time per query.
MIN_QUERY_COSINE = 0.98

# Probe texts: plain prose of mixed topics and lengths (the timing needs realistic token counts,
# the cosine check realistic words).
_SENTENCES = [
    "The committee approved the budget after a long debate about road maintenance.",
    "Boundary layer separation on a swept wing depends on the pressure gradient.",
    "Add the flour slowly and stir until the batter is smooth and free of lumps.",
    "The river floods every spring when the snow in the mountains melts.",
    "A function that calls itself must reach a base case or it never returns.",
    "The museum reopened on Monday with a new exhibition of medieval maps.",
    "Patients who took the drug reported fewer headaches than the control group.",
    "The train to the airport leaves every fifteen minutes from platform four.",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "The contract may be terminated by either party with thirty days' notice.",
    "Heat transfer at hypersonic speeds is dominated by the shock layer.",
    "She won the championship in her second season as a professional.",
]


def probe_texts() -> list[str]:
    """48 texts of 1 to 12 sentences: short queries to chunk-sized passages."""
    n = len(_SENTENCES)
    starts_and_lengths = [(i % n, 1 + (5 * i + i // n) % n) for i in range(4 * n)]  # 48 distinct pairs
    return [" ".join(_SENTENCES[(s + j) % n] for j in range(length)) for s, length in starts_and_lengths]


def machine_key() -> str:
    """What decides the speed of each backend: the CPU, its vector units, the core count, versions."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                flags += line.split(":", 1)[1].strip() + "|"
                if line.startswith("flags"):
                    break
    except OSError:
        flags = platform.processor()
    units = sorted(f for f in flags.split() if f.startswith(("avx", "amx")) or "vnni" in f)
    versions = [_version("torch"), _version("onnxruntime")]
    return "|".join([flags.split("|")[0], ",".join(units), str(os.cpu_count()), *versions])


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{package}-{version(package)}"
    except PackageNotFoundError:
        return f"{package}-none"


def load_embedder(
    name: str,
    *,
    backend: Backend = "auto",
    dtype: Dtype = "auto",
    query_backend: QueryBackend = "same",
    cache_dir: Path | None = None,
    query_cache_size: int = 1024,
) -> Embedder:
    """The embedder `name` on `backend`, its queries on `query_backend`. An ONNX backend that
    cannot be had falls back to torch (one log line says why); 'auto' picks by measurement (see
    the module's docstring). 'auto' queries need `backend` 'auto'; otherwise they stay 'same'."""
    cache_dir = cache_dir or default_cache()
    if backend == "auto":
        docs, queries = _auto(name, dtype=dtype, cache_dir=cache_dir, query_cache_size=query_cache_size)
        if query_backend == "auto":
            return _split(docs, queries)
    else:
        docs = _explicit(name, backend, dtype, cache_dir, query_cache_size)
    if query_backend in ("same", "auto") or query_backend == docs.label:
        return docs
    return _split(docs, _explicit(name, query_backend, "auto", cache_dir, query_cache_size))


def _explicit(name: str, backend: str, dtype: Dtype, cache_dir: Path, query_cache_size: int) -> Embedder:
    if backend in ("onnx", "onnx-int8"):
        onnx = load_onnx(name, variant=backend, cache_dir=cache_dir, query_cache_size=query_cache_size)
        if onnx is not None:
            return onnx
    elif backend != "torch":
        raise EmbedderError(f"unknown embedder backend {backend!r}; known: {', '.join(BACKENDS)}")
    return SentenceTransformerEmbedder(name, dtype=dtype, query_cache_size=query_cache_size)


def _split(docs: Embedder, queries: Embedder) -> Embedder:
    return docs if queries is docs or queries.label == docs.label else QuerySplitEmbedder(docs, queries)


class QuerySplitEmbedder(Embedder):
    """Documents embedded by one backend, single queries by another (of the same weights)."""

    def __init__(self, docs: Embedder, queries: Embedder):
        if docs.fingerprint != queries.fingerprint:
            raise EmbedderError(f"query embedder {queries.label} has other weights than {docs.label}")
        super().__init__(query_cache_size=queries._cache_size)
        self.docs, self.queries = docs, queries
        self.id, self.dimension, self.max_tokens, self.dtype = (
            docs.id,
            docs.dimension,
            docs.max_tokens,
            docs.dtype,
        )
        self.backend, self.fingerprint = docs.backend, docs.fingerprint

    @property
    def label(self) -> str:
        return f"{self.docs.label}, queries {self.queries.label}"

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        return self.docs._encode(texts)

    def _encode_query(self, text: str) -> np.ndarray:
        return self.queries._encode_query(text)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.docs.count_tokens(texts)

    def token_offsets(self, text: str) -> tuple[list[tuple[int, int]], list[bool]]:
        return self.docs.token_offsets(text)


def _auto(name: str, *, dtype: Dtype, cache_dir: Path, query_cache_size: int) -> tuple[Embedder, Embedder]:
    """(documents' embedder, queries' embedder), measured once per machine and remembered."""
    folder = cache_dir / f"{Path(name).name}-{model_fingerprint(resolve_model_path(name))}"
    choices_file = folder / "choice.json"
    key = f"{machine_key()}|dtype={dtype}"
    choices = _read(choices_file)
    chosen = choices.get(key)
    if chosen and "queries" in chosen:
        docs = _load(chosen["backend"], name, chosen["dtype"], cache_dir, query_cache_size)
        same = (chosen["queries"]["backend"], chosen["queries"]["dtype"]) == (
            chosen["backend"],
            chosen["dtype"],
        )
        queries = (
            docs
            if same
            else _load(
                chosen["queries"]["backend"], name, chosen["queries"]["dtype"], cache_dir, query_cache_size
            )
        )
        if docs is not None and queries is not None:
            logger.info(
                "embedder %s: %s (measured earlier on this machine)", name, _split(docs, queries).label
            )
            return docs, queries
    measured = measure(name, dtype=dtype, cache_dir=cache_dir, query_cache_size=query_cache_size)
    docs, queries = measured.best, measured.best_queries
    choices[key] = {
        "backend": docs.backend,
        "dtype": docs.dtype,
        "queries": {"backend": queries.backend, "dtype": queries.dtype},
        "measured": measured.summary(),
    }
    _write(choices_file, choices)
    logger.info("embedder %s: %s; measured: %s", name, _split(docs, queries).label, measured.line())
    return docs, queries


class Measured:
    """Each candidate's seconds on the probe texts, its p50 for one query, and its least cosine to
    fp32 torch; the best for documents (cosine >= MIN_COSINE) and for queries (>= MIN_QUERY_COSINE)."""

    def __init__(self, rows: list[tuple[Embedder, float, float, float]]):
        self.rows = rows
        self.base = next(s for e, s, _, _ in rows if e.label == "torch-fp32")
        self.best = min((r for r in rows if r[3] >= MIN_COSINE), key=lambda r: r[1])[0]
        self.best_queries = min((r for r in rows if r[3] >= MIN_QUERY_COSINE), key=lambda r: r[2])[0]

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            e.label: {"speedup": round(self.base / s, 2), "query_ms": round(q, 2), "min_cosine": round(c, 4)}
            for e, s, q, c in self.rows
        }

    def line(self) -> str:
        parts = []
        for e, s, q, c in self.rows:
            note = "" if c >= MIN_COSINE else f", cosine {c:.3f} < {MIN_COSINE}: not for documents"
            parts.append(f"{e.label} {self.base / s:.2f}x, a query {q:.1f} ms{note}")
        return "; ".join(parts)


def measure(
    name: str,
    *,
    dtype: Dtype = "auto",
    cache_dir: Path | None = None,
    query_cache_size: int = 1024,
    repeats: int = 2,
) -> Measured:
    """Time every candidate backend on the probe texts (A B B A ...) and check its vectors."""
    reference = SentenceTransformerEmbedder(name, dtype="fp32", query_cache_size=query_cache_size)
    candidates: list[Embedder] = [reference]
    dtypes: list[Dtype] = ["bf16"] if dtype == "auto" else ([dtype] if dtype != "fp32" else [])
    for d in dtypes:
        candidates.append(SentenceTransformerEmbedder(name, dtype=d, query_cache_size=query_cache_size))
    for variant in ("onnx", "onnx-int8"):
        if importlib.util.find_spec("onnxruntime") is None:
            logger.info("embedder %s: onnxruntime is not installed; 'auto' measures torch only", name)
            break
        onnx = load_onnx(name, variant=variant, cache_dir=cache_dir, query_cache_size=query_cache_size)
        if onnx is not None:
            candidates.append(onnx)
    texts = probe_texts()
    queries = [t for t in texts if len(t) < 200]  # one or two sentences: query-sized
    truth = reference.embed(texts)
    cosines = [float(np.min(np.sum(e.embed(texts) * truth, axis=1))) for e in candidates]  # also a warm-up
    seconds = [float("inf")] * len(candidates)
    query_ms: list[list[float]] = [[] for _ in candidates]
    order = list(range(len(candidates)))
    for r in range(repeats):
        for i in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            candidates[i].embed(texts)
            seconds[i] = min(seconds[i], time.perf_counter() - start)
            for q in queries:  # the query path itself, past the cache
                start = time.perf_counter()
                candidates[i]._encode_query(q)
                query_ms[i].append((time.perf_counter() - start) * 1000)
    p50 = [float(np.median(q)) for q in query_ms]
    return Measured(list(zip(candidates, seconds, p50, cosines, strict=True)))


def _load(
    backend: str,
    name: str,
    dtype: str,
    cache_dir: Path,
    query_cache_size: int,
) -> Embedder | None:
    if backend == "torch":
        precision: Dtype = "bf16" if dtype == "bf16" else "fp32"
        return SentenceTransformerEmbedder(name, dtype=precision, query_cache_size=query_cache_size)
    return load_onnx(name, variant=backend, cache_dir=cache_dir, query_cache_size=query_cache_size)


def _read(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
