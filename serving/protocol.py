"""OpenAI request/response schemas, plus ragtune's extensions (`rag`, `sources`, `kind`).

Requests forbid nothing OpenAI clients send (unknown fields are ignored, as OpenAI-compatible
servers do), but every field we read is validated so errors name the field.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from core.errors import InvalidFilter
from core.names import NAME_PATTERN
from retrieval import Hit
from retrieval.filters import compile_filter
from retrieval.settings import Fusion, IndexType, SearchMode
from serving.grounding import Grounding

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_FILTER_TERMS = 64  # fields, operators and list values of one filter together


def _unencodable(value: Any, where: str = "") -> str | None:
    """The location of the first string (or key) that is not valid Unicode text, e.g. a lone
    surrogate "\\ud800" that JSON allows but UTF-8 (SQLite, the tokenizer) cannot hold."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "body"
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            found = _unencodable(k, where) or _unencodable(v, f"{where}.{k}" if where else str(k))
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _unencodable(v, f"{where}[{i}]")
            if found:
                return found
    return None


def text_only(data: Any) -> Any:
    """`data` unchanged, or a ValueError naming the first string that is not valid Unicode."""
    where = _unencodable(data)
    if where:
        raise ValueError(f"{where} holds a lone UTF-16 surrogate; send valid Unicode text")
    return data


class Body(BaseModel):
    """Base of every request body: strings must be encodable text (no lone surrogates)."""

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        return text_only(data)


def _terms(value: Any) -> int:
    if isinstance(value, dict):
        return sum(1 + _terms(v) for v in value.values())
    if isinstance(value, list):
        return sum(1 + _terms(v) for v in value)
    return 0


def _check_filter_values(value: Any) -> None:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise InvalidFilter(f"filter value {value} does not fit a 64-bit integer")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidFilter("filter values must be finite numbers")
    if isinstance(value, dict):
        for v in value.values():
            _check_filter_values(v)
    elif isinstance(value, list):
        for v in value:
            _check_filter_values(v)


def check_filter(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """A metadata filter checked the way the store will use it: size, 64-bit numbers, syntax.

    Raises InvalidFilter, which pydantic passes through (it is no ValueError), so the error keeps
    its code whichever request carried the filter."""
    if value is None:
        return None
    if _terms(value) > MAX_FILTER_TERMS:
        raise InvalidFilter(
            f"the filter has more than {MAX_FILTER_TERMS} fields, operators and values", param="filter"
        )
    try:
        _check_filter_values(value)
        compile_filter(value)
    except InvalidFilter as exc:
        exc.param = "filter"
        raise
    return value


Filter = Annotated[dict[str, Any] | None, AfterValidator(check_filter)]
Seed = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


class RagOptions(BaseModel):
    """Per-request retrieval; overrides what the model's profile says."""

    model_config = ConfigDict(extra="forbid")

    collection: str | None = None
    top_k: int | None = Field(None, ge=1, le=100)
    mode: SearchMode | None = None
    fusion: Fusion | None = None
    filter: Filter = None
    grounding: Grounding | None = Field(
        None,
        description="'strict': the answer may only use words of the prompt and its sources; "
        "'extractive': it quotes sentences of one source with its [n], or abstains",
    )
    quotes: int | None = Field(
        None,
        ge=0,
        le=50,
        description="extractive grounding: how many quotations, ranked against the question, the "
        "answer chooses from (0: any run of sentences, unranked); None: the profile's, else 3",
    )
    quote_lead: float | None = Field(
        None,
        ge=0.0,
        le=100.0,
        description="extractive grounding with ranked quotations: when the first leads the second "
        "by more than this many standard deviations of the ranking's scores, it alone is offered "
        "(the model only decides whether to answer); 0: always the first; a large value: the model "
        "always chooses; None: the profile's, else 0.5",
    )
    quote_window: float | None = Field(
        None,
        ge=0.0,
        le=100.0,
        description="extractive grounding with ranked quotations: the model chooses only among the "
        "runs within this many standard deviations of the ranking's scores of the first, so a run "
        "far behind a close pair is not offered; None: the profile's, else no limit",
    )
    model_abstains: bool | None = Field(
        None,
        description="extractive grounding with ranked quotations: whether the model's own opening "
        "(its first few tokens, left free) may make the reply the abstention; false: only the "
        "relevance floor abstains; None: the profile's, else true",
    )
    min_similarity: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="the relevance floor: when no run of one or two sentences of the sources comes "
        "this close to the question (the collection embedder's cosine) and none holds most of its "
        "terms, the reply is the abstention sentence, whatever the grounding; 0: off; None: the "
        "profile's, else off",
    )


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


class _SamplingRequest(Body):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: Seed | None = None
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

    # The engine's own checks, made here so a request never reaches it to fail there (fields are
    # validated in order: max_tokens and temperature are known when these run).
    @field_validator("n")
    @classmethod
    def _n_needs_sampling(cls, n: int, info: ValidationInfo) -> int:
        if n > 1 and info.data.get("temperature") == 0:
            raise ValueError("n > 1 needs temperature > 0: greedy sampling gives n identical answers")
        return n

    @field_validator("min_tokens")
    @classmethod
    def _min_below_max(cls, v: int, info: ValidationInfo) -> int:
        limit = info.data.get("max_completion_tokens") or info.data.get("max_tokens")
        if limit is not None and v > limit:
            raise ValueError(f"min_tokens ({v}) must not exceed max_tokens ({limit})")
        return v

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
        if not (v if isinstance(v, str) else v[0]):
            raise ValueError("prompt must not be empty")
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
    kind: Literal["base", "adapter", "profile", "auto"]
    parent: str | None = None
    root: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AdapterLoadRequest(Body):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=NAME_PATTERN)
    path: str = Field(min_length=1, max_length=1024, pattern=r"^[^\x00]*$")


class CollectionCreate(Body):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    index_type: IndexType | None = None
    chunk_tokens: int | None = Field(None, ge=16)
    chunk_overlap: int | None = Field(None, ge=0)


class DocumentIn(Body):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=512)
    text: str
    title: str | None = None
    source: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class UpsertBody(Body):
    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentIn] = Field(min_length=1)


class SearchBody(Body):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1)
    top_k: int | None = Field(None, ge=1, le=100)  # None: the retrieval.top_k setting
    mode: SearchMode | None = None  # None: the retrieval.mode setting
    fusion: Fusion | None = None  # None: the retrieval.fusion setting
    filter: Filter = None


def error_body(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
