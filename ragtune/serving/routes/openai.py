"""OpenAI-compatible routes: chat/completions, completions, models; plus health and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from ragtune.core.errors import RagtuneError
from ragtune.serving.auth import AdminOrLoopback, Scope, ScopeDep, UserKey
from ragtune.serving.canary import HEALTH_TTL_S
from ragtune.serving.chat import GenerationService
from ragtune.serving.deps import CanaryDep, EngineDep, GenerationDep, LibraryDep, MetricsDep, ResolverDep
from ragtune.serving.protocol import ChatCompletionRequest, CompletionRequest
from ragtune.serving.replies import (
    chat_events,
    chat_response,
    completion_events,
    completion_response,
    model_name,
)
from ragtune.serving.resources import Health
from ragtune.serving.responses import (
    ChatCompletionResponse,
    CompletionResponse,
    ModelCard,
    ModelList,
    error_body,
)
from ragtune.serving.routing import AUTO

STORE_PING_S = 2.0  # /health waits this long for the document store, then says it is lost
router = APIRouter()
log = logging.getLogger("ragtune.serving")


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse, dependencies=[UserKey])
async def chat_completions(req: ChatCompletionRequest, gen: GenerationDep, scope: ScopeDep) -> Response:
    prep = await gen.prepare_chat(req, scope)
    model, parser = model_name(prep, req.model), gen.tool_parser()
    if req.stream:
        events = chat_events(
            await gen.start(prep), prep, model=model, include_usage=req.include_usage, parser=parser
        )
        return _sse(events)
    return JSONResponse(chat_response(await gen.run(prep), model, parser))


@router.post("/v1/completions", response_model=CompletionResponse, dependencies=[UserKey])
async def completions(req: CompletionRequest, gen: GenerationDep, scope: ScopeDep) -> Response:
    prep = await gen.prepare_completion(req, scope)
    model, echo = model_name(prep, req.model), req.prompt_text if req.echo else None
    if req.stream:
        events = completion_events(
            await gen.start(prep), prep, model=model, include_usage=req.include_usage, echo=echo
        )
        return _sse(events)
    return JSONResponse(completion_response(await gen.run(prep), model, echo))


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


@router.get("/v1/models", dependencies=[UserKey])
async def list_models(resolver: ResolverDep, scope: ScopeDep, gen: GenerationDep) -> ModelList:
    return ModelList(data=resolver.cards(scope) + _auto_card(gen, scope))


def _auto_card(gen: GenerationService, scope: Scope) -> list[ModelCard]:
    """`auto` (serving.routing), for a key with profiles to choose among."""
    return [ModelCard(id=AUTO, kind="auto")] if gen.router.lists_auto(scope) else []


@router.get("/v1/models/{model:path}", dependencies=[UserKey])
async def get_model(model: str, resolver: ResolverDep, scope: ScopeDep, gen: GenerationDep) -> ModelCard:
    if model == AUTO and _auto_card(gen, scope):
        return _auto_card(gen, scope)[0]
    return resolver.card(model, scope)  # 404 model_not_found, also for a model outside the key's scope


@router.get("/health", response_model=None, responses={200: {"model": Health}, 503: {"model": Health}})
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


@router.get("/metrics", response_class=PlainTextResponse, dependencies=[AdminOrLoopback])
async def metrics(m: MetricsDep) -> Response:
    return Response(m.render(), media_type="text/plain; version=0.0.4")
