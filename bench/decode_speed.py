"""Decode throughput of a running server's base model, as the catalogue records it: greedy, no
retrieval, every reply exactly `--tokens` long (min_tokens), one stream and then 8 at once.

    ragtune serve --model qwen2.5-coder-1.5b-instruct --port 8460     # in one terminal
    python -m bench.decode_speed --server http://127.0.0.1:8460 --out speed-1.5b.json

Prints tok/s at each concurrency (output tokens over the level's wall time) and the first-token
p50; the machine block names the CPU's bf16 class, which the engine's dtype and speed follow.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import httpx

from bench.machine import machine
from bench.serving_load import run_level

QUESTIONS = [
    "Explain what a railway timetable is.",
    "Describe how a ticket machine works.",
    "What does a signal box do?",
    "Write a short note about night trains.",
]


def bodies(model: str, n: int, tokens: int) -> list[dict]:
    return [
        {
            "model": model,
            "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            "temperature": 0,
            "max_tokens": tokens,
            "min_tokens": tokens,
            "rag": False,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        for i in range(n)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="http://127.0.0.1:8000")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    url = args.server.rstrip("/")
    base = next(m["id"] for m in httpx.get(url + "/v1/models").json()["data"] if m.get("kind") == "base")
    asyncio.run(run_level(url, bodies(base, 1, 8), concurrency=1))  # warm-up
    levels = {}
    for concurrency, n in ((1, 3), (8, 16)):
        level = asyncio.run(run_level(url, bodies(base, n, args.tokens), concurrency=concurrency))
        if level["errors"]:
            raise SystemExit(f"{level['errors']} of {n} requests failed: {level['first_error']}")
        levels[concurrency] = {
            k: level[k] for k in ("requests", "errors", "wall_s", "throughput_tok_s", "ttft_p50_ms")
        }
        print(
            f"{base}: {concurrency} stream(s): {level['throughput_tok_s']} tok/s, "
            f"first token p50 {level['ttft_p50_ms']} ms"
        )
    result = {
        "command": "python -m bench.decode_speed --server " + args.server,
        "base_model": base,
        "tokens": args.tokens,
        "levels": levels,
        "machine": machine(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
