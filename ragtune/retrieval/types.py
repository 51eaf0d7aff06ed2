"""The values the retrieval API takes and returns (plain frozen dataclasses, no behaviour)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Document:
    """A document as the caller gives it; `id` is the caller's key (a path, a URL, a row id)."""

    id: str
    text: str
    title: str | None = None
    source: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk. `start`/`end` are character offsets into the document's text."""

    document_id: str
    chunk_id: str
    title: str | None
    source: str | None
    score: float
    text: str
    start: int
    end: int
    metadata: dict[str, Any]


@dataclass(frozen=True)
class UpsertResult:
    added: list[str]
    updated: list[str]
    unchanged: list[str]
