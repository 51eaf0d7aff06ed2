"""OpenAI request schemas, plus ragtune's extensions (`rag`, `ignore_eos`, `min_tokens`).

Every field of OpenAI's chat and completions requests is either honoured or refused with a 400
that names it, and a field that is no part of the API is refused: a client never gets a 200 for
a request that was not done as asked (docs/openai.md lists each field). The response schemas
are in serving/responses.py.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ragtune.core.errors import RagtuneError
from ragtune.core.names import NAME_PATTERN
from ragtune.retrieval.documents import id_problem
from ragtune.retrieval.filters import INT64_MAX, INT64_MIN
from ragtune.retrieval.settings import Fusion, IndexType, SearchMode
from ragtune.serving.options import (
    CALIBRATION,
    REMOVED,
    REMOVED_WHY,
    Filter,
    RetrievalOptions,
    refuse,
    text_only,
)
from ragtune.serving.structured import ResponseFormat, ToolCall, ToolChoice, ToolDef


class Body(BaseModel):
    """Base of every request body: strings must be encodable text (no lone surrogates)."""

    @model_validator(mode="before")
    @classmethod
    def _text_only(cls, data: Any) -> Any:
        return text_only(data)


Seed = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]


class RagOptions(RetrievalOptions):
    """Per-request retrieval; overrides what the model's profile says, field by field."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _calibration(cls, data: Any) -> Any:
        """A profile's grounding calibration sent per request: say where it is set now."""
        refuse(data, REMOVED, "rag.", REMOVED_WHY)
        why = "is a profile setting (grounding calibration), not a request field: set it on a profile "
        refuse(data, CALIBRATION, "rag.", why + "(PUT /v1/profiles/NAME) and name that profile as the model")
        return data


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's calls, sent back in the conversation
    tool_call_id: str | None = None  # a tool message: the call it answers
    refusal: str | None = None  # as the assistant message of a response carries it
    # Fields of an assistant message a client may send back as it got it; only empty ones.
    annotations: list[Any] | None = Field(None, max_length=0)
    audio: None = None
    function_call: None = None

    def text(self) -> str:
        """Text of the message; OpenAI's content-part lists are joined by their text parts."""
        if self.content is None:
            return self.refusal or ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts are supported")
            parts.append(part["text"])
        return "".join(parts)


# OpenAI request fields ragtune does not implement, with the values that ask for nothing more
# than what it does anyway; any other value is refused, naming the field.
_ONLY_AS: dict[str, tuple[Any, ...]] = {
    "store": (None, False),
    "metadata": (None, {}),
    "service_tier": (None, "auto", "default"),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "verbosity": (None,),
    "web_search_options": (None,),
    "functions": (None,),
    "function_call": (None,),
    "prompt_cache_key": (None,),
    "suffix": (None, ""),
}


class NotSupported(RagtuneError):
    code = "unsupported_parameter"


def _refuse_unsupported(data: Any, fields: tuple[str, ...]) -> Any:
    if not isinstance(data, dict):
        return data
    for name in fields:
        if name in data and data[name] not in _ONLY_AS[name]:
            hint = " (use tools and tool_choice)" if name.startswith("function") else ""
            raise NotSupported(f"{name} is not supported by ragtune{hint}; leave it out", param=name)
    return {k: v for k, v in data.items() if k not in fields}


LogitBias = dict[Annotated[str, Field(pattern=r"^[0-9]{1,9}$")], Annotated[float, Field(ge=-100, le=100)]]


class _SamplingRequest(Body):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: LogitBias | None = Field(None, description="token id (as text) -> bias, -100 to 100")
    response_format: ResponseFormat | None = None
    stop: str | list[str] | None = None
    seed: Seed | None = None
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256, description="accepted; ragtune keeps no per-user record")
    safety_identifier: str | None = Field(None, max_length=256, description="as `user`")
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
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[ToolDef] | None = Field(None, max_length=128)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _refuse_unsupported(data, tuple(n for n in _ONLY_AS if n != "suffix"))

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, v: int | None, info: ValidationInfo) -> int | None:
        if v and not info.data.get("logprobs"):
            raise ValueError("top_logprobs needs logprobs: true")
        return v

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
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = Field(None, ge=1, le=16)

    @model_validator(mode="before")
    @classmethod
    def _unsupported(cls, data: Any) -> Any:
        return _refuse_unsupported(data, ("suffix",))

    @model_validator(mode="after")
    def _best_of(self) -> CompletionRequest:
        if self.best_of is not None and self.best_of != self.n:
            raise NotSupported("best_of other than n is not supported; leave it out", param="best_of")
        return self

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

    @field_validator("id")
    @classmethod
    def _printable_id(cls, value: str) -> str:
        problem = id_problem(value)  # the store refuses it too: this names the field in the 400
        if problem:
            raise ValueError(problem)
        return value


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
