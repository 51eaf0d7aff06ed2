"""Which embedder backend runs: chosen by a setting, or measured once per machine ('auto').

Backends: `torch` (sentence-transformers, fp32 or bf16), `onnx` (ONNX Runtime, fp32) and
`onnx-int8` (ONNX Runtime, dynamic int8). All of them run the same weights, so a collection
embedded by one is searched by another; what differs is speed and a little precision.

'auto' measures instead of guessing, because the fastest one depends on the CPU (bf16 is several
times fp32 on a CPU with AMX, about 2x on one with AVX512-BF16 only; bench/results/embedders.md):
each candidate embeds the same probe texts, timed A B B A, and the fastest whose vectors keep a
cosine of at least `MIN_COSINE` to fp32 torch on every probe text wins. The choice is written
beside the exported models, keyed by the model's hash and the machine, and reused.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Literal

import numpy as np

from retrieval.embedder import (
    Dtype,
    Embedder,
    SentenceTransformerEmbedder,
    model_fingerprint,
    resolve_model_path,
)
from retrieval.onnx_embedder import default_cache, load_onnx

logger = logging.getLogger(__name__)
Backend = Literal["auto", "torch", "onnx", "onnx-int8"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "onnx", "onnx-int8")
# Measured on Cranfield (bench/results/embedders.md): a minimum cosine of 0.9999 (bf16) kept
# dense nDCG@10 within 0.001 of fp32; 0.977 (dynamic int8) lost 0.008, more than the 0.005 we allow.
MIN_COSINE = 0.995

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
    cache_dir: Path | None = None,
    query_cache_size: int = 1024,
) -> Embedder:
    """The embedder `name` on `backend`; an ONNX backend that cannot be had falls back to torch
    (one log line says why); 'auto' picks by measurement, see the module's docstring."""
    cache_dir = cache_dir or default_cache()
    if backend == "torch":
        return SentenceTransformerEmbedder(name, dtype=dtype, query_cache_size=query_cache_size)
    if backend in ("onnx", "onnx-int8"):
        onnx = load_onnx(name, variant=backend, cache_dir=cache_dir, query_cache_size=query_cache_size)
        return onnx or SentenceTransformerEmbedder(name, dtype=dtype, query_cache_size=query_cache_size)
    return _auto(name, dtype=dtype, cache_dir=cache_dir, query_cache_size=query_cache_size)


def _auto(name: str, *, dtype: Dtype, cache_dir: Path, query_cache_size: int) -> Embedder:
    folder = cache_dir / f"{Path(name).name}-{model_fingerprint(resolve_model_path(name))}"
    choices_file = folder / "choice.json"
    key = f"{machine_key()}|dtype={dtype}"
    choices = _read(choices_file)
    chosen = choices.get(key)
    if chosen:
        embedder = _load(chosen["backend"], name, chosen["dtype"], cache_dir, query_cache_size)
        if embedder is not None:
            logger.info("embedder %s: backend %s (measured earlier on this machine)", name, embedder.label)
            return embedder
    measured = measure(name, dtype=dtype, cache_dir=cache_dir, query_cache_size=query_cache_size)
    best = measured.best
    choices[key] = {"backend": best.backend, "dtype": best.dtype, "measured": measured.summary()}
    _write(choices_file, choices)
    logger.info("embedder %s: backend %s, measured: %s", name, best.label, measured.line())
    return best


class Measured:
    """Each candidate's seconds on the probe texts and its least cosine to fp32 torch."""

    def __init__(self, rows: list[tuple[Embedder, float, float]]):
        self.rows = rows
        base = next(s for e, s, _ in rows if e.label == "torch-fp32")
        self.base = base
        keeping = [(s, e) for e, s, c in rows if c >= MIN_COSINE]
        self.best = min(keeping, key=lambda r: r[0])[1]

    def summary(self) -> dict[str, dict[str, float]]:
        return {
            e.label: {"speedup": round(self.base / s, 2), "min_cosine": round(c, 4)} for e, s, c in self.rows
        }

    def line(self) -> str:
        parts = []
        for e, s, c in self.rows:
            note = "" if c >= MIN_COSINE else f", cosine {c:.3f} < {MIN_COSINE}: refused"
            parts.append(f"{e.label} {self.base / s:.2f}x{note}")
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
    truth = reference.embed(texts)
    cosines = [float(np.min(np.sum(e.embed(texts) * truth, axis=1))) for e in candidates]  # also a warm-up
    seconds = [float("inf")] * len(candidates)
    order = list(range(len(candidates)))
    for r in range(repeats):
        for i in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            candidates[i].embed(texts)
            seconds[i] = min(seconds[i], time.perf_counter() - start)
    return Measured(list(zip(candidates, seconds, cosines, strict=True)))


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
