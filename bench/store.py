"""Store benchmark: the same texts into a SQLite collection and a PostgreSQL one, side by side.

    .venv/bin/python -m bench.store --dataset ../shared/data/cranfield [--docs 500]

Measures, for each store (PostgreSQL: a throwaway server on loopback with fsync on, started
like the tests' one):
(a) upsert throughput with embedding (the real MiniLM, every text embedded once per store);
(b) upsert throughput of the store alone (vectors already computed: chunking + transaction);
(c) hybrid query latency (k=5) over the data set's queries, with the query embedding and with
    it cached (the store's own share), the two stores interleaved query by query;
(d) PostgreSQL only: two Library objects on one database (two replicas): the time from a write
    acknowledged by replica A to the first search on replica B that finds it;
(e) with --scale N: N more synthetic one-chunk documents (texts drawn from the data set's words,
    random vectors: embedding them would take hours here and does not change what a query
    costs), then the same hybrid queries (query embeddings cached) and the time another
    process or a new replica takes to open the collection, and a restarted one (PostgreSQL: from
    the snapshot the replica keeps in its own folder).
Writes bench/results/store.json and bench/results/store.md. Ratios are PostgreSQL / SQLite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import cpu_model, mem_gib
from ragtune.retrieval import Collection, Document, Library
from ragtune.retrieval.embed_backends import load_embedder
from ragtune.retrieval.embedder import Embedder
from ragtune.retrieval.ingest import load_beir
from ragtune.retrieval.settings import RetrievalSettings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import pg_server  # noqa: E402  (the tests' throwaway server)

RESULTS = Path(__file__).parent / "results"
EMBEDDER = "all-MiniLM-L6-v2"


class Memo(Embedder):
    """The real embedder with a memo: `fresh()` forgets, so each store pays for its own embedding."""

    def __init__(self, inner: Embedder):
        super().__init__(query_cache_size=0)
        self.inner = inner
        self.id, self.dimension, self.max_tokens, self.dtype = (
            inner.id,
            inner.dimension,
            inner.max_tokens,
            inner.dtype,
        )
        self.memo: dict[str, np.ndarray] = {}
        self.use_memo = True

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if not self.use_memo or t not in self.memo]
        if todo:
            self.memo.update(zip(todo, self.inner._encode(todo), strict=True))
        return np.stack([self.memo[t] for t in texts])

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    def token_offsets(self, text: str) -> tuple[list[tuple[int, int]], list[bool]]:
        return self.inner.token_offsets(text)


class Synthetic(Memo):
    """Known texts (the real queries) get their real vectors; others a random unit vector."""

    def __init__(self, memo: Memo):
        super().__init__(memo.inner)
        self.memo = memo.memo

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        out = []
        for t in texts:
            vec = self.memo.get(t)
            if vec is None:
                seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
                vec = np.random.default_rng(seed).standard_normal(self.dimension).astype(np.float32)
                vec /= np.linalg.norm(vec)
            out.append(vec)
        return np.stack(out)


def synthetic_docs(corpus: list[Document], n: int) -> list[Document]:
    words = [w for d in corpus for w in d.text.split()]
    rng = random.Random(0)
    return [Document(f"syn{i}", " ".join(rng.choices(words, k=60))) for i in range(n)]


def scaled(
    work: Path, stores: dict[str, str | None], memo: Memo, docs: list[Document], queries: list[str]
) -> dict:
    """(e): the same synthetic documents into each store, then queries and a second opener."""
    out: dict[str, dict[str, float]] = {}
    synthetic = Synthetic(memo)
    libs = {
        key: Library(work / f"scale-{key}", RetrievalSettings(store_url=url), embedders={EMBEDDER: synthetic})
        for key, url in stores.items()
    }
    for key, lib in libs.items():
        seconds = ingest(lib, "scaled", docs, 500)
        out[key] = {
            "chunks": lib.open("scaled").stats()["chunks"],
            "upsert_store_only_docs_per_s": round(len(docs) / seconds, 1),
        }
    colls = {key: lib.open("scaled") for key, lib in libs.items()}
    latencies(colls, queries)
    for key, lat in latencies(colls, queries).items():
        out[key] |= {"hybrid_cached_query_p50_ms": pct(lat, 50), "hybrid_cached_query_p99_ms": pct(lat, 99)}
    for key, url in stores.items():
        # SQLite: another process reads the snapshot files beside the database. PostgreSQL: a new
        # replica (its own, empty folder) builds both indexes from the database.
        folder = work / (f"scale-{key}" if url is None else f"scale-{key}-new-replica")
        other = Library(folder, RetrievalSettings(store_url=url), embedders={EMBEDDER: synthetic})
        t = time.perf_counter()
        other.open("scaled")
        out[key]["open_by_another_process_s"] = round(time.perf_counter() - t, 2)
        other.close()
    for lib in libs.values():
        lib.close()  # saves its snapshot (PostgreSQL: in the replica's own folder)
    for key, url in stores.items():  # the same process (or replica) started again
        again = Library(
            work / f"scale-{key}", RetrievalSettings(store_url=url), embedders={EMBEDDER: synthetic}
        )
        t = time.perf_counter()
        again.open("scaled")
        out[key]["reopen_after_restart_s"] = round(time.perf_counter() - t, 2)
        again.close()
    return out


def ingest(lib: Library, name: str, docs: list[Document], batch: int) -> float:
    c = lib.create(name)
    t = time.perf_counter()
    for lo in range(0, len(docs), batch):
        c.upsert(docs[lo : lo + batch])
    return time.perf_counter() - t


def latencies(colls: dict[str, Collection], queries: list[str]) -> dict[str, list[float]]:
    """Hybrid k=5 search times per store, interleaved query by query (the order alternating), so
    that a shared machine's changing load falls on both stores alike."""
    out: dict[str, list[float]] = {k: [] for k in colls}
    for n, q in enumerate(queries):
        for key in list(colls)[:: 1 if n % 2 else -1]:
            t = time.perf_counter()
            colls[key].search(q, k=5, mode="hybrid")
            out[key].append((time.perf_counter() - t) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dataset", type=Path, required=True, help="a BEIR folder (corpus.jsonl, queries.jsonl)"
    )
    parser.add_argument("--docs", type=int, default=500)
    parser.add_argument("--batch", type=int, default=50, help="documents per upsert")
    parser.add_argument("--replica-writes", type=int, default=40)
    parser.add_argument("--scale", type=int, default=0, help="synthetic documents for (e); 0 skips it")
    args = parser.parse_args()
    corpus = list(load_beir(args.dataset / "corpus.jsonl"))
    docs, extra = corpus[: args.docs], corpus[args.docs : args.docs + args.replica_writes]
    queries = [json.loads(line)["text"] for line in (args.dataset / "queries.jsonl").open()]
    memo = Memo(load_embedder(EMBEDDER, backend="torch", dtype="auto"))
    server = pg_server.start(fsync=True)
    work = Path(tempfile.mkdtemp(prefix="ragtune-bench-store-"))
    load_before = os.getloadavg()
    result: dict[str, Any] = {}
    try:
        url = server.create_database("bench")
        stores = {"sqlite": None, "postgres": url}
        libs = {
            k: Library(work / k, RetrievalSettings(store_url=v), embedders={EMBEDDER: memo})
            for k, v in stores.items()
        }
        for key, lib in libs.items():  # (a) each store embeds every text itself
            memo.use_memo = False
            seconds = ingest(lib, "embedded", docs, args.batch)
            memo.use_memo = True
            chunks = lib.open("embedded").stats()["chunks"]
            result[key] = {"chunks": chunks, "upsert_embedded_docs_per_s": round(len(docs) / seconds, 1)}
        for key, lib in libs.items():  # (b) vectors known: the store's own cost
            seconds = ingest(lib, "stored", docs, args.batch)
            result[key]["upsert_store_only_docs_per_s"] = round(len(docs) / seconds, 1)
        colls = {key: lib.open("embedded") for key, lib in libs.items()}
        memo.use_memo = False  # (c) first pass: each store's search embeds the query itself
        cold = latencies(colls, queries)
        memo.use_memo = True  # then the query embeddings are known: the store's own share
        latencies(colls, queries)
        warm = latencies(colls, queries)
        for key in libs:
            result[key] |= {
                "hybrid_p50_ms": pct(cold[key], 50),
                "hybrid_p99_ms": pct(cold[key], 99),
                "hybrid_cached_query_p50_ms": pct(warm[key], 50),
                "hybrid_cached_query_p99_ms": pct(warm[key], 99),
            }
        replica = Library(work / "b", RetrievalSettings(store_url=url), embedders={EMBEDDER: memo})
        a, b = libs["postgres"].open("embedded"), replica.open("embedded")
        seen = []
        for doc in extra:  # (d) acknowledged on A -> found on B
            a.upsert([doc])
            t = time.perf_counter()
            while doc.id not in {h.document_id for h in b.search(doc.text[:200], k=10, mode="sparse")}:
                time.sleep(0.001)
            seen.append((time.perf_counter() - t) * 1000)
        result["postgres"] |= {
            "replica_visible_p50_ms": pct(seen, 50),
            "replica_visible_p99_ms": pct(seen, 99),
        }
        replica.close()
        for lib in libs.values():
            lib.close()
        if args.scale:
            result["scaled"] = scaled(work, stores, memo, synthetic_docs(corpus, args.scale), queries)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    s, p = result["sqlite"], result["postgres"]
    ratios = {k: round(p[k] / s[k], 2) for k in s if k != "chunks" and k in p}
    out = {
        "command": "python -m bench.store " + " ".join(sys.argv[1:]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "mem_gib": mem_gib(),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "docs": len(docs),
        "queries": len(queries),
        "results": result,
        "ratios_postgres_over_sqlite": ratios,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "store.json").write_text(json.dumps(out, indent=2) + "\n")
    rows = [f"| {k} | {s[k]} | {p[k]} | {ratios[k]} |" for k in ratios]
    md = [
        "# Document stores: SQLite vs PostgreSQL on the same texts",
        "",
        f"`{out['command']}` on {out['date']}: {out['machine']['cpu']}, {out['machine']['cores']} cores, "
        f"load average {load_before[0]:.2f} before / {os.getloadavg()[0]:.2f} after "
        f"(shared machine). {len(docs)} documents ({s['chunks']} chunks), {len(queries)} queries, "
        "PostgreSQL 15 on loopback with fsync on.",
        "",
        "| measure | SQLite | PostgreSQL | ratio |",
        "|---|---|---|---|",
        *rows,
        "",
        f"Two replicas on one PostgreSQL: a write acknowledged by A is found by a search on B after "
        f"p50 {p['replica_visible_p50_ms']} ms, p99 {p['replica_visible_p99_ms']} ms "
        f"({len(extra)} writes; B checks the store's version on every search).",
        "",
    ]
    if "scaled" in result:
        ss, sp = result["scaled"]["sqlite"], result["scaled"]["postgres"]
        out["ratios_scaled_postgres_over_sqlite"] = {k: round(sp[k] / ss[k], 2) for k in ss if k != "chunks"}
        (RESULTS / "store.json").write_text(json.dumps(out, indent=2) + "\n")
        md += [
            f"A collection of {ss['chunks']:,} synthetic one-chunk documents (query embeddings cached; "
            "another process opens SQLite from its snapshot files, a new PostgreSQL replica builds both "
            "indexes from the database; restarted, a PostgreSQL replica reads its own snapshot and "
            "the changes since):",
            "",
            "| measure | SQLite | PostgreSQL | ratio |",
            "|---|---|---|---|",
            *[f"| {k} | {ss[k]} | {sp[k]} | {round(sp[k] / ss[k], 2)} |" for k in ss if k != "chunks"],
            "",
        ]
    (RESULTS / "store.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
