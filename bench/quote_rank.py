"""Which quotation extractive grounding puts first, replayed without the engine: for each
answerable question whose gold passage was retrieved, does the first ranked run hold the
answer, and does the set offered to the model (the first alone when it leads by more than
`QUOTE_LEAD`, else the best `QUOTES` within `QUOTE_WINDOW`) hold it? At the `demo` profile's 3
sources and the `grounded` profile's 4. A change to the ranker is measured here first, on
every set, before the engine is asked anything.

    .venv/bin/python -m bench.quote_rank --dataset examples/northwind-qa --dataset examples/world-qa ...

Writes bench/results/quote-rank.json and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.machine import machine  # noqa: E402
from bench.scratch import collection_of  # noqa: E402
from ragtune.serving.grounding import QUOTE_LEAD, QUOTE_WINDOW, QUOTES, rank_quotations  # noqa: E402
from ragtune.training.qa import contains, split_questions  # noqa: E402

RESULTS = Path(__file__).parent / "results"
TOP_KS = (3, 4)


def measure(dataset: Path, split: str, limit: int) -> dict:
    tally = {k: {"first": 0, "offered": 0, "alone_wrong": 0} for k in TOP_KS}
    seen = dict.fromkeys(TOP_KS, 0)
    with collection_of(dataset) as (qa, coll):
        questions = [q for q in split_questions(qa, split) if q.answerable][:limit]
        for q in questions:
            hits = coll.search(q.text, k=max(TOP_KS), mode="hybrid")
            for k in TOP_KS:
                if q.doc_id not in [h.document_id for h in hits[:k]]:
                    continue
                seen[k] += 1
                texts = [h.text for h in hits[:k]]
                r = rank_quotations(q.text, texts, coll.embedder, k=QUOTES)
                # what the model may choose among, as serving.grounded offers it
                offer = r.quotes[:1] if r.lead > QUOTE_LEAD else r.close(QUOTE_WINDOW)
                t = tally[k]
                t["first"] += contains(r.quotes[0], q.answer)
                t["offered"] += any(contains(o, q.answer) for o in offer)
                t["alone_wrong"] += len(offer) == 1 and not contains(offer[0], q.answer)
    return {
        "questions": len(questions),
        "gold_retrieved": {str(k): v for k, v in seen.items()},
        "rates": {str(k): {m: round(v / max(seen[k], 1), 3) for m, v in t.items()} for k, t in tally.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, action="append", required=True)
    parser.add_argument("--split", default="all", choices=["train", "heldout", "all"])
    parser.add_argument("--limit", type=int, default=400, help="answerable questions per set")
    parser.add_argument("--out", type=Path, default=RESULTS / "quote-rank.json")
    args = parser.parse_args()
    sets = {d.name: measure(d, args.split, args.limit) for d in args.dataset}
    result = {
        "command": "python -m bench.quote_rank "
        + " ".join(f"--dataset {d}" for d in args.dataset)
        + f" --split {args.split} --limit {args.limit}",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "sets": sets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print("set | sources | gold retrieved | first holds answer | offered holds it | offered alone, wrong")
    for name, s in sets.items():
        for k, r in s["rates"].items():
            rates = (f"{r[m]:.3f}" for m in ("first", "offered", "alone_wrong"))
            row = [name, k, s["gold_retrieved"][k], *rates]
            print(" | ".join(map(str, row)))


if __name__ == "__main__":
    main()
