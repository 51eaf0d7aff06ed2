"""fp32, fp16 and bf16 vectors in the flat index: query latency at scale, and ranking quality.

    .venv/bin/python -m bench.precision [--chunks 100000] [--sets DIR,DIR,...]

Side by side in one run:
(a) one synthetic collection of `--chunks` chunks (bench.retrieval's: texts drawn from the first
    set's word frequencies, vectors = its real chunk vectors plus noise), opened A B C C B A (fp32,
    fp16, bf16, bf16, fp16, fp32). Each open with another precision rebuilds the flat index from the
    stored vectors. Per open: hybrid and dense p50 / p99 with the query embedding included
    (every query distinct, cache cleared), hybrid with the query embedding cached, the index's
    memory. Queries: the first set's real ones, embedded for real.
(b) on each set (the real embedder over its corpus): nDCG@10 and R@10 of dense and hybrid
    search in each precision, on one collection.
The embedder is the default one (`embed_backend` and `embed_query_backend` 'auto'), so the query
embedding is what a server on this machine would run.
Writes bench/results/precision.json and bench/results/precision.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.machine import machine_with_load  # noqa: E402
from bench.retrieval import (  # noqa: E402
    RESULTS,
    SyntheticDocs,
    build_synthetic,
    default_embedder,
    measure_queries,
    settings,
    synthetic_texts,
)
from ragtune.evaluation.retrieval import evaluate, load_dataset  # noqa: E402
from ragtune.retrieval import Library  # noqa: E402
from ragtune.retrieval.embedder import DEFAULT_EMBEDDER  # noqa: E402
from ragtune.retrieval.ingest import load_beir, upsert_batches  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DISFLQA = Path(__file__).resolve().parents[1] / "examples" / "disflqa"
PRECISIONS = ("fp32", "fp16", "bf16")
ORDER = PRECISIONS + PRECISIONS[::-1]  # A B C C B A


def quality(root: Path, dataset: Path, embedder: Any) -> tuple[dict[str, Any], np.ndarray]:
    """nDCG@10 / R@10 per precision and mode on one collection; also its stored vectors."""
    data = load_dataset(dataset)
    lib = Library(root, settings(), embedders={DEFAULT_EMBEDDER: embedder})
    c = lib.create("corpus")
    upsert_batches(c, [d for d in load_beir(dataset / "corpus.jsonl") if d.text.strip()], batch_size=256)
    conn = c.store.reader()
    dim = embedder.dimension
    pool = np.frombuffer(b"".join(r[0] for r in conn.execute("SELECT embedding FROM chunks")), np.float32)
    lib.close()
    out: dict[str, Any] = {"queries": len(data.queries)}
    for precision in PRECISIONS:
        lib = Library(root, settings(vector_precision=precision), embedders={DEFAULT_EMBEDDER: embedder})
        c = lib.open("corpus")
        for mode in ("dense", "hybrid"):
            m = evaluate(c, data, mode=mode)
            out[f"{mode}_{precision}"] = {k: m[k] for k in ("ndcg@10", "recall@10")}
        lib.close()
    return out, pool.reshape(-1, dim)


def latency(root: Path, texts: list[str], queries: list[str], synthetic: SyntheticDocs) -> dict[str, Any]:
    build_s = build_synthetic(root, "syn", texts, synthetic)
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PRECISIONS}
    for precision in ORDER:
        t0 = time.perf_counter()
        lib = Library(root, settings(vector_precision=precision), embedders={DEFAULT_EMBEDDER: synthetic})
        c = lib.open("syn")
        opened = time.perf_counter() - t0
        got = measure_queries(c, queries)
        runs[precision].append(
            {
                "open_seconds": round(opened, 2),
                "hybrid": got["hybrid"],
                "dense": got["dense"],
                "sparse": got["sparse"],
                "query_embedding": got["query_embedding"],
                "hybrid_cached_query": got["hybrid_cached_query"],
                "index_memory_bytes": c.stats()["index_memory_bytes"],
            }
        )
        lib.close()
    return {"chunks": len(texts), "build_seconds": round(build_s, 1), "runs": runs}


def mean_of(runs: list[dict[str, Any]], key: str, q: str = "p50_ms") -> float:
    return round(float(np.mean([r[key][q] for r in runs])), 2)


def write_markdown(report: dict[str, Any], path: Path) -> None:
    lat = report["latency"]
    runs = lat["runs"]
    lines = [
        "# Flat index vectors in fp32, fp16 and bf16",
        "",
        f"`{report['command']}` on {report['date']}: {report['machine']['cpu']}, "
        f"{report['machine']['nproc']} cores, load average {report['machine']['loadavg_before']} before, "
        f"{report['machine']['loadavg_after']} after. Embedder: {report['embedder']}.",
        "",
        f"## Query latency at {lat['chunks']:,} chunks",
        "",
        "Milliseconds; opened A B C C B A, each row the mean of its two opens.",
        "",
        "| vectors | hybrid p50 / p99 | dense p50 / p99 | sparse p50 | query embedding p50 "
        "| hybrid, cached query p50 | index memory MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for precision in PRECISIONS:
        r = runs[precision]
        mem = r[0]["index_memory_bytes"] / 2**20
        lines.append(
            f"| {precision} | {mean_of(r, 'hybrid')} / {mean_of(r, 'hybrid', 'p99_ms')} "
            f"| {mean_of(r, 'dense')} / {mean_of(r, 'dense', 'p99_ms')} | {mean_of(r, 'sparse')} "
            f"| {mean_of(r, 'query_embedding')} | {mean_of(r, 'hybrid_cached_query')} | {mem:.0f} |"
        )
    for half in PRECISIONS[1:]:
        ratio = {
            k: round(mean_of(runs[half], k) / mean_of(runs["fp32"], k), 2)
            for k in ("hybrid", "dense", "hybrid_cached_query")
        }
        lines += [
            "",
            f"{half} / fp32 p50: hybrid {ratio['hybrid']}, dense {ratio['dense']}, "
            f"hybrid with a cached query {ratio['hybrid_cached_query']}.",
        ]
    seen = dict.fromkeys(PRECISIONS, 0)
    opens = []
    for p in ORDER:
        r = runs[p][seen[p]]
        seen[p] += 1
        opens.append(f"{p} hybrid p50 {r['hybrid']['p50_ms']} ms, dense {r['dense']['p50_ms']} ms")
    lines += [
        "",
        "Every open, in order: " + "; ".join(opens) + ".",
        "",
        "## Ranking quality",
        "",
        "Each cell: " + " / ".join(PRECISIONS) + ".",
        "",
        "| set | queries | dense nDCG@10 | dense R@10 | hybrid nDCG@10 | hybrid R@10 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, q in report["quality"].items():
        cells = [
            " / ".join(f"{q[f'{mode}_{p}'][metric]:.4f}" for p in PRECISIONS)
            for mode in ("dense", "hybrid")
            for metric in ("ndcg@10", "recall@10")
        ]
        lines.append(f"| {name} | {q['queries']} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--sets", default=f"{SHARED / 'cranfield'},{DISFLQA}", help="BEIR folders, comma-separated"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sets = [Path(s) for s in args.sets.split(",") if s]
    loadavg_before = os.getloadavg()
    real = default_embedder()
    report: dict[str, Any] = {"quality": {}, "embedder": real.label}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ragtune-precision-") as tmp:
        work = Path(tmp)
        pool = None
        for i, dataset in enumerate(sets):
            q, vecs = quality(work / f"q{i}", dataset, real)
            report["quality"][dataset.name] = q
            print(dataset.name, json.dumps(q), flush=True)
            pool = vecs if pool is None else pool
        first = sets[0]
        docs = [d for d in load_beir(first / "corpus.jsonl") if d.text.strip()]
        queries = list(load_dataset(first).queries.values())[: args.queries]
        synthetic = SyntheticDocs(real, pool)
        report["latency"] = latency(work / "scale", synthetic_texts(docs, args.chunks), queries, synthetic)
    report.update(
        {
            "command": f"python -m bench.precision --chunks {args.chunks} --sets {args.sets}",
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "machine": machine_with_load(loadavg_before),
        }
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "precision.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.out / "precision.md")
    print((args.out / "precision.md").read_text())


if __name__ == "__main__":
    main()
