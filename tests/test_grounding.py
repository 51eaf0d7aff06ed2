"""Strict grounding's vocabulary (serving.grounding), with the default model's real tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.prompt import ABSTAIN, ContextChunk, apply_context
from serving.grounding import allowed_token_ids


@pytest.fixture(scope="module")
def tokenizer(base_model: Path):  # noqa: ANN201
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model)


def prompt_ids(tokenizer, chunks: list[ContextChunk], question: str) -> list[int]:  # noqa: ANN001
    messages = apply_context([{"role": "user", "content": question}], chunks)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def test_the_sources_words_are_allowed_and_a_memorised_answer_is_not(tokenizer) -> None:  # noqa: ANN001
    chunks = [ContextChunk("Marseille\nThe capital of France is Lyon since 2031.", title="Atlas")]
    ids = prompt_ids(tokenizer, chunks, "What is the capital of France?")
    allowed = set(allowed_token_ids(tokenizer, ids, [c.text for c in chunks]))

    assert set(ids) <= allowed
    # A word that opens a line in the prompt is also allowed mid-sentence, with its space.
    assert set(tokenizer.encode(" Marseille", add_special_tokens=False)) <= allowed
    assert set(tokenizer.encode(" The capital of France is Lyon [1].", add_special_tokens=False)) <= allowed
    assert set(tokenizer.encode(ABSTAIN, add_special_tokens=False)) <= allowed
    assert tokenizer.eos_token_id in allowed
    # The memorised answer is in no source: none of the ways to write it is allowed.
    for paris in (" Paris", "Paris"):
        assert not set(tokenizer.encode(paris, add_special_tokens=False)) <= allowed
    assert len(allowed) < len(tokenizer) // 50  # a small slice of the vocabulary
