"""How much of a RAG prompt any chunk order could take from the prefix cache: a bound for
bench.prefix_cache, computed without the engine.

`python -m bench.prefix_bound [--requests N] [--passages N]` builds bench.prefix_cache's
workloads and collection, retrieves top 3 for each question as the server would (hybrid), lays
each prompt out with the server's own PromptBuilder and counts, request after request, the
longest prefix shared with any earlier prompt, in whole KV blocks (what vLLM's prefix cache can
reuse with room for every prompt). Orders: rank, popular (serving.prompts.Popularity), and the
best of the 6 permutations for each request given the prompts before it (an oracle no server
has: it knows which prefixes are cached). Prints the share of prompt tokens cached per order,
workload and block size; bench/results/prefix-cache.md quotes it.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path
from typing import Any

from bench.prefix_cache import workloads


def _shared(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def simulate(prompts_by_order: list[list[list[int]]], block: int) -> float:
    """Cached share when each request takes one of its candidate prompts (the one sharing the
    longest prefix with the prompts before it), counted in whole blocks."""
    seen: list[list[int]] = []
    cached = total = 0
    for candidates in prompts_by_order:
        best, chosen = -1, candidates[0]
        for ids in candidates:
            longest = max((_shared(ids, s) for s in seen), default=0)
            if longest > best:
                best, chosen = longest, ids
        reusable = min(best, len(chosen) - 1) // block * block  # the last token is always computed
        cached += reusable
        total += len(chosen)
        seen.append(chosen)
    return cached / total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--passages", type=int, default=100)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from ragtune.retrieval import Document, Library
    from ragtune.serving.prompts import Popularity, PromptBuilder
    from ragtune.serving.settings import load_settings

    settings = load_settings()
    tok = AutoTokenizer.from_pretrained(settings.base_model_path)
    builder = PromptBuilder(tok, max_model_len=settings.engine.max_model_len, reserve_tokens=256)
    docs, loads = workloads(args.passages, args.requests)
    with tempfile.TemporaryDirectory() as tmp:
        library = Library(Path(tmp), settings.retrieval)
        coll = library.create("bench")
        coll.upsert([Document(d["id"], d["text"], title=d["title"]) for d in docs])
        rows: list[str] = []
        for load, questions in loads.items():
            popularity = Popularity()
            per: dict[str, list[list[list[int]]]] = {"rank": [], "popular": [], "best of 6": []}
            for q in questions:
                hits = coll.search(q, k=3, mode="hybrid")
                turn: list[dict[str, Any]] = [{"role": "user", "content": q}]

                def ids(order: list[int] | None, hits: Any = hits, turn: Any = turn) -> list[int]:
                    arranged = hits if order is None else [hits[i] for i in order]
                    return builder.chat(turn, None, list(arranged), None)[0]

                per["rank"].append([ids(None)])
                per["popular"].append([ids(popularity.arrange("bench", hits))])
                per["best of 6"].append([ids(list(p)) for p in itertools.permutations(range(len(hits)))])
            for block in (128, 32):
                for order, prompts in per.items():
                    rows.append(f"| {load} | {order} | {block} | {simulate(prompts, block):.1%} |")
        library.close()
    print("| workload | order | block | prompt tokens reusable |\n|---|---|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
