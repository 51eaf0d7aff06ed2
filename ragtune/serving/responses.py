"""OpenAI response schemas, with ragtune's extensions (`sources`, `kind`), so `/openapi.json`
shows what comes back; the routes build these, never dict literals."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field

from ragtune.retrieval import Hit
from ragtune.serving.structured import ToolCall


class Source(BaseModel):
    index: int
    document_id: str
    chunk_id: str
    title: str | None = None
    source: str | None = None
    score: float
    text: str

    @classmethod
    def of(cls, index: int, hit: Hit, text: str | None = None) -> Source:
        """The source object for a hit; `text` when the prompt carried a cut version of it."""
        return cls(
            index=index,
            document_id=hit.document_id,
            chunk_id=hit.chunk_id,
            title=hit.title,
            source=hit.source,
            score=hit.score,
            text=hit.text if text is None else text,
        )


class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="prompt tokens whose KV came from the engine's prefix cache")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "ragtune"
    kind: Literal["base", "adapter", "profile", "auto"]
    parent: str | None = None
    root: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    """Chat: one entry per generated token, with its `top_logprobs` alternatives."""

    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class CompletionLogprobs(BaseModel):
    """Completions (the legacy shape): parallel lists, one entry per generated token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


FinishReason = Literal["stop", "length", "tool_calls", "abort"] | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


class _Response(BaseModel):
    """What chat and completion responses share, ragtune's extensions among it."""

    id: str
    created: int = Field(default_factory=now)
    model: str
    usage: Usage
    sources: list[Source] = Field(description="the retrieved passages the prompt carried, numbered as cited")
    ragtune: dict[str, Any] | None = Field(
        None, description="where `model: auto` went: {'route': {'chosen', 'scores', 'fallback', ...}}"
    )


class ChatCompletionResponse(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(_Response):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


def error_body(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
