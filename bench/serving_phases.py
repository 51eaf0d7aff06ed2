"""The three measurements of the serving benchmark, each against one running server.

1. `rag_off`: streamed chat at several concurrencies (same on both servers).
2. `rag_latency` (ragtune only): TTFT at concurrency 1 with retrieval on, off, and with the same
   kind of retrieved context pasted into the prompt by the client (rag off), which splits the
   TTFT retrieval adds into the retrieval itself and the prefill of a longer prompt.
3. `adapters`: throughput with requests round-robin over 4 LoRA adapters vs all on the base.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import httpx

from bench.serving_data import Questions
from bench.serving_load import client, percentile, run_level, stream_chat
from bench.serving_servers import Server


def chat_body(server: Server, question: str, *, max_tokens: int, model: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model or server.model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
    }
    if server.kind == "ragtune":
        body["rag"] = False  # explicit: phase 1 and 3 measure generation only
    return body


async def measured_level(server: Server, bodies: list[dict[str, Any]], *, concurrency: int) -> dict[str, Any]:
    """`run_level` plus the CPU time the server's API process and engine processes spent on it.

    The API process's CPU per request is the serving layer's cost (HTTP, JSON, tokenization,
    the AsyncLLM client, SSE): unlike wall time, it hardly moves with the machine's other load.
    """
    before = server.cpu_seconds()
    level = await run_level(server.url, bodies, concurrency=concurrency)
    after = server.cpu_seconds()
    if before and after:
        level["cpu_api_s"] = round(after["api"] - before["api"], 3)
        level["cpu_engine_s"] = round(after["engine"] - before["engine"], 3)
    return level


async def warmup(server: Server, questions: Questions, *, n: int = 4, max_tokens: int = 16) -> None:
    bodies = [chat_body(server, q, max_tokens=max_tokens) for q in questions.take(n)]
    level = await run_level(server.url, bodies, concurrency=n)
    if level["errors"]:
        raise RuntimeError(f"{server.kind} warm-up failed: {level['first_error']}")


async def rag_off(
    server: Server, questions: Questions, *, levels: dict[int, int], max_tokens: int
) -> dict[int, dict[str, Any]]:
    """{concurrency: summary}; `levels` maps concurrency to a request count."""
    out = {}
    for conc, n in levels.items():
        bodies = [chat_body(server, q, max_tokens=max_tokens) for q in questions.take(n)]
        out[conc] = await measured_level(server, bodies, concurrency=conc)
        lv = out[conc]
        print(
            f"  {server.kind:8s} c={conc:<3d} {lv['throughput_tok_s']:7.1f} tok/s  "
            f"TTFT p50 {lv['ttft_p50_ms']} ms  p99 {lv['ttft_p99_ms']} ms  "
            f"API CPU {lv.get('cpu_api_s')} s  errors {lv['errors']}",
            flush=True,
        )
    return out


# -- phase 2: retrieval on ragtune ---------------------------------------------------------


async def ingest(server: Server, docs: list[dict[str, Any]], *, batch: int = 500) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, timeout=900) as http:
        r = await http.post("/v1/collections", json={"name": "bench"})
        if r.status_code not in (200, 201):
            raise RuntimeError(f"POST /v1/collections -> {r.status_code}: {r.text[:500]}")
        started = time.perf_counter()
        counts = {"added": 0, "updated": 0, "unchanged": 0}
        for i in range(0, len(docs), batch):
            r = await http.post("/v1/collections/bench/documents", json={"documents": docs[i : i + batch]})
            if r.status_code != 200:
                raise RuntimeError(f"POST /v1/collections/bench/documents -> {r.status_code}: {r.text[:500]}")
            for k in counts:  # each a list of document ids (or a count)
                v = r.json().get(k, 0)
                counts[k] += len(v) if isinstance(v, list) else int(v)
        elapsed = time.perf_counter() - started
        stats = (await http.get("/v1/collections/bench")).json()
    return {
        "documents": len(docs),
        "batch": batch,
        "seconds": round(elapsed, 1),
        "docs_per_s": round(len(docs) / elapsed, 1),
        **counts,
        "collection_stats": stats,
    }


async def _metric(http: httpx.AsyncClient, name: str) -> dict[str, float]:
    """Sum of `name` samples over all label sets, keyed by sample name (_sum, _count)."""
    text = (await http.get("/metrics")).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(rf"^({re.escape(name)}_(?:sum|count))(?:\{{[^}}]*\}})? ([0-9.eE+-]+)$", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


async def rag_latency(
    server: Server, questions: Questions, *, n: int, top_k: int, max_tokens: int
) -> dict[str, Any]:
    """TTFT p50 at concurrency 1: rag off / rag on / context pasted by the client (rag off)."""
    from ragtune.core.prompt import ContextChunk, apply_context

    rag = {"collection": "bench", "top_k": top_k}
    q_off, q_on, q_paste = questions.take(n), questions.take(n), questions.take(n)
    warm = questions.take(5)
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as http:
        # The pasted condition needs the chunks ragtune would retrieve for its questions; the
        # search endpoint runs the same hybrid search (timed here from the client, cold cache).
        pasted, search_ms = [], []
        await http.post("/v1/collections/bench/search", json={"query": warm[0], "top_k": top_k})
        for q in q_paste:
            t0 = time.perf_counter()
            r = await http.post("/v1/collections/bench/search", json={"query": q, "top_k": top_k})
            search_ms.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise RuntimeError(f"POST /v1/collections/bench/search -> {r.status_code}: {r.text[:500]}")
            data = r.json()
            hits = data.get("data", data.get("results", data)) if isinstance(data, dict) else data
            chunks = [ContextChunk(h["text"], h.get("title"), h.get("source")) for h in hits]
            msgs = apply_context([{"role": "user", "content": q}], chunks)
            pasted.append(msgs)

    def body(kind: str, i: int) -> dict[str, Any]:
        if kind == "off":
            return {**chat_body(server, q_off[i], max_tokens=max_tokens), "rag": False}
        if kind == "on":
            return {**chat_body(server, q_on[i], max_tokens=max_tokens), "rag": rag}
        return {**chat_body(server, "", max_tokens=max_tokens), "messages": pasted[i], "rag": False}

    kinds = ("off", "on", "pasted")
    results: dict[str, list[Any]] = {k: [] for k in kinds}
    async with client(1, 300) as http2:
        # Warm-up of each kind (the first retrieval opens the collection and loads the embedder).
        for j, q in enumerate(warm[1:]):
            b = {**chat_body(server, q, max_tokens=max_tokens), "rag": rag if j % 2 else False}
            await stream_chat(http2, server.url, b)
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            before = await _metric(http, "ragtune_retrieval_seconds")
        for i in range(n):  # interleaved, order rotated, so drift and noise hit all three alike
            order = kinds[i % 3 :] + kinds[: i % 3]
            for kind in order:
                results[kind].append(await stream_chat(http2, server.url, body(kind, i)))
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
        after = await _metric(http, "ragtune_retrieval_seconds")

    out: dict[str, Any] = {"requests_per_condition": n, "top_k": top_k, "max_tokens": max_tokens}
    for kind in kinds:
        ok = [r for r in results[kind] if r.ok]
        ttfts = [r.ttft for r in ok if r.ttft is not None]
        out[kind] = {
            "errors": len(results[kind]) - len(ok),
            "first_error": next((r.error for r in results[kind] if not r.ok), None),
            "ttft_p50_ms": _ms(percentile(ttfts, 50)),
            "ttft_p90_ms": _ms(percentile(ttfts, 90)),
            "ttft_mean_ms": _ms(sum(ttfts) / len(ttfts)) if ttfts else None,
            "prompt_tokens_mean": round(sum(r.prompt_tokens for r in ok) / len(ok), 1) if ok else None,
        }
    p50 = {k: out[k]["ttft_p50_ms"] for k in kinds}
    if None not in p50.values():
        out["added_ttft_p50_ms"] = round(p50["on"] - p50["off"], 2)
        out["retrieval_share_ms"] = round(p50["on"] - p50["pasted"], 2)
        out["longer_prompt_share_ms"] = round(p50["pasted"] - p50["off"], 2)
    pairs = [
        on.ttft - pa.ttft
        for on, pa in zip(results["on"], results["pasted"], strict=True)
        if on.ok and pa.ok and on.ttft is not None and pa.ttft is not None
    ]
    out["retrieval_share_paired_median_ms"] = _ms(percentile(pairs, 50))
    count = after.get("ragtune_retrieval_seconds_count", 0) - before.get("ragtune_retrieval_seconds_count", 0)
    total = after.get("ragtune_retrieval_seconds_sum", 0) - before.get("ragtune_retrieval_seconds_sum", 0)
    out["server_retrieval_mean_ms"] = round(total / count * 1000, 2) if count else None
    out["server_retrieval_count"] = int(count)
    out["client_search_p50_ms"] = _ms(percentile([s / 1000 for s in search_ms], 50))
    return out


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 2)


# -- phase 3: adapters ---------------------------------------------------------------------


async def load_adapters(server: Server, folders: list[Path]) -> list[str]:
    names = [f.name for f in folders]
    async with httpx.AsyncClient(base_url=server.url, timeout=300) as http:
        for f in folders:
            if server.kind == "ragtune":
                r = await http.post("/v1/adapters", json={"name": f.name, "path": f.name})
            else:
                r = await http.post("/v1/load_lora_adapter", json={"lora_name": f.name, "lora_path": str(f)})
            if r.status_code not in (200, 201):
                raise RuntimeError(
                    f"{server.kind}: loading adapter {f.name} -> {r.status_code}: {r.text[:500]}"
                )
    return names


async def adapters(
    server: Server, questions: Questions, names: list[str], *, concurrency: int, n: int, repeats: int,
    max_tokens: int,
) -> dict[str, Any]:  # fmt: skip
    """Alternating levels: base only, then round-robin over `names`, `repeats` times."""
    # One request per adapter first, so each is in the engine's LoRA slots before timing.
    warm = [
        chat_body(server, q, max_tokens=4, model=m)
        for q, m in zip(questions.take(len(names)), names, strict=True)
    ]
    await run_level(server.url, warm, concurrency=len(names))
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "mixed": []}
    for _ in range(repeats):
        for kind in ("base", "mixed"):
            qs = questions.take(n)
            bodies = [
                chat_body(
                    server, q, max_tokens=max_tokens, model=None if kind == "base" else names[i % len(names)]
                )
                for i, q in enumerate(qs)
            ]
            lv = await measured_level(server, bodies, concurrency=concurrency)
            runs[kind].append(lv)
            print(
                f"  {server.kind:8s} {kind:5s} c={concurrency} {lv['throughput_tok_s']:7.1f} tok/s  "
                f"TTFT p50 {lv['ttft_p50_ms']} ms  errors {lv['errors']}",
                flush=True,
            )
    return runs


def run(coro: Any) -> Any:
    return asyncio.run(coro)
