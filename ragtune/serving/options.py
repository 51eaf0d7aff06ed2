"""Retrieval and grounding options, declared once for a request's `rag` and for a profile.

A request's `rag` holds what a client of an OpenAI-compatible RAG server expects to choose per
call: the collection, how many sources, the search mode, a metadata filter, and the grounding
mode. How a grounding mode is calibrated (the quotation ranking's lead and window, whether the
model may abstain, the relevance floor) belongs to a profile: it is fitted to a model and a
collection once, not chosen by each caller (GroundingOptions).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from ragtune.core.errors import RagtuneError
from ragtune.retrieval.filters import check_filter
from ragtune.retrieval.settings import Fusion, SearchMode
from ragtune.serving.grounding import Grounding

Filter = Annotated[dict[str, Any] | None, AfterValidator(check_filter)]


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


# How retrieved chunks are laid into the prompt: best first ("rank"), or the most often retrieved
# first ("popular"), so that requests answered from the same popular chunks share a prompt prefix
# whose KV the engine reuses (docs/performance.md has what it saves and what it costs).
ContextOrder = Literal["rank", "popular"]


class RetrievalOptions(BaseModel):
    """Where sources come from and what holds the answer to them; None: the profile's, else the
    server's retrieval settings (and grounding 'free')."""

    collection: str | None = Field(None, description="the collection to retrieve from (None: no retrieval)")
    top_k: int | None = Field(None, ge=1, le=100, description="sources per question; None: retrieval.top_k")
    mode: SearchMode | None = Field(None, description="dense, sparse or hybrid; None: retrieval.mode")
    filter: Filter = Field(None, description="metadata filter on the sources (docs/retrieval.md)")
    grounding: Grounding | None = Field(
        None,
        description="'strict': the answer may only use words of the prompt and its sources; "
        "'extractive': it quotes sentences of one source with its [n], or abstains; 'checked': the "
        "model's own answer, sent a sentence at a time while the sources it cites hold its claims "
        "(its marker set right), ended at the first claim none holds (the abstention if that is the "
        "first); 'free' (the default): the model answers from the sources as it reads them "
        "(serving.grounding)",
    )


class GroundingOptions(BaseModel):
    """How a profile calibrates grounding (serving.grounding); None: the built-in default."""

    min_similarity: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="the relevance floor: the abstention, whatever the grounding, when no run of one "
        "or two sentences of the sources, nor any source whole, comes this close to the question "
        "(embedder cosine) and no run holds most of its terms; None or 0: off",
    )


CALIBRATION = tuple(GroundingOptions.model_fields)
# Extractive grounding's former calibration, fixed since measured on a model that reads
# (serving.grounding, bench/results/checked.md): a profile recorded with them is served without.
REMOVED = ("quotes", "quote_lead", "quote_window", "model_abstains")


REMOVED_WHY = (
    "was removed: extractive grounding's choice of quotation is fixed (docs/grounding.md); leave it out"
)


def refuse(data: Any, names: tuple[str, ...], where: str, why: str) -> None:
    """A 400 naming the first of `names` that `data` sets (as `where` + its name), saying `why`."""
    found = sorted(set(data) & set(names)) if isinstance(data, dict) else []
    if found:
        raise RagtuneError(
            f"{where}{found[0]} {why}", param=f"{where}{found[0]}", code="unsupported_parameter"
        )


class ProfileSettings(RetrievalOptions, GroundingOptions):
    """A served domain: an adapter, a collection, how to retrieve and ground, and a system prompt.
    Its retrieval fields are the request's `rag` fields (a request overrides them one by one);
    its grounding calibration is its own (serving.options)."""

    model_config = ConfigDict(extra="forbid")

    adapter: str | None = Field(None, description="the adapter it answers with (None: the base model)")
    description: str | None = Field(
        None,
        max_length=2000,
        description="what this profile knows, in a sentence or two: `model: auto` weighs it with "
        "the collection's documents and the adapter's training questions (serving.routing)",
    )
    fusion: Fusion | None = Field(None, description="hybrid fusion; None: retrieval.fusion")
    context_order: ContextOrder | None = Field(
        None, description="how its chunks are laid into the prompt; None: serving.context_order"
    )
    system_prompt: str | None = Field(
        None, description="put first, unless the conversation starts with a system turn"
    )

    @model_validator(mode="before")
    @classmethod
    def _text(cls, data: Any) -> Any:
        refuse(data, REMOVED, "", REMOVED_WHY)
        return text_only(data)

    @field_validator("filter", mode="wrap")
    @classmethod
    def _filter(cls, v: Any, handler: Any) -> Any:
        from ragtune.core.errors import InvalidFilter

        try:
            return handler(v)
        except InvalidFilter as exc:  # a settings error, with the key named by pydantic
            raise ValueError(exc.message) from None
