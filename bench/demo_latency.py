"""First-token latency of `make demo` as a newcomer meets it: the README's demo questions, then
more of the same shape from examples/northwind-qa, one at a time, through the `demo` profile
(retrieval from the `demo` collection), streamed. The northwind-qa questions are about lines the
demo collection does not hold: they time the same prompt shape, and their answers are not graded.

    make demo MODEL=qwen2.5-coder-0.5b-instruct        # in one terminal
    python -m bench.demo_latency --out bench/results/demo-latency-qwen0.5b.json

Prints time to first token (p50, p90) and whether the README answers hold their fact. Each
question is answered once in full, then probed `--repeats` more times for its first token
alone; a question's first-token time is the least of its probes, so that other work on a shared
machine inflates it less. Start the server with prefix caching off
(RAGTUNE_ENGINE__EXTRA='{"enable_prefix_caching": false}') so that a probe pays the full prefill
as a first asking does: the figures are then an upper bound for `make demo`, which caches.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from ragtune.core.cpu import bf16_class

REPO = Path(__file__).resolve().parents[1]
# The demo questions the README shows (its quick start and grounding sections).
README_QUESTIONS = [
    ("How often does the Harbor Line run?", "15 minutes"),
    ("When does Pier Street station open on weekdays?", None),  # two lines stop there: 5:15 or 6:15
    ("What trains run on the Heron Line?", None),  # the README asks it of examples/northwind-qa
    ("What is a good recipe for pancakes?", None),
]


def questions(limit: int) -> list[tuple[str, str | None]]:
    out = list(README_QUESTIONS)
    seen = {q for q, _ in out}
    with (REPO / "examples" / "northwind-qa" / "queries.jsonl").open() as fh:
        for line in fh:
            row = json.loads(line)
            if row["text"] not in seen and len(out) < len(README_QUESTIONS) + limit:
                out.append((row["text"], None))  # not in the demo collection: timed only
                seen.add(row["text"])
    return out


def ask(client: httpx.Client, model: str, question: str, max_tokens: int) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
    }
    started = time.perf_counter()
    first = None
    reply = []
    with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content") or ""
                if text and first is None:
                    first = time.perf_counter() - started
                reply.append(text)
    return {"ttft_s": first, "total_s": time.perf_counter() - started, "reply": "".join(reply)}


def cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    name, model = fields.get("Model name", "?").strip(), fields.get("Model", "?").strip()
    return f"{name} (model {model}, bf16: {bf16_class()}), {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="demo", help="the model field: the demo profile by default")
    ap.add_argument(
        "--limit", type=int, default=20, help="questions of examples/northwind-qa after the README's"
    )
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3, help="first-token probes per question")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with httpx.Client(base_url=args.server, timeout=300) as client:
        cards = client.get("/v1/models").json()["data"]
        served = next((c["id"] for c in cards if c.get("kind") == "base"), cards[0]["id"])
        ask(client, args.model, "How often does the Larch Line run?", 4)  # warm-up, not counted
        rows = []
        for question, answer in questions(args.limit):
            row = ask(client, args.model, question, args.max_tokens)
            probes = [row["ttft_s"]] + [
                ask(client, args.model, question, 1)["ttft_s"] for _ in range(args.repeats)
            ]
            row["ttft_probes_s"] = probes
            row["ttft_s"] = min(t for t in probes if t is not None)
            row.update(question=question, answer=answer)
            row["holds_answer"] = None if answer is None else answer.lower() in row["reply"].lower()
            rows.append(row)
            print(f"{row['ttft_s']:6.2f} s  {question}  ->  {row['reply'][:90]!r}", flush=True)
    ttft = sorted(r["ttft_s"] for r in rows if r["ttft_s"] is not None)
    readme = sorted(r["ttft_s"] for r in rows[: len(README_QUESTIONS)] if r["ttft_s"] is not None)
    graded = [r["holds_answer"] for r in rows if r["holds_answer"] is not None]
    summary = {
        "base_model": served,
        "model_field": args.model,
        "questions": len(rows),
        "ttft_p50_s": round(statistics.median(ttft), 3),
        "ttft_p90_s": round(ttft[int(0.9 * (len(ttft) - 1))], 3),
        "readme_ttft_p50_s": round(statistics.median(readme), 3),
        "reply_p50_s": round(statistics.median(r["total_s"] for r in rows), 3),
        "holds_answer": f"{sum(graded)}/{len(graded)}",
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "cpu": cpu(),
        "load_average": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
