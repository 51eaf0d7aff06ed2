"""The context block: how retrieved chunks are laid into a prompt.

Defined once here and used by serving (at query time) and training (to build RAG-aware
examples), so an adapter is trained on exactly the prompt shape it is served with.
Change the layout only together with CONTEXT_FORMAT_VERSION: adapter manifests record it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

CONTEXT_FORMAT_VERSION = 1

_HEADER = "Use the numbered sources below when they answer the question, and cite them as [n]."

# The answer when no source answers the question: the grounded reader is trained to say it,
# strict grounding always allows it, and the evaluation counts it as an abstention.
ABSTAIN = "The sources do not answer this question."

# Other ways a reply says the same: counted as abstentions by the evaluation, and turned into
# ABSTAIN by checked grounding (serving.grounding).
_ABSTAINS = re.compile(
    r"(sources? (do|does) not (answer|say|mention|contain)|"
    r"(do not|don't|doesn't|does not|cannot|can't|could not|couldn't) (know|find|answer|determine|tell)|"
    r"not (mentioned|stated|provided|specified|given) in|no information|not enough information|"
    r"i'm not sure|i am not sure|unable to (answer|find|determine))",
    re.IGNORECASE,
)


def is_abstention(text: str) -> bool:
    """Whether a reply says that it cannot answer (ABSTAIN or its like)."""
    return ABSTAIN.lower() in text.lower() or bool(_ABSTAINS.search(text))


# Where a sentence ends: the reader's targets are whole sentences of a source (training.reader),
# and extractive grounding lets an answer quote exactly such sentences (serving.grounding).
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def cite(sentence: str, n: int) -> str:
    """The reader's answer form: the sentence without its full stop, then its source's marker."""
    return f"{sentence.rstrip(' .')} [{n}]."


@dataclass(frozen=True)
class ContextChunk:
    """One retrieved passage as the prompt shows it."""

    text: str
    title: str | None = None
    source: str | None = None


def format_context(chunks: Sequence[ContextChunk]) -> str:
    """Number the chunks from 1 in rank order: `[n] title` on its own line, then the text."""
    parts = []
    for n, chunk in enumerate(chunks, start=1):
        head = f"[{n}] {chunk.title}" if chunk.title else f"[{n}]"
        parts.append(f"{head}\n{chunk.text.strip()}")
    return "\n\n".join(parts)


def with_context(question: str, chunks: Sequence[ContextChunk]) -> str:
    """The user turn that carries context; with no chunks the question is left as it is."""
    if not chunks:
        return question
    return f"{_HEADER}\n\n{format_context(chunks)}\n\nQuestion: {question}"


def apply_context(
    messages: Sequence[dict[str, Any]],
    chunks: Sequence[ContextChunk],
    *,
    system_prompt: str | None = None,
) -> list[dict[str, Any]]:
    """Return chat messages with the context block placed in the last user turn.

    A `system_prompt` is put first unless the conversation already starts with a system turn.
    """
    out = [dict(m) for m in messages]
    if system_prompt and not (out and out[0].get("role") == "system"):
        out.insert(0, {"role": "system", "content": system_prompt})
    if chunks:
        for m in reversed(out):
            if m.get("role") == "user" and isinstance(m.get("content"), str):
                m["content"] = with_context(m["content"], chunks)
                break
    return out


def fit_chunks(
    chunks: Sequence[ContextChunk],
    budget_tokens: int,
    count_tokens: Callable[[str], int],
) -> list[ContextChunk]:
    """Keep chunks in rank order while the block fits `budget_tokens`.

    The first chunk that does not fit whole is cut by characters in proportion (then checked
    again), so the best source survives even a small budget; lower-ranked ones are dropped.
    """
    kept: list[ContextChunk] = []
    for chunk in chunks:
        trial = [*kept, chunk]
        if count_tokens(with_context("", trial)) <= budget_tokens:
            kept = trial
            continue
        text = chunk.text
        while text:
            used = count_tokens(with_context("", [*kept, ContextChunk("", chunk.title, chunk.source)]))
            room = budget_tokens - used
            if room <= 8:
                break
            total = max(count_tokens(text), 1)
            text = text[: max(int(len(text) * room / total) - 1, 0)]
            candidate = ContextChunk(text, chunk.title, chunk.source)
            if text and count_tokens(with_context("", [*kept, candidate])) <= budget_tokens:
                kept.append(candidate)
                break
        break
    return kept
