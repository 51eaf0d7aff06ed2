"""The embedder on ONNX Runtime, in fp32 or int8: exported once per model, then reused.

The sentence-transformers model is exported with `torch.onnx.export` (transformer + mean
pooling, the plain pipeline only) and, for `onnx-int8`, quantised by ONNX Runtime's own
`quantize_dynamic` (int8 weights per channel, activations quantised on the fly). Both files
live in a cache folder keyed by a hash of the model's files, written atomically, so a second
load, another process or another replica on the same volume reuses them.

sentence-transformers' own `backend="onnx"` needs optimum, whose releases pin transformers
older than the one vLLM needs here; this module uses the libraries under it instead.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from ragtune.retrieval.embedder import EmbedderError, SentenceTransformerEmbedder

logger = logging.getLogger(__name__)
VARIANTS = {"onnx": "model.onnx", "onnx-int8": "model-int8.onnx"}


def default_cache() -> Path:
    """`$XDG_CACHE_HOME/ragtune/embedders` (~/.cache/...): shared by every indexes folder."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ragtune" / "embedders"


class OnnxEmbedder(SentenceTransformerEmbedder):
    """Tokenising, batching and normalising as the torch embedder; the forward pass on ONNX Runtime."""

    def __init__(
        self,
        name: str,
        *,
        variant: str = "onnx",
        cache_dir: Path | None = None,
        query_cache_size: int = 1024,
    ):
        if variant not in VARIANTS:
            raise EmbedderError(f"unknown ONNX variant {variant!r}; known: {', '.join(VARIANTS)}")
        import onnxruntime as ort  # ImportError: the caller falls back to torch

        # The torch model stays loaded for its tokenizer and pre-processing (and the export).
        super().__init__(name, dtype="fp32", query_cache_size=query_cache_size)
        self.backend = variant
        self.dtype = "int8" if variant == "onnx-int8" else "fp32"
        folder = (cache_dir or default_cache()) / f"{Path(name).name}-{self.fingerprint}"
        model_file = export(self, folder, variant)
        options = ort.SessionOptions()
        # One thread per forward pass; `embed` runs one batch per core side by side (as torch).
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self.session.get_inputs()]
        self.file = model_file

    def _run(self, texts: Sequence[str]) -> np.ndarray:
        features = self.features(texts)
        feed = {k: features[k].numpy().astype(np.int64) for k in self._inputs}
        return np.asarray(self.session.run(None, feed)[0], dtype=np.float32)

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(texts)

    def _encode_query(self, text: str) -> np.ndarray:
        return self._run([text])


_EXPORT_LOCK = threading.Lock()


def export(embedder: SentenceTransformerEmbedder, folder: Path, variant: str) -> Path:
    """The cached ONNX file for `variant`, exported (and quantised) first if missing."""
    target = folder / VARIANTS[variant]
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with _EXPORT_LOCK, FileLock(str(folder / ".lock")):
        if target.exists():  # another process finished it while this one waited
            return target
        fp32 = folder / VARIANTS["onnx"]
        if not fp32.exists():
            _export_fp32(embedder, fp32)
        if variant == "onnx-int8":
            _quantize(fp32, target)
        logger.info("embedder %s: exported %s to %s", embedder.id, variant, target)
    return target


def _atomic_target(target: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    return Path(tmp)


def _export_fp32(embedder: SentenceTransformerEmbedder, target: Path) -> None:
    import torch

    pooled = embedder.mean_pooled_module()
    if pooled is None:
        raise EmbedderError(
            f"embedder {embedder.id!r} is not a plain transformer + mean pooling model; "
            "only those are exported to ONNX"
        )
    example = embedder.features(["an example sentence to export", "two"])
    names = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in example]
    axes = {k: {0: "batch", 1: "tokens"} for k in names} | {"sentence_embedding": {0: "batch"}}
    tmp = _atomic_target(target)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shapes taken from tensors
            torch.onnx.export(
                pooled,
                tuple(example[k] for k in names),
                str(tmp),
                input_names=names,
                output_names=["sentence_embedding"],
                dynamic_axes=axes,
                opset_version=17,
                dynamo=False,  # the TorchScript exporter: no onnxscript needed, dynamic axes as asked
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _quantize(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = _atomic_target(target)
    try:
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QInt8, per_channel=True)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def load_onnx(name: str, *, variant: str, cache_dir: Path | None, query_cache_size: int) -> Any:
    """The ONNX embedder, or None (with one log line saying why) when it cannot be had."""
    try:
        return OnnxEmbedder(name, variant=variant, cache_dir=cache_dir, query_cache_size=query_cache_size)
    except ImportError as e:
        logger.warning(
            "embedder %s: backend %s needs onnxruntime and onnx (pip install 'ragtune[onnx]'): %s; "
            "using torch",
            name,
            variant,
            e,
        )
    except EmbedderError as e:
        logger.warning("embedder %s: backend %s unavailable (%s); using torch", name, variant, e)
    except Exception as e:  # noqa: BLE001 - a failed export must never stop the server
        logger.warning(
            "embedder %s: exporting %s failed (%s: %s); using torch", name, variant, type(e).__name__, e
        )
    return None
