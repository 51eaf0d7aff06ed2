"""A QA set whose answers sit away from the sentence nearest the question.

`python -m bench.far_answers --dataset examples/disflqa --out DIR` writes a BEIR-layout set (the
same corpus, so retrieval meets the same distractors) keeping only the questions whose gold
passage holds the answer, but not in the passage's sentence most similar to the question
(all-MiniLM-L6-v2 cosine, the retrieval embedder). "Who plays X in Y?" against a biography is
the kind: the sentence about Y is nearest, the name is elsewhere. Reading the whole passage is
needed there; quoting the nearest sentence is not enough. Evaluate it with `ragtune eval qa
--dataset DIR` (its counterfactual phase changes those answers as on any set).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.core.prompt import SENTENCE_END
from ragtune.training.qa import find_answer, load_qa_set, split_questions


def far_questions(dataset: Path, split: str) -> tuple[list[str], int]:
    """Ids of the `split` questions whose answer is outside the sentence nearest them; and how
    many answerable questions were looked at."""
    from ragtune.retrieval.embedder import SentenceTransformerEmbedder

    qa = load_qa_set(dataset)
    embedder = SentenceTransformerEmbedder("all-MiniLM-L6-v2")
    kept, seen = [], 0
    cache: dict[str, Any] = {}
    for q in split_questions(qa, split):
        text = qa.passages[q.doc_id].text
        if not q.answerable or find_answer(text, q.answer) < 0:
            continue
        sentences = [s for s in SENTENCE_END.split(text) if s.strip()]
        if len(sentences) < 2:
            continue
        seen += 1
        if q.doc_id not in cache:
            cache[q.doc_id] = embedder.embed(sentences)
        vectors = cache[q.doc_id]
        nearest = sentences[int(np.argmax(vectors @ embedder.embed_query(q.text)))]
        if find_answer(nearest, q.answer) < 0:
            kept.append(q.id)
    return kept, seen


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", type=Path, required=True, help="a BEIR-layout QA set with answers")
    parser.add_argument("--out", type=Path, required=True, help="the folder to write (replaced)")
    parser.add_argument("--split", default="heldout", choices=["heldout", "train", "all"])
    args = parser.parse_args()
    kept, seen = far_questions(args.dataset, args.split)
    ids = set(kept)
    if args.out.exists():
        shutil.rmtree(args.out)
    (args.out / "qrels").mkdir(parents=True)
    shutil.copy2(args.dataset / "corpus.jsonl", args.out / "corpus.jsonl")
    rows = [
        json.loads(line) for line in (args.dataset / "queries.jsonl").read_text().splitlines() if line.strip()
    ]
    (args.out / "queries.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in rows if str(r["_id"]) in ids)
    )
    qrels = (args.dataset / "qrels" / "test.tsv").read_text().splitlines()
    body = [line for line in qrels[1:] if line.split("\t")[0] in ids]
    (args.out / "qrels" / "test.tsv").write_text("\n".join([qrels[0], *body]) + "\n")
    note = (
        f"Derived from {args.dataset} by `python -m bench.far_answers`: the {len(kept)} of {seen} "
        f"answerable {args.split} questions (on passages of two sentences or more) whose answer is "
        "not in the gold passage's sentence nearest the question (all-MiniLM-L6-v2). Same corpus "
        "and license.\n"
    )
    (args.out / "README.md").write_text(note)
    print(note, end="")


if __name__ == "__main__":
    main()
