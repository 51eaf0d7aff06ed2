"""Embedder backends side by side: speed against plain fp32 encode, ranking quality, query latency.

    .venv/bin/python -m bench.embedders [--sets DIR,DIR,...] [--queries N]

In one run, on the first set's corpus texts (title and text, as a collection embeds them):
(a) seconds to embed them all with plain fp32 `SentenceTransformer.encode` and with each
    backend's `Embedder.embed` (what ingest calls), timed A B ... B A and averaged per backend;
(b) one query at a time, p50 per backend (100 distinct queries, no cache);
(c) on every set: dense nDCG@10 and R@10 of each backend (documents and queries by it), and of
    documents embedded by the 'auto' choice with queries by each other backend (a replica on
    another machine may search with another backend: are the vectors compatible?);
(d) what 'auto' picks on this machine and its probe measurements.
Writes bench/results/embedders.json and bench/results/embedders.md.
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

from bench.machine import machine_with_load, write_result  # noqa: E402
from ragtune.evaluation.retrieval import Dataset, load_dataset, ndcg_at, recall_at  # noqa: E402
from ragtune.retrieval.embed_backends import load_embedder  # noqa: E402
from ragtune.retrieval.embedder import DEFAULT_EMBEDDER, Embedder, resolve_model_path  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DISFLQA = Path(__file__).resolve().parents[1] / "examples" / "disflqa"
BACKENDS = [("torch", "fp32"), ("torch", "bf16"), ("onnx", "fp32"), ("onnx-int8", "fp32")]


def corpus(data: Dataset) -> tuple[list[str], list[str]]:
    ids, texts = [], []
    with data.corpus.open() as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                ids.append(str(row["_id"]))
                texts.append(f"{row.get('title') or ''}\n{row['text']}".strip())
    return ids, texts


def quality(data: Dataset, ids: list[str], docs: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    scores = queries @ docs.T
    ndcg, rec = [], []
    for row, qid in zip(scores, data.queries, strict=True):
        ranked = [ids[j] for j in np.argsort(-row)[:10]]
        ndcg.append(ndcg_at(ranked, data.qrels[qid], 10))
        rec.append(recall_at(ranked, data.qrels[qid], 10))
    return {"ndcg@10": round(float(np.mean(ndcg)), 4), "r@10": round(float(np.mean(rec)), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default=f"{SHARED / 'cranfield'},{DISFLQA}")
    parser.add_argument("--queries", type=int, default=2000, help="at most this many queries per set")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    load_before = os.getloadavg()
    sets = [load_dataset(Path(p), max_queries=args.queries) for p in args.sets.split(",")]
    cache = Path(tempfile.mkdtemp(prefix="ragtune-embedders-"))
    embedders: dict[str, Embedder] = {}
    for backend, dtype in BACKENDS:
        e = load_embedder(DEFAULT_EMBEDDER, backend=backend, dtype=dtype, cache_dir=cache, query_cache_size=0)  # type: ignore[arg-type]
        embedders[e.label] = e
    auto = load_embedder(DEFAULT_EMBEDDER, backend="auto", cache_dir=cache, query_cache_size=0)
    probe = json.loads(next(cache.glob("*/choice.json")).read_text())

    from sentence_transformers import SentenceTransformer

    plain = SentenceTransformer(str(resolve_model_path(DEFAULT_EMBEDDER)), device="cpu")
    ids, texts = corpus(sets[0])
    plain.encode(texts[:32], batch_size=64)
    for e in embedders.values():
        e.embed(texts[:32])
    runs: dict[str, list[float]] = {"plain": [], **{k: [] for k in embedders}}
    order = ["plain", *embedders]
    for name in order + order[::-1]:  # A B C ... C B A
        t0 = time.perf_counter()
        if name == "plain":
            plain.encode(texts, batch_size=64)
        else:
            embedders[name].embed(texts)
        runs[name].append(time.perf_counter() - t0)
    plain_s = float(np.mean(runs["plain"]))
    speed = {
        k: {
            "seconds": round(float(np.mean(v)), 2),
            "runs": [round(x, 2) for x in v],
            "vs_plain_fp32": round(plain_s / float(np.mean(v)), 2),
        }
        for k, v in runs.items()
    }
    queries = list(sets[0].queries.values())[:100]
    latency = {}
    for name, e in embedders.items():
        e.embed_query("warm up")
        lat = []
        for q in queries:
            t0 = time.perf_counter()
            e.embed_query(q)
            lat.append((time.perf_counter() - t0) * 1000)
        latency[name] = round(float(np.percentile(lat, 50)), 2)

    ranking: dict[str, Any] = {}
    for data in sets:
        ids, texts = corpus(data)
        qtexts = [q or " " for q in data.queries.values()]
        docs = {name: e.embed(texts) for name, e in embedders.items()}
        qvecs = {name: e.embed(qtexts) for name, e in embedders.items()}
        rows = {name: quality(data, ids, docs[name], qvecs[name]) for name in embedders}
        mixed = {
            f"docs {auto.label}, queries {name}": quality(data, ids, docs[auto.label], qvecs[name])
            for name in embedders
            if name != auto.label
        }
        ranking[data.name] = {"queries": len(data.queries), "same": rows, "mixed": mixed}

    record = {
        "command": "python -m bench.embedders " + f"--sets {args.sets} --queries {args.queries}",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine_with_load(load_before),
        "texts": len(corpus(sets[0])[1]),
        "speed": speed,
        "query_p50_ms": latency,
        "ranking": ranking,
        "auto": {"chosen": auto.label, "probe": next(iter(probe.values()))["measured"]},
    }
    write_result(args.out, "embedders", record, markdown(record))


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        "# Embedder backends",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), load average {m['loadavg_before']} before / "
        f"{m['loadavg_after']} after  ",
        f"Date: {r['date']}",
        "",
        f"## Speed: {r['texts']} corpus texts of the first set, A B ... B A, and one query at a time",
        "",
        "| | seconds (runs) | vs plain fp32 encode | one query p50 ms |",
        "|---|---:|---:|---:|",
    ]
    for name, s in r["speed"].items():
        label = "plain `SentenceTransformer.encode`, fp32" if name == "plain" else name
        runs = " / ".join(str(x) for x in s["runs"])
        p50 = r["query_p50_ms"].get(name, "")
        lines.append(f"| {label} | {s['seconds']} ({runs}) | {s['vs_plain_fp32']}x | {p50} |")
    lines += ["", "## Dense ranking quality (nDCG@10 / R@10)", ""]
    names = list(next(iter(r["ranking"].values()))["same"])
    lines += ["| set | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for set_name, q in r["ranking"].items():
        cells = [f"{q['same'][n]['ndcg@10']} / {q['same'][n]['r@10']}" for n in names]
        lines.append(f"| {set_name} ({q['queries']} q) | " + " | ".join(cells) + " |")
    lines += ["", f"Documents by the 'auto' choice ({r['auto']['chosen']}), queries by another backend:", ""]
    for set_name, q in r["ranking"].items():
        for label, v in q["mixed"].items():
            lines.append(f"- {set_name}, {label}: {v['ndcg@10']} / {v['r@10']}")
    lines += [
        "",
        f"## 'auto' on this machine: {r['auto']['chosen']}",
        "",
        "Its probe (48 texts, A B B A):",
        "",
    ]
    for label, v in r["auto"]["probe"].items():
        lines.append(f"- {label}: {v['speedup']}x torch-fp32, least cosine to it {v['min_cosine']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
