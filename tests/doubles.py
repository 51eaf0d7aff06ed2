"""Test doubles behind the serving seams (never in the packages)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ragtune.serving.engine import AdapterRef, Delta, SamplingOptions


class EchoEngine:
    """Answers with the end of its prompt, one token per delta: the prompt becomes observable.

    `max_model_len` is small by default so context fitting is exercised on short texts.
    """

    def __init__(self, tokenizer: Any, *, max_model_len: int = 512, echo_tokens: int = 400):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.echo_tokens = echo_tokens
        self.adapters: dict[str, AdapterRef] = {}
        self.removed: list[AdapterRef] = []
        self.prompts: list[list[int]] = []
        self.aborted: list[str] = []

    async def generate(
        self, prompt_ids: list[int], options: SamplingOptions, request_id: str, adapter: AdapterRef | None
    ) -> AsyncIterator[Delta]:
        self.prompts.append(prompt_ids)
        tail = prompt_ids[-self.echo_tokens :][: options.max_tokens]
        for index in range(options.n):
            for i, tok in enumerate(tail):
                last = i == len(tail) - 1
                reason = ("length" if len(tail) == options.max_tokens else "stop") if last else None
                yield Delta(index, self.tokenizer.decode([tok]), 1, reason)

    async def add_adapter(self, adapter: AdapterRef) -> None:
        self.adapters[f"{adapter.name}#{adapter.version}"] = adapter

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        self.removed.append(adapter)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def check_health(self) -> None:
        return None

    def num_unfinished(self) -> int:
        return 0

    def shutdown(self) -> None:
        return None
