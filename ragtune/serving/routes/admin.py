"""Runtime management: adapters (load, replace, unload) and profiles."""

from __future__ import annotations

from pathlib import PurePath
from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from ragtune.core.errors import RagtuneError
from ragtune.core.names import NAME_PATTERN
from ragtune.retrieval import Library
from ragtune.retrieval.search import search_options
from ragtune.serving.adapters import AdapterNotFound, LoadedAdapter
from ragtune.serving.auth import FULL, AdminKey, Scope, ScopeDep, UserKey
from ragtune.serving.deps import AdaptersDep, ConvergerDep, LibraryDep, ResolverDep
from ragtune.serving.protocol import AdapterLoadRequest
from ragtune.serving.resources import (
    AdapterList,
    AdapterLoaded,
    Deleted,
    ProfileList,
    ProfileOut,
    ProfilePut,
    created_or_replaced,
)
from ragtune.serving.settings import ProfileSettings

router = APIRouter()


def _adapter_json(entry: LoadedAdapter, scope: Scope, merged: str | None = None) -> dict[str, Any]:
    """An adapter as served: its folder and manifest (training data, base model and collection
    paths) only to a key that sees the server's paths."""
    info = entry.info
    base = info.base_model_name
    data: dict[str, Any] = {
        "name": entry.name,
        "version": entry.ref.version,
        "fingerprint": entry.ref.fingerprint,
        "rank": info.rank,
        "alpha": info.alpha,
        "target_modules": info.target_modules,
        # a hand-written manifest may name the base model by its folder: the name alone
        "base_model": PurePath(base).name if base and not scope.sees_server else base,
        "loaded_at": int(entry.loaded_at),
        "merged": entry.name == merged,
    }
    if scope.sees_server:
        data |= {"path": str(entry.ref.path), "in_flight": entry.in_flight, "manifest": info.manifest}
    return data


@router.get(
    "/v1/adapters", response_model=AdapterList, response_model_exclude_unset=True, dependencies=[UserKey]
)
async def list_adapters(adapters: AdaptersDep, scope: ScopeDep) -> dict[str, Any]:
    entries = [e for e in adapters.entries() if scope.allows_model(e.name)]
    merged = adapters.merged.name if adapters.merged else None
    return {"object": "list", "data": [_adapter_json(e, scope, merged) for e in entries]}


@router.post(
    "/v1/adapters", response_model=None, responses=created_or_replaced(AdapterLoaded), dependencies=[AdminKey]
)
async def load_adapter(
    body: AdapterLoadRequest, converger: ConvergerDep, resolver: ResolverDep
) -> JSONResponse:
    if body.name == resolver.base_name or body.name in resolver.profiles():
        raise RagtuneError(
            f"{body.name!r} already names the base model or a profile; pick another adapter name",
            param="name",
            code="name_taken",
        )
    entry, replaced = await converger.load_adapter(body.name, body.path)  # recorded, or not loaded
    shown = _adapter_json(entry, FULL)  # only unscoped admin keys reach this route
    return JSONResponse({**shown, "replaced": replaced}, status_code=200 if replaced else 201)


@router.delete("/v1/adapters/{name}", response_model=Deleted, dependencies=[AdminKey])
async def unload_adapter(name: str, converger: ConvergerDep) -> dict[str, Any]:
    await converger.unload_adapter(name)
    return {"name": name, "deleted": True}


def _profile_json(name: str, profile: ProfileSettings, library: Library) -> dict[str, Any]:
    """A profile as served: what it leaves unset shows the server's retrieval setting it uses."""
    data = profile.model_dump()
    search = search_options(library.settings, k=profile.top_k, mode=profile.mode)
    data["top_k"], data["mode"] = search.k, search.mode
    return {"name": name, **data}


@router.get("/v1/profiles", response_model=ProfileList, dependencies=[UserKey])
async def list_profiles(resolver: ResolverDep, scope: ScopeDep, library: LibraryDep) -> dict[str, Any]:
    profiles = sorted(resolver.profiles(scope).items())
    return {"object": "list", "data": [_profile_json(n, p, library) for n, p in profiles]}


@router.get("/v1/profiles/{name}", response_model=ProfileOut, dependencies=[UserKey])
async def get_profile(
    name: str, resolver: ResolverDep, scope: ScopeDep, library: LibraryDep
) -> dict[str, Any]:
    return _profile_json(name, resolver.get_profile(name, scope), library)


@router.put(
    "/v1/profiles/{name}",
    response_model=None,
    responses=created_or_replaced(ProfilePut),
    dependencies=[AdminKey],
)
async def put_profile(
    name: Annotated[str, Path(pattern=NAME_PATTERN)],
    body: ProfileSettings,
    adapters: AdaptersDep,
    library: LibraryDep,
    converger: ConvergerDep,
) -> JSONResponse:
    if body.adapter and adapters.get(body.adapter) is None:
        raise AdapterNotFound(
            f"adapter {body.adapter!r} is not loaded; POST /v1/adapters first", param="adapter"
        )
    if body.collection and body.collection not in library.names():
        library.open(body.collection)  # raises CollectionNotFound with the standard message
    replaced = await converger.put_profile(name, body)
    return JSONResponse(
        {**_profile_json(name, body, library), "replaced": replaced}, status_code=200 if replaced else 201
    )


@router.delete("/v1/profiles/{name}", response_model=Deleted, dependencies=[AdminKey])
async def delete_profile(name: str, converger: ConvergerDep) -> dict[str, Any]:
    await converger.delete_profile(name)
    return {"name": name, "deleted": True}
