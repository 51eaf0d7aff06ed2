"""Combining the dense and BM25 rankings of a hybrid search.

A ranking is a list of (chunk id, score), best first. `fuse` picks the method by name (the
`retrieval.fusion` setting, a profile's or a request's `fusion`):

- `convex` (default): alpha * z(dense) + (1 - alpha) * z(sparse), each list's scores turned
  into z-scores over the list, alpha = 0.5 (Bruch et al. 2022, "An Analysis of Fusion Functions
  for Hybrid Retrieval": a convex combination of normalised scores beats RRF, which is sensitive
  to its k). A chunk missing from one list gets that list's lowest z-score.
- `rrf`: reciprocal rank fusion, score = sum of 1 / (k + rank).

The weight is fixed a priori, not tuned per collection. bench/ranking.py measured every method on
Cranfield, DisflQA and the Python FAQ (bench/results/ranking.md): convex z-score beat RRF k=60
on all three, and beat min-max normalisation on all three. The RM3 (BM25) and Rocchio (dense)
pseudo-relevance feedback there lost on the question sets and are not used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

import numpy as np

from ragtune.retrieval.settings import Fusion

Ranking = list[tuple[int, float]]
FUSIONS: tuple[str, ...] = get_args(Fusion)


def rrf(rankings: Sequence[Sequence[tuple[int, float]]], k: int) -> Ranking:
    """Reciprocal rank fusion: score(d) = sum over rankings of 1 / (k + rank)."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, (item, _) in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def zscores(ranking: Sequence[tuple[int, float]]) -> dict[int, float]:
    """(score - mean) / standard deviation over the list (all 0 when the scores are equal)."""
    if not ranking:
        return {}
    scores = np.fromiter((s for _, s in ranking), np.float64, len(ranking))
    sd = float(scores.std())
    norm = (scores - scores.mean()) / sd if sd > 0 else np.zeros_like(scores)
    return {item: float(v) for (item, _), v in zip(ranking, norm, strict=True)}


def convex(dense: Sequence[tuple[int, float]], sparse: Sequence[tuple[int, float]], alpha: float) -> Ranking:
    """alpha * z(dense) + (1 - alpha) * z(sparse) over the union of both lists."""
    d, s = zscores(dense), zscores(sparse)
    d_min, s_min = min(d.values(), default=0.0), min(s.values(), default=0.0)
    fused = {i: alpha * d.get(i, d_min) + (1 - alpha) * s.get(i, s_min) for i in d.keys() | s.keys()}
    return sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))


def fuse(
    dense: Sequence[tuple[int, float]],
    sparse: Sequence[tuple[int, float]],
    method: str,
    *,
    rrf_k: int = 60,
    alpha: float = 0.5,
) -> Ranking:
    if method == "convex":
        return convex(dense, sparse, alpha)
    if method == "rrf":
        return rrf([dense, sparse], rrf_k)
    raise ValueError(f"unknown fusion method {method!r}")
