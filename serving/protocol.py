"""OpenAI request/response schemas, plus ragtune's extensions (`rag`, `sources`, `kind`).

Requests forbid nothing OpenAI clients send (unknown fields are ignored, as OpenAI-compatible
servers do), but every field we read is validated so errors name the field.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from retrieval import Hit
from retrieval.settings import SearchMode


class RagOptions(BaseModel):
    """Per-request retrieval; overrides what the model's profile says."""

    model_config = ConfigDict(extra="forbid")

    collection: str | None = None
    top_k: int | None = Field(None, ge=1, le=100)
    mode: SearchMode | None = None
    filter: dict[str, Any] | None = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        """Text of the message; OpenAI's content-part lists are joined by their text parts."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)


class _SamplingRequest(BaseModel):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM's extensions, for fixed-length benchmarks and tests
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    rag: RagOptions | Literal[False] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return stops

    @property
    def stop_list(self) -> list[str]:
        return list(self.stop or [])

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)

    @field_validator("messages")
    @classmethod
    def _has_user_turn(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.role == "user" for m in messages):
            raise ValueError("must contain at least one message with role 'user'")
        for m in messages:
            m.text()  # content parts are checked here so the error names the field
        return messages


class CompletionRequest(_SamplingRequest):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and (len(v) != 1):
            raise ValueError("prompt takes one string (batched prompts are not supported)")
        return v

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


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


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=now)
    owned_by: str = "ragtune"
    kind: Literal["base", "adapter", "profile"]
    parent: str | None = None
    root: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AdapterLoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    path: str = Field(min_length=1)


class CollectionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    index_type: Literal["flat", "hnsw", "ivf"] | None = None
    chunk_tokens: int | None = Field(None, ge=16)
    chunk_overlap: int | None = Field(None, ge=0)


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=512)
    text: str
    title: str | None = None
    source: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class UpsertBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentIn] = Field(min_length=1)


class SearchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1)
    top_k: int = Field(5, ge=1, le=100)
    mode: SearchMode = "hybrid"
    filter: dict[str, Any] | None = None


def error_body(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
