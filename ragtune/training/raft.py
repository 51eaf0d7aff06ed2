"""Retrieval-aware examples (RAFT, Zhang et al. 2024): put retrieved context into each question.

Each example's last user turn gets a context block in exactly the format the server uses
(`core.prompt.apply_context`): with probability p the chunk that answers it, plus k
distractor chunks, in shuffled order. The adapter thus learns to use context that answers and to
ignore context that does not. The answering chunk is the best hit from the example's
`document_id` when the record names one, else the top hit. A `{cite}` placeholder in the final
assistant turn becomes the answering chunk's marker ("[2]"), or is dropped when it was left out.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ragtune.core.prompt import ContextChunk, apply_context
from ragtune.training.data import Example

CITE = "{cite}"


@dataclass
class RaftStats:
    with_relevant: int = 0
    without_relevant: int = 0
    relevant_not_found: int = 0


def _doc_id(item: Any) -> str:
    """A Hit's document_id or a Document's id."""
    return str(getattr(item, "document_id", None) or getattr(item, "id", ""))


def chunk_of(hit: Any) -> ContextChunk:
    return ContextChunk(text=hit.text, title=getattr(hit, "title", None), source=getattr(hit, "source", None))


def add_context(
    examples: Sequence[Example],
    collection: Any,
    *,
    p: float,
    distractors: int,
    seed: int,
) -> tuple[list[Example], RaftStats]:
    """Return new examples whose last user turn carries a context block from `collection`."""
    rng = random.Random(seed)
    stats = RaftStats()
    out = []
    for ex in examples:
        question = next(m["content"] for m in reversed(ex.messages) if m["role"] == "user")
        hits = collection.search(question, k=distractors + 5)
        relevant: list[Any] = hits[:1]
        if ex.document_id is not None:
            relevant = [h for h in hits if str(h.document_id) == ex.document_id][:1]
            if not relevant:  # not retrieved: show the named document itself (RAFT's "oracle")
                try:
                    relevant = [collection.get(ex.document_id)]
                except Exception:  # noqa: BLE001 - any lookup failure means "not available"
                    stats.relevant_not_found += 1
        relevant_docs = {_doc_id(h) for h in relevant}
        others = [h for h in hits if _doc_id(h) not in relevant_docs][:distractors]
        keep_relevant = bool(relevant) and rng.random() < p
        chosen = [*relevant, *others] if keep_relevant else others
        rng.shuffle(chosen)
        chunks = [chunk_of(h) for h in chosen]
        marker = ""
        if keep_relevant:
            stats.with_relevant += 1
            marker = f"[{chosen.index(relevant[0]) + 1}]"
        else:
            stats.without_relevant += 1
        messages = apply_context(ex.messages, chunks)
        if messages[-1]["role"] == "assistant":
            text = messages[-1]["content"]
            messages[-1]["content"] = (
                text.replace(CITE, marker) if marker else text.replace(" " + CITE, "").replace(CITE, "")
            )
        out.append(Example(messages, ex.where, ex.document_id, {"context_chunks": len(chunks)}))
    return out, stats
