"""Retrieval-aware examples: the context block is exactly the server's, the answering chunk
appears with probability p among k distractors, and `{cite}` becomes its marker."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from ragtune.core.prompt import ContextChunk, apply_context
from ragtune.training.data import load_examples
from ragtune.training.raft import add_context

FIXTURES = Path(__file__).parent / "fixtures" / "training"
DOCS = [json.loads(line) for line in (FIXTURES / "docs.jsonl").read_text().splitlines()]


@dataclass(frozen=True)
class FakeHit:
    document_id: str
    text: str
    title: str | None
    source: str | None


class WordOverlapCollection:
    """Search by shared words: deterministic and fast, for checking the example layout."""

    def __init__(self, docs: list[dict]):
        self.docs = docs

    def search(self, query: str, *, k: int = 5, **_):
        words = set(query.lower().split())
        ranked = sorted(self.docs, key=lambda d: -len(words & set(d["text"].lower().split())))
        return [FakeHit(d["id"], d["text"], d["title"], d["source"]) for d in ranked[:k]]

    def get(self, doc_id: str):
        raise KeyError(doc_id)


def test_context_block_matches_apply_context_and_cites_the_answering_chunk():
    examples, _ = load_examples(FIXTURES / "questions.jsonl")
    out, stats = add_context(examples, WordOverlapCollection(DOCS), p=1.0, distractors=3, seed=0)
    assert stats.with_relevant == len(examples) and stats.without_relevant == 0
    for ex, src in zip(out, examples, strict=True):
        user, answer = ex.messages[-2]["content"], ex.messages[-1]["content"]
        marker = int(answer.split("[")[1].split("]")[0])
        # The cited chunk is the example's document, and the prompt is apply_context's, byte for byte.
        doc = next(d for d in DOCS if d["id"] == src.document_id)
        assert f"[{marker}] {doc['title']}\n{doc['text']}" in user
        parts = [p.split("\n", 1) for p in user.split("\n\nQuestion: ")[0].split("\n\n")[1:]]
        chunks = [ContextChunk(text, head.split("] ", 1)[1]) for head, text in parts]
        assert len(chunks) == 4
        assert apply_context(src.messages, chunks)[-2]["content"] == user
        assert "{cite}" not in answer


def test_without_the_answering_chunk_only_distractors_remain_and_the_marker_goes():
    examples, _ = load_examples(FIXTURES / "questions.jsonl")
    out, stats = add_context(examples, WordOverlapCollection(DOCS), p=0.0, distractors=2, seed=0)
    assert stats.without_relevant == len(examples)
    for ex, src in zip(out, examples, strict=True):
        doc = next(d for d in DOCS if d["id"] == src.document_id)
        assert doc["text"] not in ex.messages[-2]["content"]
        assert ex.messages[-2]["content"].count("\n[") == 2  # the two distractors, [1] and [2]
        assert "[" not in ex.messages[-1]["content"] and "{cite}" not in ex.messages[-1]["content"]
        assert ex.messages[-1]["content"].startswith(src.messages[-1]["content"].split(" {cite}")[0] + ".")


def test_p_is_a_probability_over_examples():
    examples, _ = load_examples(FIXTURES / "questions.jsonl")
    many = examples * 50
    _, stats = add_context(many, WordOverlapCollection(DOCS), p=0.8, distractors=1, seed=1)
    assert 0.7 < stats.with_relevant / len(many) < 0.9


@pytest.mark.timeout(120)
def test_a_real_collection(tmp_path: Path):
    from ragtune.retrieval import Document, Library
    from ragtune.retrieval.settings import RetrievalSettings

    library = Library(tmp_path, RetrievalSettings())
    try:
        coll = library.create("rail")
        coll.upsert([Document(d["id"], d["text"], d["title"], d["source"]) for d in DOCS])
        examples, _ = load_examples(FIXTURES / "questions.jsonl")
        out, stats = add_context(examples, coll, p=1.0, distractors=2, seed=0)
    finally:
        library.close()
    assert stats.relevant_not_found == 0 and stats.with_relevant == len(examples)
    for ex, src in zip(out, examples, strict=True):
        doc = next(d for d in DOCS if d["id"] == src.document_id)
        assert doc["text"] in ex.messages[-2]["content"]
        assert ex.messages[-2]["content"].startswith("Use the numbered sources below")
