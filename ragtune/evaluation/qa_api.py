"""`ragtune eval qa` through the OpenAI API, as a client would: the client (a running server or
the app in this process), the evaluation collection's states, the models asked and one question.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from ragtune.core.errors import RagtuneError
from ragtune.training.qa import QASet


class EvalError(RagtuneError):
    code = "eval_error"


# -- the client: a running server, or the app in this process ------------------------------------


@asynccontextmanager
async def in_process_client(settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client over the app itself: the server's code path without a socket."""
    from ragtune.serving.app import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ragtune", timeout=600) as client:
            yield client


@asynccontextmanager
async def server_client(url: str, api_key: str | None) -> AsyncIterator[httpx.AsyncClient]:
    base = url.rstrip("/")
    base = base[: -len("/v1")] if base.endswith("/v1") else base
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=600) as client:
        try:
            resp = await client.get("/health")
        except httpx.HTTPError as exc:
            raise EvalError(f"cannot reach the server at {url}: {exc}", param="server") from None
        if resp.status_code >= 400:
            raise EvalError(f"the server at {url} is not healthy: HTTP {resp.status_code}", param="server")
        yield client


async def _call(client: httpx.AsyncClient, method: str, path: str, **kw: Any) -> Any:
    resp = await client.request(method, path, **kw)
    if resp.status_code >= 400:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text[:300]
        raise EvalError(f"{method} {path}: HTTP {resp.status_code}: {message}")
    return resp.json() if resp.content else None


# -- collection states ---------------------------------------------------------------------------


class CollectionState:
    """Puts the evaluation collection in the state a phase needs, through the documents API."""

    def __init__(self, client: httpx.AsyncClient, name: str, qa: QASet, *, owned: bool = True):
        self.client, self.name, self.qa = client, name, qa
        self.owned = owned  # the eval's own `qa-NAME`: documents not in the set are stale there
        self.present: set[str] = set()

    async def ensure(self) -> None:
        listed = await _call(self.client, "GET", "/v1/collections")
        names = {c["name"] for c in listed["data"]}
        if self.name not in names:
            await _call(self.client, "POST", "/v1/collections", json={"name": self.name})
        offset = 0
        while True:
            page = await _call(
                self.client,
                "GET",
                f"/v1/collections/{self.name}/documents",
                params={"offset": offset, "limit": 500},
            )
            docs = page["data"]
            self.present |= {d["id"] for d in docs}
            if len(docs) < 500:
                break
            offset += len(docs)

    async def set(self, *, texts: dict[str, str], absent: set[str], progress: Callable[[str], None]) -> None:
        """Hold every passage (with `texts` overriding some), except the `absent` ones."""
        docs = [
            {"id": p.id, "text": texts.get(p.id, p.text), **({"title": p.title} if p.title else {})}
            for p in self.qa.passages.values()
            if p.id not in absent
        ]
        for start in range(0, len(docs), 200):
            progress(f"indexing {min(start + 200, len(docs))}/{len(docs)} passages")
            await _call(
                self.client,
                "POST",
                f"/v1/collections/{self.name}/documents",
                json={"documents": docs[start : start + 200]},
            )
        self.present |= {d["id"] for d in docs}
        stale = self.present - set(self.qa.passages) if self.owned else set()
        for doc_id in sorted((absent | stale) & self.present):
            await _call(self.client, "DELETE", f"/v1/collections/{self.name}/documents/{doc_id}")
            self.present.discard(doc_id)


# -- asking --------------------------------------------------------------------------------------


async def resolve_models(client: httpx.AsyncClient, models: list[str]) -> dict[str, str]:
    """Map each requested name to the API's model name; `base` means the base model.

    A name that is not served yet but is a folder under the server's adapters/ is loaded, and so
    is the adapter a requested profile names, so that no question is asked before all load.
    """
    listed = (await _call(client, "GET", "/v1/models"))["data"]
    cards = {m["id"]: m for m in listed}
    base = next((m["id"] for m in listed if m.get("kind") == "base"), listed[0]["id"])
    out = {}
    for name in models:
        if name == "base":
            out[name] = base
            continue
        card = cards.get(name)
        if card is None:
            adapter = name  # not served: an adapter folder of that name?
        elif card.get("kind") == "profile":
            adapter = card.get("parent")  # the base model's name when the profile has no adapter
        else:
            adapter = None
        if adapter and adapter not in cards:
            resp = await client.post("/v1/adapters", json={"name": adapter, "path": adapter})
            if resp.status_code >= 400:
                known = ", ".join(["base", *[k for k in cards if k != base]])
                what = (
                    f"unknown model {name!r}: not served ({known}) and not"
                    if card is None
                    else f"model {name!r} uses adapter {adapter!r}, which is not loaded and not"
                )
                raise EvalError(
                    f"{what} loadable as an adapter folder: "
                    f"{resp.json().get('error', {}).get('message', resp.text[:200])}",
                    param="models",
                )
            cards[adapter] = {"id": adapter, "kind": "adapter"}
        out[name] = name
    return out


async def source_bound(client: httpx.AsyncClient, models: list[str]) -> set[str]:
    """The requested profiles that answer only from retrieved sources (a grounding other than
    `free`, like `grounded`): the server refuses them a request without retrieval, so they have
    no configuration with retrieval off."""
    profiles = (await _call(client, "GET", "/v1/profiles"))["data"]
    held = {p["name"] for p in profiles if (p.get("grounding") or "free") != "free"}
    return held & set(models)


async def model_versions(client: httpx.AsyncClient, names: dict[str, str]) -> dict[str, str]:
    """What each model answers with now: an adapter's content fingerprint, a profile's adapter's
    (or `base`). Answers recorded under another version are asked again, so a retrained adapter
    is never scored with its predecessor's answers."""
    cards = {m["id"]: m for m in (await _call(client, "GET", "/v1/models"))["data"]}
    adapters = (await _call(client, "GET", "/v1/adapters"))["data"]
    prints = {a["name"]: a.get("fingerprint", "") for a in adapters}
    out = {}
    for name, served in names.items():
        card = cards.get(served, {})
        adapter = served if card.get("kind") == "adapter" else card.get("parent")
        out[name] = prints.get(adapter or "", "") or "base"
    return out


async def ask(
    client: httpx.AsyncClient, *, model: str, question: str, rag: dict | bool, max_tokens: int
) -> dict[str, Any]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "rag": rag,
    }
    started = time.perf_counter()
    data = await _call(client, "POST", "/v1/chat/completions", json=body)
    return {
        "reply": data["choices"][0]["message"]["content"] or "",
        "sources": [s["document_id"] for s in data.get("sources") or []],
        "source_texts": [s["text"] for s in data.get("sources") or []],
        "latency_s": round(time.perf_counter() - started, 4),
    }
