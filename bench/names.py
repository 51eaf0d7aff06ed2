"""A rule tried and not kept (bench/results/polar.md): abstain when a name or number of the
question is in no retrieved source. For each answerable question of a QA set, the best 4 hybrid
hits with the gold passage among them ("shown") and without it ("gone"); how often the relevance
floor (`Ranked.off_topic` at the `grounded` profile's 0.67) abstains, the rule, and either.

    .venv/bin/python -m bench.names examples/northwind-qa:all:100 examples/disflqa:train:300
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bench.scratch import collection_of
from ragtune.serving.checking import names_of
from ragtune.serving.grounding import MIN_SIMILARITY, rank_quotations, term_tokenizer
from ragtune.training.qa import split_questions

TOP_K = 4


def names_unheld(question: str, texts: list[str]) -> list[str]:
    """The question's names and numbers (serving.checking.names_of, "I" left out) no source holds."""
    tokenizer = term_tokenizer()
    held = set(tokenizer.terms(" ".join(texts)))
    names = [w for w in names_of(question) if w != "I" and not w.startswith("I'")]
    return [w for w in names if (terms := tokenizer.terms(w)) and not all(t in held for t in terms)]


def measure(dataset: Path, split: str, limit: int) -> None:
    rows: dict[str, list[tuple[bool, bool]]] = {"shown": [], "gone": []}
    with collection_of(dataset) as (qa, coll):
        for q in [q for q in split_questions(qa, split) if q.answerable][:limit]:
            hits = coll.search(q.text, k=TOP_K + 8, mode="hybrid")
            others = [h for h in hits if h.document_id != q.doc_id]
            for case, kept in (("shown", hits[:TOP_K]), ("gone", others[:TOP_K])):
                if case == "shown" and q.doc_id not in [h.document_id for h in kept]:
                    continue
                texts = [h.text for h in kept]
                ranked = rank_quotations(q.text, texts, coll.embedder, k=1)
                rows[case].append((ranked.off_topic(MIN_SIMILARITY), bool(names_unheld(q.text, texts))))
    for case, found in rows.items():
        a = np.array(found, dtype=bool).reshape(-1, 2)
        print(
            f"{dataset.name} gold {case} (n={len(a)}): floor {a[:, 0].mean():.3f}, "
            f"names {a[:, 1].mean():.3f}, either {(a[:, 0] | a[:, 1]).mean():.3f}"
        )


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        path, split, limit = arg.split(":")
        measure(Path(path), split, int(limit))
