"""Retrieval evaluation on a BEIR-layout data set: nDCG@10, R@10, R@100, MRR@10, latency.

Chunk hits are folded into document rankings (a document ranks where its best chunk does).
nDCG uses linear gains from graded qrels, as pytrec_eval and the BEIR tables do.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.core.errors import RagtuneError
from ragtune.retrieval.collection import Collection
from ragtune.retrieval.search import search_options


class DatasetError(RagtuneError):
    code = "invalid_dataset"


@dataclass
class Dataset:
    name: str
    corpus: Path
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def load_dataset(root: Path, *, split: str = "test", max_queries: int | None = None) -> Dataset:
    if not root.is_dir():
        raise DatasetError(
            f"{root}: no such folder. A BEIR data set is a folder with corpus.jsonl, queries.jsonl "
            "and qrels/<split>.tsv (examples/disflqa ships one; Cranfield is not part of a clone)",
            param="dataset",
        )
    corpus, queries_file, qrels_file = (
        root / "corpus.jsonl",
        root / "queries.jsonl",
        root / "qrels" / f"{split}.tsv",
    )
    for f in (corpus, queries_file, qrels_file):
        if not f.exists():
            raise DatasetError(
                f"{root} is not a BEIR data set: {f.relative_to(root)} is missing "
                "(expected corpus.jsonl, queries.jsonl, qrels/<split>.tsv)",
                param="dataset",
            )
    qrels: dict[str, dict[str, int]] = {}
    with qrels_file.open() as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            score = int(row["score"])
            if score > 0:
                qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = score
    queries: dict[str, str] = {}
    with queries_file.open() as fh:
        for line in fh:
            if line.strip():
                q = json.loads(line)
                if str(q["_id"]) in qrels:
                    queries[str(q["_id"])] = q["text"]
    if max_queries is not None:
        queries = dict(list(queries.items())[:max_queries])
    return Dataset(root.name, corpus, queries, qrels)


def ndcg_at(ranked: Sequence[str], rels: dict[str, int], k: int) -> float:
    dcg = sum(rels.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(rels.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranked: Sequence[str], rels: dict[str, int], k: int) -> float:
    return len(set(ranked[:k]) & set(rels)) / len(rels) if rels else 0.0


def mrr_at(ranked: Sequence[str], rels: dict[str, int], k: int) -> float:
    for i, d in enumerate(ranked[:k]):
        if d in rels:
            return 1.0 / (i + 1)
    return 0.0


def evaluate(
    collection: Collection,
    dataset: Dataset,
    *,
    mode: str,
    fusion: str | None = None,
    depth: int = 100,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run every query once; chunk hits are asked for 2x depth so `depth` documents remain.
    `fusion` (hybrid only) overrides the collection's setting."""
    totals = {"ndcg@10": 0.0, "recall@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}
    latencies = []
    for qid, text in dataset.queries.items():
        t0 = time.perf_counter()
        # An empty query (DisflQA holds one) finds nothing and counts as a miss; search refuses it.
        hits = []
        if text.strip():
            hits = collection.search(text, k=min(2 * depth, 1000), mode=mode, fusion=fusion)
        latencies.append((time.perf_counter() - t0) * 1000)
        ranked = list(dict.fromkeys(h.document_id for h in hits))[:depth]
        rels = dataset.qrels[qid]
        totals["ndcg@10"] += ndcg_at(ranked, rels, 10)
        totals["recall@10"] += recall_at(ranked, rels, 10)
        totals["recall@100"] += recall_at(ranked, rels, 100)
        totals["mrr@10"] += mrr_at(ranked, rels, 10)
        if progress is not None:
            progress(1)
    n = max(len(dataset.queries), 1)
    lat = np.asarray(latencies) if latencies else np.zeros(1)
    return {
        "mode": mode,
        "fusion": search_options(collection.settings, fusion=fusion).fusion if mode == "hybrid" else None,
        "queries": len(dataset.queries),
        **{k: round(v / n, 4) for k, v in totals.items()},
        "latency_ms": {
            "p50": round(float(np.percentile(lat, 50)), 2),
            "p95": round(float(np.percentile(lat, 95)), 2),
            "p99": round(float(np.percentile(lat, 99)), 2),
        },
    }
