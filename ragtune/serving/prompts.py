"""Prompts as token ids: the chat template or the plain prompt, with as much retrieved context
(core.prompt's block) as the model's context leaves once the answer's share is kept."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ragtune.core.errors import RagtuneError
from ragtune.core.prompt import ContextChunk, apply_context, fit_chunks, with_context
from ragtune.retrieval import Hit
from ragtune.serving.structured import with_instruction


class ContextLengthExceeded(RagtuneError):
    code = "context_length_exceeded"


Arrange = Callable[[Sequence[Hit]], list[int]]


class Popularity:
    """How often each chunk was laid into a prompt, per collection: the `popular` order."""

    def __init__(self, limit: int = 200_000):
        self._counts: dict[tuple[str, str], int] = {}
        self._limit = limit

    def arrange(self, collection: str, hits: Sequence[Hit]) -> list[int]:
        """Count these hits, then order them most counted first (ties by chunk id: stable)."""
        counts = self._counts
        for hit in hits:
            key = (collection, hit.chunk_id)
            counts[key] = counts.get(key, 0) + 1
        if len(counts) > self._limit:  # keep the more popular half
            keep = sorted(counts.items(), key=lambda kv: -kv[1])[: self._limit // 2]
            self._counts = counts = dict(keep)
        return sorted(
            range(len(hits)), key=lambda i: (-counts.get((collection, hits[i].chunk_id), 0), hits[i].chunk_id)
        )


def _arranged(
    hits: list[Hit], kept: list[ContextChunk], arrange: Arrange | None
) -> tuple[list[Hit], list[ContextChunk]]:
    """The kept chunks (a rank-order prefix of the hits) and their hits, in `arrange`'s order."""
    used = hits[: len(kept)]
    if arrange is None or not kept:
        return used, kept
    order = arrange(used)
    return [used[i] for i in order], [kept[i] for i in order]


class PromptBuilder:
    def __init__(self, tokenizer: Any, *, max_model_len: int, reserve_tokens: int):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.reserve_tokens = reserve_tokens

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def context_budget(self, base_len: int, requested: int | None) -> int:
        """Tokens left for retrieved context once the prompt and the answer's share are counted."""
        limit = self.max_model_len
        if base_len >= limit:
            raise ContextLengthExceeded(
                f"the prompt has {base_len} tokens; this model's context is {limit} tokens. "
                "Shorten the messages.",
                param="messages",
            )
        if requested is not None and base_len + requested > limit:
            raise ContextLengthExceeded(
                f"max_tokens={requested} plus the prompt's {base_len} tokens exceeds the "
                f"model's context of {limit} tokens; use max_tokens <= {limit - base_len}",
                param="max_tokens",
            )
        reserve = requested if requested is not None else min(self.reserve_tokens, limit - base_len)
        return max(limit - base_len - reserve, 0)

    def encode_chat(
        self, messages: Sequence[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        text = self.tokenizer.apply_chat_template(
            list(messages), tools=tools, tokenize=False, add_generation_prompt=True
        )
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def chat(
        self,
        messages: list[dict[str, Any]],
        system_prompt: str | None,
        hits: list[Hit],
        requested: int | None,
        *,
        tools: list[dict[str, Any]] | None = None,
        instruction: str | None = None,
        arrange: Arrange | None = None,
    ) -> tuple[list[int], list[Hit], list[ContextChunk]]:
        """The chat prompt with the context that fits, and the hits and chunks it kept (chosen in
        rank order, laid out in `arrange`'s); `instruction` ends the system turn
        (serving.structured), `tools` go to the template."""

        def encode(chunks: list[ContextChunk]) -> list[int]:
            turns = apply_context(messages, chunks, system_prompt=system_prompt)
            return self.encode_chat(with_instruction(turns, instruction) if instruction else turns, tools)

        base_ids = encode([])
        budget = self.context_budget(len(base_ids), requested)
        chunks = [ContextChunk(h.text, h.title, h.source) for h in hits]
        # The context block's own cost is measured in the user turn it lands in.
        kept = fit_chunks(chunks, budget, self.count_tokens) if chunks else []
        if not kept:
            return base_ids, [], kept
        used, kept = _arranged(hits, kept, arrange)
        return encode(kept), used, kept

    def completion(
        self, prompt: str, hits: list[Hit], requested: int | None, *, arrange: Arrange | None = None
    ) -> tuple[list[int], list[Hit], list[ContextChunk]]:
        budget = self.context_budget(self.count_tokens(prompt), requested)
        chunks = [ContextChunk(h.text, h.title, h.source) for h in hits]
        kept = fit_chunks(chunks, budget, self.count_tokens) if chunks else []
        used, kept = _arranged(hits, kept, arrange)
        return self.tokenizer.encode(with_context(prompt, kept), add_special_tokens=False), used, kept
