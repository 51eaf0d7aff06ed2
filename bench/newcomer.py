"""A newcomer's six questions about the demo documents, through `demo` and `grounded`.

Five are answered by one document of the demo collection (examples/house-style), one asks for a
fact no document holds. A reply is right when it holds the answer and cites the document that
says it (every `[n]` it writes points at that document); the sixth is right when it abstains.

    make demo MODEL=qwen2.5-coder-1.5b-instruct      # in one terminal (or any `ragtune demo`)
    python -m bench.newcomer --out bench/results/newcomer-1.5b.json

tests/test_serving_live.py asks the same questions through `grounded` on the default model.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import httpx

from bench.machine import machine
from ragtune.core.prompt import is_abstention
from ragtune.training.qa import contains

# (question, what a right answer holds (all of it), the document that says it; None: absent)
QUESTIONS: list[tuple[str, tuple[str, ...], str | None]] = [
    ("How often does the Harbor Line run?", ("15 minutes",), "t-harbor-0"),
    ("When does Pier Street station on the Harbor Line open on weekdays?", ("5:15",), "t-harbor-2"),
    ("How much does a single ticket on the Granite Line cost?", ("9 credits",), "t-granite-1"),
    ("Which trains work the Summit Line?", ("Pioneer",), "t-summit-4"),
    ("Between which stations does the Lantern Line run?", ("Castle Row", "Dunmore"), "t-lantern-0"),
    ("Is there wifi on the Granite Line?", (), None),
]
RAG = {"demo": {}, "grounded": {"collection": "demo"}}


def judge(reply: str, sources: list[dict[str, Any]], holds: tuple[str, ...], doc: str | None) -> dict:
    """Whether a reply is right: the answer with its document cited, or (doc None) the abstention."""
    cites = [int(n) for n in re.findall(r"\[(\d{1,3})\]", reply)]
    at = [i for i, s in enumerate(sources, start=1) if s["document_id"] == doc]
    if doc is None:
        return {"right": is_abstention(reply), "abstains": is_abstention(reply)}
    answered = all(contains(reply, h) for h in holds)
    cited = bool(cites) and bool(at) and all(n in at for n in cites)
    return {"right": answered and cited, "answered": answered, "cited": cited}


def ask(client: httpx.Client, model: str, question: str, max_tokens: int) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "rag": RAG.get(model, {}),
    }
    resp = client.post("/v1/chat/completions", json=body)
    resp.raise_for_status()
    data = resp.json()
    return {"reply": data["choices"][0]["message"]["content"] or "", "sources": data.get("sources") or []}


def run(client: httpx.Client, models: list[str], max_tokens: int) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for model in models:
        rows = out.setdefault(model, [])
        for question, holds, doc in QUESTIONS:
            got = ask(client, model, question, max_tokens)
            rows.append(
                {
                    "question": question,
                    "reply": got["reply"],
                    **judge(got["reply"], got["sources"], holds, doc),
                }
            )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--server", default="http://127.0.0.1:8000")
    p.add_argument("--models", default="demo,grounded")
    p.add_argument("--max-tokens", type=int, default=80)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    with httpx.Client(base_url=args.server, timeout=600) as client:
        served = client.get("/v1/models").json()
        results = run(client, args.models.split(","), args.max_tokens)
    base = next((m["id"] for m in served["data"] if m.get("kind") == "base"), None)
    for model, rows in results.items():
        print(f"{model}: {sum(r['right'] for r in rows)}/{len(rows)} right")
        for r in rows:
            print(f"  {'ok ' if r['right'] else 'NO '} {r['question']}\n      {r['reply'][:160]!r}")
    if args.out:
        record = {
            "command": f"python -m bench.newcomer --server {args.server} --models {args.models}",
            "base_model": base,
            "machine": machine(),
            "results": results,
        }
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
