"""Response schemas of ragtune's own routes (collections, documents, search, files, adapters,
profiles, health), so `/docs` and `/openapi.json` show what each returns; the OpenAI routes'
are in serving/responses.py. The routes build the same JSON as before these existed: a field
shown only to some keys is left out, never sent as null (`response_model_exclude_unset`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from ragtune.serving.responses import Source
from ragtune.serving.settings import ProfileSettings


class CollectionStats(BaseModel):
    """A collection's counts, sizes and how it was built (`Collection.stats`)."""

    name: str
    documents: int
    chunks: int
    vectors: int = Field(description="chunks in the dense (FAISS) index")
    fts_rows: int = Field(description="chunks in the store's full-text table")
    sparse_chunks: int = Field(description="chunks in the in-memory BM25 index")
    tombstones: int = Field(description="removed vectors the dense index still holds")
    consistent: bool = Field(description="store, dense and sparse indexes hold the same chunks")
    index_type: str
    embedder: str
    dimension: int
    chunk_tokens: int
    chunk_overlap: int
    store_version: int = Field(description="committed writes the indexes reflect")
    schema_version: int
    bytes_on_disk: int
    index_memory_bytes: int
    sparse_memory_bytes: int


class CollectionList(BaseModel):
    object: Literal["list"]
    data: list[CollectionStats]


class Deleted(BaseModel):
    """A collection, adapter or profile that was removed."""

    name: str
    deleted: Literal[True]


class UpsertResponse(BaseModel):
    """Document ids by what a write did to them (an unchanged document is not embedded again)."""

    added: list[str]
    updated: list[str]
    unchanged: list[str]


class DocumentOut(BaseModel):
    id: str
    text: str
    title: str | None
    source: str | None
    metadata: dict[str, Any]


class DocumentList(BaseModel):
    object: Literal["list"]
    data: list[DocumentOut]


class DocumentDeleted(BaseModel):
    id: str
    deleted: bool


class SearchResults(BaseModel):
    object: Literal["list"]
    data: list[Source]


class AdapterOut(BaseModel):
    """A loaded adapter. `path`, `in_flight` and `manifest` only for a key that sees the
    server's paths (an unscoped admin key); `base_model` is then the path it was trained on."""

    name: str
    version: int = Field(description="raised each time the adapter is replaced")
    fingerprint: str = Field(description="of the adapter's config and weights")
    rank: int
    alpha: int | float
    target_modules: list[str] | str
    base_model: str | None
    loaded_at: int = Field(description="Unix time")
    merged: bool = Field(
        False, description="served merged into the base weights, with no LoRA (serving.merge)"
    )
    path: str | None = None
    in_flight: int | None = Field(None, description="requests using this version now")
    manifest: dict[str, Any] | None = Field(None, description="ragtune-adapter.json: how it was trained")


class AdapterLoaded(AdapterOut):
    replaced: bool = Field(description="an adapter of this name was loaded before (200); else 201")


class AdapterList(BaseModel):
    object: Literal["list"]
    data: list[AdapterOut]


class _Named(BaseModel):
    name: str


class ProfileOut(ProfileSettings, _Named):
    """A profile as served: the fields it leaves unset that retrieval settings fill (`top_k`,
    `mode`) show the server's value."""


class ProfilePut(ProfileOut):
    replaced: bool = Field(description="a profile of this name existed (200); else 201")


class ProfileList(BaseModel):
    object: Literal["list"]
    data: list[ProfileOut]


class Health(BaseModel):
    """200 with `running_requests` when the engine, its canary answer and the store are well;
    503 with `detail` when one is not."""

    status: Literal["ok", "error"]
    running_requests: int | None = None
    detail: str | None = None


def created_or_replaced(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """The `responses` of a route answering 201 when it creates and 200 when it replaces."""
    return {
        200: {"model": model, "description": "replaced"},
        201: {"model": model, "description": "created"},
    }
