"""Collections and documents over HTTP: writes are seen by the very next chat request."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from ragtune.retrieval import Document
from ragtune.retrieval.filters import INT64_MAX
from ragtune.serving.auth import AdminKey, ScopeDep, UserKey
from ragtune.serving.deps import LibraryDep
from ragtune.serving.protocol import CollectionCreate, SearchBody, UpsertBody
from ragtune.serving.resources import (
    CollectionList,
    CollectionStats,
    Deleted,
    DocumentDeleted,
    DocumentList,
    DocumentOut,
    SearchResults,
    UpsertResponse,
)
from ragtune.serving.responses import Source

router = APIRouter(prefix="/v1/collections")


@router.get("", response_model=CollectionList, dependencies=[UserKey])
async def list_collections(library: LibraryDep, scope: ScopeDep) -> dict[str, Any]:
    data = []
    for name in filter(scope.allows_collection, library.names()):
        coll = await asyncio.to_thread(library.open, name)
        data.append({"name": name, **(await asyncio.to_thread(coll.stats))})
    return {"object": "list", "data": data}


@router.post("", status_code=201, response_model=CollectionStats, dependencies=[AdminKey])
async def create_collection(body: CollectionCreate, library: LibraryDep, scope: ScopeDep) -> dict[str, Any]:
    scope.check_collection(body.name)
    options = body.model_dump(exclude={"name"}, exclude_none=True)
    coll = await asyncio.to_thread(library.create, body.name, **options)
    return {"name": body.name, **(await asyncio.to_thread(coll.stats))}


@router.get("/{name}", response_model=CollectionStats, dependencies=[UserKey])
async def collection_stats(name: str, library: LibraryDep) -> dict[str, Any]:
    coll = await asyncio.to_thread(library.open, name)
    return {"name": name, **(await asyncio.to_thread(coll.stats))}


@router.delete("/{name}", response_model=Deleted, dependencies=[AdminKey])
async def drop_collection(name: str, library: LibraryDep) -> dict[str, Any]:
    await asyncio.to_thread(library.drop, name)
    return {"name": name, "deleted": True}


@router.post("/{name}/documents", response_model=UpsertResponse, dependencies=[AdminKey])
async def upsert_documents(name: str, body: UpsertBody, library: LibraryDep) -> dict[str, Any]:
    # The collection refuses a document over retrieval.max_document_chars (413) before embedding.
    coll = await asyncio.to_thread(library.open, name)
    docs = [Document(d.id, d.text, d.title, d.source, d.metadata) for d in body.documents]
    result = await asyncio.to_thread(coll.upsert, docs)
    return {"added": result.added, "updated": result.updated, "unchanged": result.unchanged}


@router.get("/{name}/documents", response_model=DocumentList, dependencies=[UserKey])
async def list_documents(
    name: str,
    library: LibraryDep,
    offset: int = Query(0, ge=0, le=INT64_MAX),
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    coll = await asyncio.to_thread(library.open, name)
    docs = await asyncio.to_thread(coll.list_documents, offset=offset, limit=limit)
    return {"object": "list", "data": [asdict(d) for d in docs]}


@router.get("/{name}/documents/{doc_id:path}", response_model=DocumentOut, dependencies=[UserKey])
async def get_document(name: str, doc_id: str, library: LibraryDep) -> dict[str, Any]:
    coll = await asyncio.to_thread(library.open, name)
    return asdict(await asyncio.to_thread(coll.get, doc_id))


@router.delete(
    "/{name}/documents/{doc_id:path}",
    response_model=None,
    responses={200: {"model": DocumentDeleted}},
    dependencies=[AdminKey],
)
async def delete_document(name: str, doc_id: str, library: LibraryDep) -> JSONResponse:
    coll = await asyncio.to_thread(library.open, name)
    await asyncio.to_thread(coll.get, doc_id)  # 404 for an unknown id, not a silent no-op
    deleted = await asyncio.to_thread(coll.delete, [doc_id])
    return JSONResponse({"id": doc_id, "deleted": deleted == 1})


@router.post("/{name}/search", response_model=SearchResults, dependencies=[UserKey])
async def search(name: str, body: SearchBody, library: LibraryDep) -> dict[str, Any]:
    coll = await asyncio.to_thread(library.open, name)
    # Options left out are the server's retrieval settings, resolved by the search itself.
    hits = await asyncio.to_thread(
        coll.search, body.query, k=body.top_k, mode=body.mode, filter=body.filter, fusion=body.fusion
    )
    data = [Source.of(i, h).model_dump() for i, h in enumerate(hits, start=1)]
    return {"object": "list", "data": data}
