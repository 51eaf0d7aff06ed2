"""Embedder backends: torch, ONNX Runtime fp32 and int8 (exported once, reused), the measured
'auto' choice, the fallbacks, and the guard against a collection searched with other weights."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from retrieval_fixtures import EMBEDDER, real_embedder, settings

from ragtune.core.errors import EmbedderMismatch
from ragtune.retrieval import Document, Library, embed_backends, onnx_embedder
from ragtune.retrieval.embed_backends import (
    MIN_COSINE,
    MIN_QUERY_COSINE,
    QuerySplitEmbedder,
    load_embedder,
    machine_key,
    probe_texts,
)

pytest.importorskip("onnxruntime")  # installed by `make install` (the 'onnx' extra)

TEXTS = [
    "wing",
    "What is the boundary layer thickness on a flat plate at zero incidence?",
    " ".join(["The shock wave stands ahead of the blunt body at hypersonic speed."] * 12),
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedders")


def _fp32() -> np.ndarray:
    return load_embedder(EMBEDDER, backend="torch", dtype="fp32", query_cache_size=0).embed(TEXTS)


def test_onnx_exports_once_and_matches_torch(cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    truth = _fp32()
    with caplog.at_level(logging.INFO, logger="ragtune.retrieval.onnx_embedder"):
        onnx = load_embedder(EMBEDDER, backend="onnx", cache_dir=cache, query_cache_size=0)
    assert onnx.label == "onnx"
    assert sum("exported onnx" in r.message for r in caplog.records) == 1
    vectors = onnx.embed(TEXTS)
    assert vectors.shape == truth.shape
    assert np.min(np.sum(vectors * truth, axis=1)) > 0.9999  # the same graph, fp32 both ways
    query = onnx.embed_query(TEXTS[1])
    assert float(query @ truth[1]) > 0.9999

    files = {p.name: p.stat().st_mtime_ns for p in cache.rglob("*.onnx")}
    assert list(files) == ["model.onnx"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ragtune.retrieval.onnx_embedder"):
        again = load_embedder(EMBEDDER, backend="onnx", cache_dir=cache, query_cache_size=0)
    assert not any("exported" in r.message for r in caplog.records)  # reused, not exported again
    assert {p.name: p.stat().st_mtime_ns for p in cache.rglob("*.onnx")} == files
    assert np.allclose(again.embed(TEXTS), vectors, atol=1e-6)
    assert not list(cache.rglob("*.tmp"))


def test_int8_is_close_and_smaller(cache: Path) -> None:
    truth = _fp32()
    int8 = load_embedder(EMBEDDER, backend="onnx-int8", cache_dir=cache, query_cache_size=0)
    assert int8.label == "onnx-int8" and int8.dtype == "int8"
    cosines = np.sum(int8.embed(TEXTS) * truth, axis=1)
    assert np.min(cosines) > 0.95  # int8 weights: close, not equal (bench/results/embedders.md)
    folder = int8.file.parent  # type: ignore[attr-defined]
    assert (folder / "model-int8.onnx").stat().st_size < (folder / "model.onnx").stat().st_size / 3


def test_missing_onnxruntime_falls_back_to_torch_with_one_line(
    cache: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with caplog.at_level(logging.WARNING):
        emb = load_embedder(EMBEDDER, backend="onnx-int8", cache_dir=cache, query_cache_size=0)
    assert emb.backend == "torch"
    warnings = [r.message for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "onnxruntime" in warnings[0] and "using torch" in warnings[0]
    assert emb.embed_query("wing").shape == (emb.dimension,)


def test_a_failed_export_falls_back_and_leaves_no_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    def broken(*args: object, **kwargs: object) -> None:
        Path(str(args[2])).write_bytes(b"half a model")  # a partial write, then the failure
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with caplog.at_level(logging.WARNING):
        emb = load_embedder(EMBEDDER, backend="onnx", cache_dir=tmp_path, query_cache_size=0)
    assert emb.backend == "torch"
    assert any("exporter exploded" in r.message and "using torch" in r.message for r in caplog.records)
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"]


def test_other_pipelines_are_not_exported(cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    from ragtune.retrieval.embedder import SentenceTransformerEmbedder

    emb = SentenceTransformerEmbedder(EMBEDDER, query_cache_size=0)
    emb.model[1].pooling_mode = "cls"
    with pytest.raises(Exception, match="mean pooling"):
        onnx_embedder._export_fp32(emb, cache / "cls.onnx")
    assert not (cache / "cls.onnx").exists()


def test_auto_measures_once_and_keeps_quality(
    cache: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with caplog.at_level(logging.INFO, logger="ragtune.retrieval.embed_backends"):
        chosen = load_embedder(EMBEDDER, backend="auto", query_backend="auto", cache_dir=cache)
    line = next(r.message for r in caplog.records if "measured:" in r.message)
    assert chosen.label in line and "torch-fp32 1.00x" in line
    (choice_file,) = cache.glob("*/choice.json")
    (entry,) = json.loads(choice_file.read_text()).values()
    measured = entry["measured"]
    assert {"torch-fp32", "torch-bf16", "onnx", "onnx-int8"} <= set(measured)
    assert measured["torch-fp32"]["speedup"] == 1.0
    docs_label = chosen.docs.label if isinstance(chosen, QuerySplitEmbedder) else chosen.label
    queries_label = chosen.queries.label if isinstance(chosen, QuerySplitEmbedder) else chosen.label
    # The documents' backend is the fastest of those within MIN_COSINE; the queries' the fastest
    # single query within MIN_QUERY_COSINE.
    assert measured[docs_label]["min_cosine"] >= MIN_COSINE
    assert measured[queries_label]["min_cosine"] >= MIN_QUERY_COSINE
    for label, row in measured.items():
        assert row["speedup"] <= measured[docs_label]["speedup"] or row["min_cosine"] < MIN_COSINE, label
        assert row["query_ms"] >= measured[queries_label]["query_ms"] or row["min_cosine"] < MIN_QUERY_COSINE
    truth = _fp32()
    assert np.min(np.sum(chosen.embed(TEXTS) * truth, axis=1)) >= MIN_COSINE
    assert float(chosen.embed_query(TEXTS[1]) @ truth[1]) >= MIN_QUERY_COSINE

    def no_second_measurement(*args: object, **kwargs: object) -> None:
        raise AssertionError("measured again")

    monkeypatch.setattr(embed_backends, "measure", no_second_measurement)
    again = load_embedder(EMBEDDER, backend="auto", query_backend="auto", cache_dir=cache)
    assert again.label == chosen.label
    same = load_embedder(EMBEDDER, backend="auto", query_backend="same", cache_dir=cache)
    assert same.label == docs_label


def test_queries_on_another_backend_than_documents(cache: Path) -> None:
    split = load_embedder(EMBEDDER, backend="torch", dtype="fp32", query_backend="onnx-int8", cache_dir=cache)
    assert isinstance(split, QuerySplitEmbedder)
    assert split.label == "torch-fp32, queries onnx-int8"
    int8 = load_embedder(EMBEDDER, backend="onnx-int8", cache_dir=cache, query_cache_size=0)
    assert np.allclose(split.embed(TEXTS), _fp32(), atol=1e-5)  # documents: torch
    assert np.allclose(split.embed_query(TEXTS[1]), int8.embed_query(TEXTS[1]), atol=1e-5)  # queries: int8
    assert split.fingerprint == int8.fingerprint and split.count_tokens(["a wing"]) == [2]


def test_probe_and_machine_key_are_stable() -> None:
    texts = probe_texts()
    assert len(texts) == len(set(texts)) == 48 and texts == probe_texts()
    assert machine_key() == machine_key() and "torch-" in machine_key()


def test_backends_share_a_collection_but_other_weights_are_refused(tmp_path: Path, cache: Path) -> None:
    docs = [
        Document(id="a", text="Lift on a swept wing depends on the sweep angle and the Mach number."),
        Document(id="b", text="A sourdough starter needs flour, water and a warm kitchen."),
    ]
    torch_lib = Library(tmp_path, settings(), embedders={EMBEDDER: real_embedder()})
    torch_lib.create("mixed").upsert(docs)
    torch_lib.close()

    onnx = load_embedder(EMBEDDER, backend="onnx-int8", cache_dir=cache, query_cache_size=0)
    lib = Library(tmp_path, settings(), embedders={EMBEDDER: onnx})
    hits = lib.open("mixed").search("which wing sweep angle", k=1, mode="dense")
    assert hits[0].document_id == "a"
    lib.close()

    other = load_embedder(EMBEDDER, backend="torch", dtype="fp32", query_cache_size=0)
    other.fingerprint = "0123456789abcdef"  # as if the model folder held other weights
    lib = Library(tmp_path, settings(), embedders={EMBEDDER: other})
    with pytest.raises(EmbedderMismatch, match="0123456789abcdef") as err:
        lib.open("mixed").search("wing", k=1)
    assert "torch-fp32" in str(err.value) and "re-create" in str(err.value)
    lib.close()
