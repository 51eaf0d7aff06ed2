"""A request as prepared for the engine, and what came back: shared by the generation service
(serving.chat) and the response shapes (serving.replies)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ragtune.serving.engine import SamplingOptions, TokenLogprob
from ragtune.serving.grounded import Checked
from ragtune.serving.resolve import Target
from ragtune.serving.responses import PromptTokensDetails, Source, Usage
from ragtune.serving.routing import Route
from ragtune.serving.structured import Plan


@dataclass
class Prepared:
    """Everything decided before generation starts."""

    request_id: str
    target: Target
    prompt_ids: list[int]
    options: SamplingOptions
    sources: list[Source]
    route: Route | None = None  # where `model: auto` sent the request (serving.routing)
    plan: Plan = field(default_factory=Plan)  # structured output and tool calls (serving.structured)
    checked: Checked | None = None  # checked grounding's check of the replies (serving.grounded)


@dataclass
class Choice:
    text: str = ""
    tokens: int = 0
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass
class Result:
    prepared: Prepared
    choices: list[Choice] = field(default_factory=list)
    cached_tokens: int | None = None  # prompt tokens from the engine's prefix cache

    @property
    def usage(self) -> Usage:
        return usage_of(self.prepared, sum(c.tokens for c in self.choices), self.cached_tokens)


def usage_of(prepared: Prepared, completion: int, cached: int | None) -> Usage:
    """OpenAI's usage of a request: its prompt, `completion` tokens generated, `cached` prompt
    tokens from the engine's prefix cache (None: the engine does not say)."""
    prompt = len(prepared.prompt_ids)
    details = None if cached is None else PromptTokensDetails(cached_tokens=cached)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=details,
    )
