"""OpenAI-compatible routes: chat/completions, completions, models; plus health and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response, StreamingResponse

from core.errors import RagtuneError
from serving.auth import AdminOrLoopback, Scope, ScopeDep, UserKey
from serving.canary import HEALTH_TTL_S
from serving.chat import GenerationService, Prepared, Result
from serving.deps import CanaryDep, EngineDep, GenerationDep, LibraryDep, MetricsDep, ResolverDep
from serving.engine import Delta
from serving.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    error_body,
    new_id,
    now,
)
from serving.routing import AUTO

STORE_PING_S = 2.0  # /health waits this long for the document store, then says it is lost
router = APIRouter()
log = logging.getLogger("ragtune.serving")


def _sources(prep: Prepared) -> list[dict[str, Any]]:
    return [s.model_dump() for s in prep.sources]


def _model(prep: Prepared, requested: str) -> str:
    """The model a response names: for `auto`, the one chosen (serving.routing)."""
    return prep.route.chosen if prep.route else requested


def _route(prep: Prepared) -> dict[str, Any]:
    """The `ragtune` extension field saying where `model: auto` went, with its scores."""
    return {"ragtune": {"route": prep.route.to_json()}} if prep.route else {}


@router.post("/v1/chat/completions", response_model=None, dependencies=[UserKey])
async def chat_completions(req: ChatCompletionRequest, gen: GenerationDep, scope: ScopeDep) -> Response:
    prep = await gen.prepare_chat(req, scope)
    if req.stream:
        return _sse(_chat_chunks(await gen.start(prep), prep, req))
    result = await gen.run(prep)
    return JSONResponse(
        {
            "id": new_id("chatcmpl"),
            "object": "chat.completion",
            "created": now(),
            "model": _model(prep, req.model),
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": c.text},
                    "finish_reason": c.finish_reason,
                    "logprobs": None,
                }
                for i, c in enumerate(result.choices)
            ],
            "usage": result.usage.model_dump(),
            "sources": _sources(prep),
            **_route(prep),
        }
    )


@router.post("/v1/completions", response_model=None, dependencies=[UserKey])
async def completions(req: CompletionRequest, gen: GenerationDep, scope: ScopeDep) -> Response:
    prep = await gen.prepare_completion(req, scope)
    if req.stream:
        return _sse(_completion_chunks(await gen.start(prep), prep, req))
    result = await gen.run(prep)
    return JSONResponse(
        {
            "id": new_id("cmpl"),
            "object": "text_completion",
            "created": now(),
            "model": _model(prep, req.model),
            "choices": [
                {"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
                for i, c in enumerate(result.choices)
            ],
            "usage": result.usage.model_dump(),
            "sources": _sources(prep),
            **_route(prep),
        }
    )


def _sse(events: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def body() -> AsyncIterator[str]:
        try:
            async for event in events:
                yield f"data: {json.dumps(event, separators=(',', ':'))}\n\n"
        except Exception as exc:  # the headers are sent: the error goes in the stream, as OpenAI's does
            if isinstance(exc, RagtuneError):
                error = error_body(exc.message, exc.error_type, param=exc.param, code=exc.code)
            else:
                log.exception("stream failed")
                error = error_body(f"internal error: {type(exc).__name__}", "server_error")
            yield f"data: {json.dumps(error, separators=(',', ':'))}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _chat_chunks(
    deltas: AsyncIterator[Delta], prep: Prepared, req: ChatCompletionRequest
) -> AsyncIterator[dict[str, Any]]:
    head = {"id": new_id("chatcmpl"), "object": "chat.completion.chunk", "created": now()}
    head["model"] = _model(prep, req.model)
    result = Result(prep)
    for i in range(prep.options.n):
        first: dict[str, Any] = {
            **head,
            "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        }
        if i == 0:
            first["sources"] = _sources(prep)
            first.update(_route(prep))
        yield first
    completion = 0
    async for d in deltas:
        completion += d.tokens
        if d.text:
            yield {
                **head,
                "choices": [{"index": d.index, "delta": {"content": d.text}, "finish_reason": None}],
            }
        if d.finish_reason:
            yield {**head, "choices": [{"index": d.index, "delta": {}, "finish_reason": d.finish_reason}]}
    if req.include_usage:
        usage = result.usage.model_copy(update={"completion_tokens": completion})
        usage.total_tokens = usage.prompt_tokens + completion
        yield {**head, "choices": [], "usage": usage.model_dump()}


async def _completion_chunks(
    deltas: AsyncIterator[Delta], prep: Prepared, req: CompletionRequest
) -> AsyncIterator[dict[str, Any]]:
    head = {"id": new_id("cmpl"), "object": "text_completion", "created": now()}
    head["model"] = _model(prep, req.model)
    completion = 0
    sent_sources = False
    async for d in deltas:
        completion += d.tokens
        event: dict[str, Any] = {
            **head,
            "choices": [
                {"index": d.index, "text": d.text, "finish_reason": d.finish_reason, "logprobs": None}
            ],
        }
        if not sent_sources:
            event["sources"] = _sources(prep)
            event.update(_route(prep))
            sent_sources = True
        yield event
    if req.include_usage:
        prompt = len(prep.prompt_ids)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        yield {**head, "choices": [], "usage": usage}


@router.get("/v1/models", dependencies=[UserKey])
async def list_models(resolver: ResolverDep, scope: ScopeDep, gen: GenerationDep) -> ModelList:
    cards = [card for card in resolver.cards() if scope.allows_model(card.id)]
    return ModelList(data=cards + _auto_card(gen, scope))


def _auto_card(gen: GenerationService, scope: Scope) -> list[ModelCard]:
    """`auto` (serving.routing), for a key with profiles to choose among."""
    return [ModelCard(id=AUTO, kind="auto")] if gen.router.lists_auto(scope) else []


@router.get("/v1/models/{model:path}", dependencies=[UserKey])
async def get_model(model: str, resolver: ResolverDep, scope: ScopeDep, gen: GenerationDep) -> ModelCard:
    if model == AUTO and _auto_card(gen, scope):
        return _auto_card(gen, scope)[0]
    scope.check_model(model)
    resolver.resolve(model)  # 404 model_not_found for an unknown name
    return next(card for card in resolver.cards() if card.id == model)


@router.get("/health", response_model=None)
async def health(engine: EngineDep, canary: CanaryDep, library: LibraryDep) -> Response:
    try:
        await engine.check_health()
        # A live engine can still be wrong (a poisoned adapter slot): its canary answer must hold.
        await canary.check(max_age=HEALTH_TTL_S)
        # And the document store must answer (a replica that lost its database cannot retrieve).
        await asyncio.to_thread(library.backend.ping, STORE_PING_S)
    except Exception as exc:  # a dead or wrong engine, a lost store: report it, the load balancer decides
        return JSONResponse({"status": "error", "detail": str(exc)}, status_code=503)
    return JSONResponse({"status": "ok", "running_requests": engine.num_unfinished()})


@router.get("/metrics", dependencies=[AdminOrLoopback])
async def metrics(m: MetricsDep) -> Response:
    return Response(m.render(), media_type="text/plain; version=0.0.4")
