"""Fixtures for the retrieval tests: the real MiniLM embedder (loaded once per session).

Test modules import these names; the embedder is cached at module level so that every
module shares the one loaded model.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from ragtune.retrieval.embed_backends import load_embedder
from ragtune.retrieval.embedder import Embedder
from ragtune.retrieval.library import Library
from ragtune.retrieval.settings import RetrievalSettings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
FIXTURES = Path(__file__).parent / "fixtures" / "retrieval"
EMBEDDER = "all-MiniLM-L6-v2"
_MEMO: dict[str, np.ndarray] = {}


@functools.cache
def real_embedder() -> Embedder:
    return load_embedder(EMBEDDER, backend="torch", dtype="auto")


class CountingEmbedder(Embedder):
    """The real embedder, counting the texts it is asked to embed (to prove what is reused)."""

    def __init__(self, inner: Embedder):
        super().__init__(query_cache_size=0)
        self.inner = inner
        self.id, self.dimension, self.max_tokens, self.dtype = (
            inner.id,
            inner.dimension,
            inner.max_tokens,
            inner.dtype,
        )
        self.embedded: list[str] = []

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        self.embedded.extend(texts)
        todo = [t for t in dict.fromkeys(texts) if t not in _MEMO]
        if todo:  # tests re-ingest the same small corpus: embed each text once per session
            _MEMO.update(zip(todo, self.inner._encode(todo), strict=True))
        return np.stack([_MEMO[t] for t in texts])

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    def token_offsets(self, text: str) -> tuple[list[tuple[int, int]], list[bool]]:
        return self.inner.token_offsets(text)


def settings(**overrides: object) -> RetrievalSettings:
    return RetrievalSettings.model_validate({"lock_timeout": 2.0, "snapshot_interval": 0.0, **overrides})


@pytest.fixture
def embedder() -> CountingEmbedder:
    return CountingEmbedder(real_embedder())


@pytest.fixture
def library(tmp_path: Path, embedder: CountingEmbedder) -> Iterator[Library]:
    lib = Library(tmp_path / "indexes", settings(), embedders={EMBEDDER: embedder})
    yield lib
    lib.close()


class HashEmbedder(Embedder):
    """Deterministic vectors from a text hash, with MiniLM's real tokenizer (for chunk offsets).

    For tests about storage and processes, where loading the model in a subprocess would only
    cost time; never used where ranking quality matters.
    """

    id = "hash"
    dimension = 384
    max_tokens = 256
    dtype = "fp32"

    def __init__(self) -> None:
        super().__init__(query_cache_size=0)
        from transformers import AutoTokenizer

        from ragtune.retrieval.embedder import resolve_model_path

        self.tokenizer = AutoTokenizer.from_pretrained(str(resolve_model_path(EMBEDDER)))

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        import hashlib

        seeds = [int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little") for t in texts]
        return np.stack([np.random.default_rng(s).standard_normal(self.dimension) for s in seeds]).astype(
            np.float32
        )

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [
            len(ids)
            for ids in self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        ]

    def token_offsets(self, text: str) -> tuple[list[tuple[int, int]], list[bool]]:
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        words = enc.word_ids()
        return [tuple(o) for o in enc["offset_mapping"]], [
            i == 0 or words[i] != words[i - 1] for i in range(len(words))
        ]
