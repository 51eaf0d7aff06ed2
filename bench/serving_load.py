"""Load generation for the serving benchmark: streamed chat completions at a fixed concurrency.

A closed loop: `concurrency` workers take request bodies from one queue until it is empty, so
at most `concurrency` requests are in flight. TTFT is the time from sending a request to its first
chunk with non-empty `delta.content` (ragtune's first chunk carries only the role and `sources`,
so it does not count); output tokens come from the usage chunk (`stream_options.include_usage`).
Only the events up to the first token and the usage event are JSON-decoded: the client shares the
server's two cores, so it does as little per token as it can.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class RequestResult:
    ok: bool
    ttft: float | None = None  # seconds
    latency: float = 0.0  # seconds, send to [DONE]
    tokens: int = 0  # completion tokens (usage), else content chunks
    prompt_tokens: int = 0  # from usage
    error: str | None = None


def client(concurrency: int, timeout: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(timeout, connect=10.0))


async def stream_chat(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> RequestResult:
    """One streamed chat completion; never raises (errors come back in the result)."""
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    res = RequestResult(ok=False)
    chunks = 0
    usage_tokens: int | None = None
    started = time.perf_counter()
    try:
        async with http.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                res.error = f"HTTP {resp.status_code}: {(await resp.aread())[:300]!r}"
                return res
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    res.ok = True
                    break
                if res.ttft is None:
                    event = json.loads(data)
                    choices = event.get("choices") or []
                    if choices and (choices[0].get("delta") or {}).get("content"):
                        res.ttft = time.perf_counter() - started
                        chunks += 1
                elif '"usage"' in data and '"completion_tokens"' in data:
                    usage = json.loads(data).get("usage") or {}
                    usage_tokens = usage.get("completion_tokens", usage_tokens)
                    res.prompt_tokens = usage.get("prompt_tokens", 0)
                else:
                    chunks += 1
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    res.latency = time.perf_counter() - started
    res.tokens = usage_tokens if usage_tokens is not None else chunks
    if res.ok and res.ttft is None:
        res.ok, res.error = False, "stream ended without content"
    return res


async def run_level(
    url: str, bodies: list[dict[str, Any]], *, concurrency: int, timeout: float = 300.0
) -> dict[str, Any]:
    """Send every body with `concurrency` in flight; return the level's summary."""
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    results: list[RequestResult] = []

    async with client(concurrency, timeout) as http:

        async def worker() -> None:
            while True:
                try:
                    body = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                results.append(await stream_chat(http, url, body))

        started = time.perf_counter()
        await asyncio.wait_for(
            asyncio.gather(*(worker() for _ in range(concurrency))), timeout=timeout * max(1, len(bodies))
        )
        wall = time.perf_counter() - started
    return summarize(results, wall, concurrency=concurrency)


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for no values."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 2)


def summarize(results: list[RequestResult], wall: float, *, concurrency: int) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    lat = [r.latency for r in ok]
    tokens = sum(r.tokens for r in ok)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "first_error": next((r.error for r in results if not r.ok), None),
        "wall_s": round(wall, 3),
        "output_tokens": tokens,
        "throughput_tok_s": round(tokens / wall, 2) if wall > 0 else None,
        "ttft_p50_ms": _ms(percentile(ttfts, 50)),
        "ttft_p99_ms": _ms(percentile(ttfts, 99)),
        "ttft_mean_ms": _ms(statistics.fmean(ttfts)) if ttfts else None,
        "latency_p50_ms": _ms(percentile(lat, 50)),
        "ttfts_ms": [_ms(t) for t in ttfts],
    }


def merge(levels: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool repeats of one level: tokens over summed wall time, percentiles over all requests."""
    ttfts = [t / 1000 for lv in levels for t in lv["ttfts_ms"]]
    wall = sum(lv["wall_s"] for lv in levels)
    tokens = sum(lv["output_tokens"] for lv in levels)
    out = {
        "concurrency": levels[0]["concurrency"],
        "repeats": len(levels),
        "requests": sum(lv["requests"] for lv in levels),
        "errors": sum(lv["errors"] for lv in levels),
        "wall_s": round(wall, 3),
        "output_tokens": tokens,
        "throughput_tok_s": round(tokens / wall, 2) if wall > 0 else None,
        "throughput_per_repeat": [lv["throughput_tok_s"] for lv in levels],
        "ttft_p50_ms": _ms(percentile(ttfts, 50)),
        "ttft_p99_ms": _ms(percentile(ttfts, 99)),
        "ttft_p50_per_repeat": [lv["ttft_p50_ms"] for lv in levels],
    }
    if all("cpu_api_s" in lv for lv in levels):
        api = sum(lv["cpu_api_s"] for lv in levels)
        out["cpu_api_s"] = round(api, 3)
        out["cpu_engine_s"] = round(sum(lv["cpu_engine_s"] for lv in levels), 3)
        out["api_cpu_ms_per_request"] = round(api * 1000 / max(out["requests"], 1), 2)
        out["api_cpu_ms_per_token"] = round(api * 1000 / max(tokens, 1), 3)
        # How much CPU the engine got (other jobs on the machine lower it) and what it made of it.
        out["engine_cpu_share"] = round(out["cpu_engine_s"] / wall, 3) if wall > 0 else None
        out["tokens_per_engine_cpu_s"] = (
            round(tokens / out["cpu_engine_s"], 2) if out["cpu_engine_s"] else None
        )
    return out
