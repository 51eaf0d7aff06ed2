"""Hybrid fusion: the formulas on hand-made lists, and the setting reaching a real collection."""
# ruff: noqa: F811  (pytest fixtures imported from retrieval_fixtures are redefined as arguments)

from __future__ import annotations

import math

import pytest
from retrieval_fixtures import EMBEDDER, FIXTURES, CountingEmbedder, embedder, library, settings  # noqa: F401

from ragtune.core.errors import RagtuneError
from ragtune.retrieval import Library
from ragtune.retrieval.fusion import FUSIONS, convex, fuse, rrf, zscores
from ragtune.retrieval.ingest import load_beir
from ragtune.retrieval.settings import RetrievalSettings

DENSE = [(1, 0.9), (2, 0.8), (3, 0.4)]
SPARSE = [(3, 12.0), (4, 6.0), (1, 3.0)]


def test_rrf_sums_reciprocal_ranks() -> None:
    got = dict(rrf([DENSE, SPARSE], 60))
    assert got[1] == pytest.approx(1 / 61 + 1 / 63)
    assert got[3] == pytest.approx(1 / 63 + 1 / 61)
    assert got[2] == pytest.approx(1 / 62) and got[4] == pytest.approx(1 / 62)
    assert [i for i, _ in rrf([DENSE, SPARSE], 60)] == [1, 3, 2, 4]  # ties broken by id


def test_convex_is_a_weighted_sum_of_z_scores() -> None:
    z = zscores(DENSE)
    mean, sd = 0.7, math.sqrt(((0.2) ** 2 + 0.1**2 + 0.3**2) / 3)
    assert z[1] == pytest.approx((0.9 - mean) / sd)
    assert sum(z.values()) == pytest.approx(0.0)
    assert zscores([(7, 2.0), (8, 2.0)]) == {7: 0.0, 8: 0.0}  # equal scores: no information
    fused = dict(convex(DENSE, SPARSE, 0.5))
    zs = zscores(SPARSE)
    assert fused[1] == pytest.approx(0.5 * z[1] + 0.5 * zs[1])
    # a chunk missing from one list gets that list's lowest z-score
    assert fused[2] == pytest.approx(0.5 * z[2] + 0.5 * min(zs.values()))
    assert fused[4] == pytest.approx(0.5 * min(z.values()) + 0.5 * zs[4])
    # the weight moves the order between the two lists' own orders
    assert [i for i, _ in convex(DENSE, SPARSE, 1.0)][:3] == [1, 2, 3]
    assert [i for i, _ in convex(DENSE, SPARSE, 0.0)][:3] == [3, 4, 1]
    assert convex([], SPARSE, 0.5)[0][0] == 3 and convex([], [], 0.5) == []


def test_fuse_picks_the_method_by_name() -> None:
    assert fuse(DENSE, SPARSE, "rrf", rrf_k=60) == rrf([DENSE, SPARSE], 60)
    assert fuse(DENSE, SPARSE, "convex", alpha=0.3) == convex(DENSE, SPARSE, 0.3)
    assert set(FUSIONS) == {"convex", "rrf"} and RetrievalSettings().fusion == "convex"
    with pytest.raises(ValueError, match="unknown fusion"):
        fuse(DENSE, SPARSE, "max")


def test_collection_search_takes_fusion_from_settings_or_the_call(library: Library) -> None:
    c = library.create("kb")
    c.upsert(list(load_beir(FIXTURES / "beir" / "corpus.jsonl")))
    query = "wild yeast starter for bread"
    default = c.search(query, k=5)
    convex_hits = c.search(query, k=5, fusion="convex")
    rrf_hits = c.search(query, k=5, fusion="rrf")
    assert [h.chunk_id for h in default] == [h.chunk_id for h in convex_hits]
    assert [h.score for h in default] == [h.score for h in convex_hits]
    assert default[0].document_id == rrf_hits[0].document_id == "d4"
    assert rrf_hits[0].score == pytest.approx(2 / 61)  # first in both lists
    assert default[0].score != rrf_hits[0].score
    with pytest.raises(RagtuneError, match="fusion must be one of convex, rrf") as err:
        c.search(query, fusion="max")
    assert err.value.param == "fusion"


def test_fusion_setting_reaches_search(tmp_path, embedder: CountingEmbedder) -> None:  # noqa: ANN001
    lib = Library(tmp_path / "ix", settings(fusion="rrf"), embedders={EMBEDDER: embedder})
    try:
        c = lib.create("kb")
        c.upsert(list(load_beir(FIXTURES / "beir" / "corpus.jsonl")))
        hits = c.search("wild yeast starter for bread", k=3)
        assert [h.score for h in hits] == [
            h.score for h in c.search("wild yeast starter for bread", k=3, fusion="rrf")
        ]
        assert hits[0].score == pytest.approx(2 / 61)
    finally:
        lib.close()
    with pytest.raises(ValueError, match="fusion"):
        settings(fusion="max")
