"""The relevance floor (`min_similarity`), derived where no evaluation looks: on the questions of
a QA set's *training* passages (training.qa.split_questions; the README's figures use the
held-out ones), how close the sources come to the question (serving.grounding.rank_quotations:
the closest run of one or two sentences by the collection embedder's cosine, and the largest
share of the question's terms one run holds) when the gold passage was retrieved, and when it
is gone. For every floor, how often `Ranked.off_topic` (cosine below the floor, no run holding
most of the terms) abstains in each case; the floor that separates the two best (Youden's J:
the rate where the gold is gone minus the rate where it was shown) is the `grounded` profile's
default. The cosine alone is reported beside it, and a stricter rule tried for the demo's "Is
there wifi on the Granite Line?" (whose sources hold "Granite" and "Line"): off topic also when
the question has a word no passage of the collection holds.

    .venv/bin/python -m bench.floor --dataset examples/disflqa [--split train] [--limit 600]

"Gone" takes the best `top_k` hits of other passages (the gold passage's chunks left out of the
list; `ragtune eval qa` deletes them from the collection, which also moves BM25's statistics a
little). Writes bench/results/floor.json and prints the table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.machine import machine  # noqa: E402
from bench.scratch import collection_of  # noqa: E402
from ragtune.retrieval.sparse import Tokenizer  # noqa: E402
from ragtune.serving.grounding import Ranked, rank_quotations  # noqa: E402
from ragtune.training.qa import split_questions  # noqa: E402

RESULTS = Path(__file__).parent / "results"
FLOORS = np.round(np.arange(0.30, 0.801, 0.01), 2)


def rankings(
    dataset: Path, split: str, limit: int, top_k: int
) -> tuple[list[Ranked], list[Ranked], list[bool]]:
    """Each question's ranking of its sources: with the gold passage retrieved, and without it;
    and whether it has a word (the store's terms, stopwords out) that no passage holds."""
    shown, gone = [], []
    tokenizer = Tokenizer()
    with collection_of(dataset) as (qa, coll):
        questions = split_questions(qa, split)[:limit]
        vocabulary = {t for p in qa.passages.values() for t in tokenizer.terms(f"{p.title or ''} {p.text}")}
        unseen = [not set(tokenizer.query_terms(q.text)) <= vocabulary for q in questions]
        for q in questions:
            hits = coll.search(q.text, k=top_k + 8, mode="hybrid")
            others = [h for h in hits if h.document_id != q.doc_id]
            for out, kept in ((shown, hits[:top_k]), (gone, others[:top_k])):
                out.append(rank_quotations(q.text, [h.text for h in kept], coll.embedder, k=1))
    return shown, gone, unseen


def rates(rankings: list[Ranked], floor: float, unseen: list[bool]) -> tuple[float, float, float]:
    """How often the floor abstains: by `off_topic`, by the cosine alone, and by `off_topic` or
    below the floor with a word no passage holds."""
    return (
        float(np.mean([r.off_topic(floor) for r in rankings])),
        float(np.mean([r.similarity < floor for r in rankings])),
        float(
            np.mean(
                [
                    r.off_topic(floor) or (r.similarity < floor and u)
                    for r, u in zip(rankings, unseen, strict=True)
                ]
            )
        ),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="BEIR-layout QA set with answers")
    parser.add_argument("--split", default="train", choices=["train", "heldout", "all"])
    parser.add_argument("--limit", type=int, default=600)
    parser.add_argument(
        "--top-k", type=int, default=3, help="sources per question (the grounded profile's 3)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "floor.json")
    args = parser.parse_args()
    shown, gone, unseen = rankings(args.dataset, args.split, args.limit, args.top_k)
    rows = []
    for f in FLOORS:
        (gone_rule, gone_cos, gone_word), (shown_rule, shown_cos, shown_word) = (
            rates(gone, f, unseen),
            rates(shown, f, unseen),
        )
        rows.append(
            {
                "floor": float(f),
                "abstains_gold_gone": gone_rule,
                "abstains_gold_shown": shown_rule,
                "cosine_alone": {"abstains_gold_gone": gone_cos, "abstains_gold_shown": shown_cos},
                "or_unseen_word": {"abstains_gold_gone": gone_word, "abstains_gold_shown": shown_word},
            }
        )
    best = max(rows, key=lambda r: r["abstains_gold_gone"] - r["abstains_gold_shown"])
    mean = {
        name: {
            "cosine": float(np.mean([r.similarity for r in rs])),
            "coverage": float(np.mean([r.coverage for r in rs])),
        }
        for name, rs in (("gold_shown", shown), ("gold_gone", gone))
    }
    result = {
        "command": f"python -m bench.floor --dataset {args.dataset} --split {args.split} "
        f"--limit {args.limit} --top-k {args.top_k}",
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "questions": len(shown),
        "with_unseen_word": sum(unseen),
        "mean": mean,
        "youden_best": best,
        "floors": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(shown)} questions ({args.split}); means: {json.dumps(mean)}")
    print(
        "floor | off_topic: abstains, gold gone / gold shown | cosine alone: gold gone / gold shown"
        " | or an unseen word: gold gone / gold shown"
    )
    for r in rows:
        if round(r["floor"] * 100) % 5 == 0 or r is best or r["floor"] in (0.6, 0.67):
            c, w = r["cosine_alone"], r["or_unseen_word"]
            mark = "  <- Youden's J" if r is best else ""
            print(
                f"{r['floor']:.2f} | {r['abstains_gold_gone']:.3f} / {r['abstains_gold_shown']:.3f} | "
                f"{c['abstains_gold_gone']:.3f} / {c['abstains_gold_shown']:.3f} | "
                f"{w['abstains_gold_gone']:.3f} / {w['abstains_gold_shown']:.3f}{mark}"
            )


if __name__ == "__main__":
    main()
