"""The engine seam over HTTP: a running vLLM OpenAI server (one GPU, tensor or data parallel, a
multi-node deployment behind one URL) generates instead of vLLM in this process.

Prompts are still built and fitted here with the model folder's tokenizer and sent as token ids
to `/v1/completions`, so retrieval, context fitting, strict grounding and `usage` are the same
as in-process. Adapters are loaded through vLLM's runtime LoRA API
(`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` on the server) under a name made of the adapter's name
and its content fingerprint: replicas sharing one engine share one copy of the same adapter and
never serve another's version under the same name. An adapter another replica unloaded is
loaded again on the first request that misses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

from ragtune.retrieval.storage import hide_password
from ragtune.serving.engine import AdapterRef, Delta, SamplingOptions, TokenLogprob
from ragtune.serving.errors import EngineRejected, EngineUnhealthy
from ragtune.serving.settings import EngineSettings

log = logging.getLogger("ragtune.serving")


class RemoteEngine:
    """An Engine that is a vLLM OpenAI server at `settings.url` (built by `connect`)."""

    def __init__(self, settings: EngineSettings, *, adapters_dir: Path, model: str, max_model_len: int):
        assert settings.url is not None
        self.url = settings.url
        self.where = hide_password(settings.url)
        self.model = model
        self.max_model_len = max_model_len
        self._settings = settings
        self._adapters_dir = adapters_dir.resolve()
        self._client = _client(settings)
        self._open: dict[str, httpx.Response] = {}
        self._paths: dict[str, str] = {}  # engine-side LoRA name -> the path it was loaded from

    @classmethod
    async def connect(cls, settings: EngineSettings, *, adapters_dir: Path) -> RemoteEngine:
        """Wait (up to `connect_timeout_s`) for the server to list its models; pick the base model."""
        assert settings.url is not None
        where = hide_password(settings.url)
        deadline = time.monotonic() + settings.connect_timeout_s
        async with _client(settings) as client:
            while True:
                try:
                    resp = await client.get("/models", timeout=10)
                    if resp.status_code in (401, 403):
                        raise EngineUnhealthy(
                            f"the engine at {where} refused ragtune's key ({resp.status_code}); set "
                            "RAGTUNE_ENGINE__API_KEY to its --api-key"
                        )
                    resp.raise_for_status()
                    cards = resp.json()["data"]
                    break
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                    if time.monotonic() > deadline:
                        raise EngineUnhealthy(
                            f"the engine at {where} did not answer GET /models within "
                            f"{settings.connect_timeout_s:.0f} s ({type(exc).__name__}: {exc}); start "
                            "it, or fix RAGTUNE_ENGINE__URL"
                        ) from None
                    log.info("waiting for the engine at %s (%s)", where, type(exc).__name__)
                    await asyncio.sleep(2)
        bases = [c for c in cards if not c.get("parent")]
        if settings.served_model is not None:
            card = next((c for c in cards if c.get("id") == settings.served_model), None)
            if card is None:
                names = ", ".join(str(c.get("id")) for c in bases) or "none"
                raise EngineUnhealthy(
                    f"the engine at {where} serves no model {settings.served_model!r} (its base "
                    f"models: {names}); fix RAGTUNE_ENGINE__SERVED_MODEL"
                )
        elif len(bases) == 1:
            card = bases[0]
        else:
            names = ", ".join(str(c.get("id")) for c in bases) or "none"
            raise EngineUnhealthy(
                f"the engine at {where} serves {len(bases)} base models ({names}); name the one "
                "ragtune's model folder holds with RAGTUNE_ENGINE__SERVED_MODEL"
            )
        max_len = card.get("max_model_len")
        engine = cls(
            settings,
            adapters_dir=adapters_dir,
            model=str(card["id"]),
            max_model_len=int(max_len) if isinstance(max_len, int) else settings.max_model_len,
        )
        log.info("remote engine at %s: model %s, context %d", where, engine.model, engine.max_model_len)
        return engine

    # -- generation ------------------------------------------------------------------------

    async def generate(
        self, prompt_ids: list[int], options: SamplingOptions, request_id: str, adapter: AdapterRef | None
    ) -> AsyncIterator[Delta]:
        body: dict[str, Any] = {
            "model": self._lora_name(adapter) if adapter else self.model,
            "prompt": prompt_ids,
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            "top_p": options.top_p,
            "stop": options.stop,
            "seed": options.seed,
            "n": options.n,
            "ignore_eos": options.ignore_eos,
            "min_tokens": options.min_tokens,
            "stream": True,
            "return_token_ids": True,  # each chunk's token count, as the in-process engine gives
            "request_id": request_id,
        }
        if options.allowed_token_ids:
            body["allowed_token_ids"] = list(options.allowed_token_ids)
        structured = options.structured_outputs()
        if structured:
            body["structured_outputs"] = structured
        if options.presence_penalty or options.frequency_penalty:
            body |= {
                "presence_penalty": options.presence_penalty,
                "frequency_penalty": options.frequency_penalty,
            }
        if options.logit_bias:
            body["logit_bias"] = {str(t): b for t, b in options.logit_bias}
        if options.logprobs is not None:
            body["logprobs"] = options.logprobs
        if not options.skip_special_tokens:
            body["skip_special_tokens"] = False
        for attempt in (1, 2):
            try:
                async with self._client.stream("POST", "/completions", json=body) as resp:
                    if resp.status_code == 404 and adapter is not None and attempt == 1:
                        # Another replica sharing this engine unloaded it: load it again, once.
                        await resp.aread()
                        try:
                            await self._load(adapter)
                        except RuntimeError as exc:
                            raise EngineUnhealthy(
                                f"the engine at {self.where} lost adapter {adapter.name!r} and did not "
                                f"load it again: {exc}"
                            ) from exc
                        continue
                    if resp.status_code >= 400:
                        await resp.aread()
                        raise self._error(resp.status_code, _error_of(resp))
                    self._open[request_id] = resp
                    try:
                        async for delta in self._deltas(resp):
                            yield delta
                    finally:
                        self._open.pop(request_id, None)
                return
            except httpx.TransportError as exc:
                raise EngineUnhealthy(
                    f"the engine at {self.where} cannot be reached ({type(exc).__name__}: {exc}); "
                    "check that it runs"
                ) from exc

    async def _deltas(self, resp: httpx.Response) -> AsyncIterator[Delta]:
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            try:
                chunk = json.loads(data)
            except ValueError:
                raise EngineUnhealthy(
                    f"the engine at {self.where} sent an event that is not JSON: {data[:200]!r}"
                ) from None
            if "error" in chunk:  # vLLM reports an error found mid-stream as one last event
                error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": chunk["error"]}
                raise self._error(int(error.get("code") or 500), error)
            for c in chunk.get("choices", []):
                ids = c.get("token_ids") or []
                if c.get("text") or ids or c.get("finish_reason"):
                    logprobs = _logprobs(c.get("logprobs"))
                    yield Delta(
                        int(c["index"]), c.get("text") or "", len(ids), c.get("finish_reason"), logprobs
                    )

    def _error(self, status: int, error: dict[str, Any]) -> Exception:
        message = str(error.get("message") or error)
        if 400 <= status < 500 and status not in (401, 403, 404):
            return EngineRejected(f"the engine refused the request: {message}", param=error.get("param"))
        return EngineUnhealthy(f"the engine at {self.where} failed the request ({status}): {message}")

    # -- adapters --------------------------------------------------------------------------

    def _lora_name(self, adapter: AdapterRef) -> str:
        return f"{adapter.name}@{adapter.fingerprint or adapter.version}"

    def _engine_path(self, adapter: AdapterRef) -> str:
        if self._settings.adapters_path is None:
            return str(adapter.path)
        relative = adapter.path.resolve().relative_to(self._adapters_dir)
        return str(Path(self._settings.adapters_path) / relative)

    async def add_adapter(self, adapter: AdapterRef) -> None:
        await self._load(adapter)

    async def _load(self, adapter: AdapterRef) -> None:
        name, path = self._lora_name(adapter), self._engine_path(adapter)
        try:
            resp = await self._client.post("/load_lora_adapter", json={"lora_name": name, "lora_path": path})
        except httpx.TransportError as exc:
            raise EngineUnhealthy(f"the engine at {self.where} cannot be reached: {exc}") from exc
        if resp.status_code == 404:
            raise RuntimeError(
                f"the engine at {self.where} has no runtime LoRA API; start it with --enable-lora "
                "and the environment variable VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
            )
        # The name holds the content's fingerprint: "already loaded" is this very adapter.
        if resp.status_code >= 400 and "already been loaded" not in resp.text:
            raise RuntimeError(f"{resp.status_code}: {_error_of(resp).get('message', resp.text)}")
        self._paths[name] = path

    async def remove_adapter(self, adapter: AdapterRef) -> None:
        name = self._lora_name(adapter)
        self._paths.pop(name, None)
        with contextlib.suppress(httpx.TransportError):  # gone with the engine, or unloaded already
            await self._client.post("/unload_lora_adapter", json={"lora_name": name})

    # -- the rest of the Engine seam ---------------------------------------------------------

    async def abort(self, request_id: str) -> None:
        resp = self._open.pop(request_id, None)
        if resp is not None:  # vLLM aborts a request whose client went away
            await resp.aclose()

    async def check_health(self) -> None:
        try:
            resp = await self._client.get("/models", timeout=10)
        except httpx.TransportError as exc:
            raise EngineUnhealthy(f"the engine at {self.where} cannot be reached: {exc}") from exc
        if resp.status_code != 200:
            raise EngineUnhealthy(f"the engine at {self.where} answers GET /models with {resp.status_code}")

    def num_unfinished(self) -> int:
        return len(self._open)

    def shutdown(self) -> None:
        with contextlib.suppress(RuntimeError):  # no running loop: the process is ending anyway
            asyncio.get_running_loop().create_task(self._client.aclose())


def _client(settings: EngineSettings) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {settings.api_key.get_secret_value()}"} if settings.api_key else {}
    timeout = httpx.Timeout(30.0, read=settings.request_timeout_s)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    assert settings.url is not None
    return httpx.AsyncClient(base_url=settings.url, headers=headers, timeout=timeout, limits=limits)


def _error_of(resp: httpx.Response) -> dict[str, Any]:
    """The OpenAI-format error of a response, or its text as the message."""
    try:
        body = resp.json()
    except ValueError:
        return {"message": resp.text[:500]}
    error = body.get("error", body) if isinstance(body, dict) else body
    return error if isinstance(error, dict) else {"message": str(error)}


def _logprobs(block: dict[str, Any] | None) -> tuple[TokenLogprob, ...]:
    """A completions chunk's legacy logprobs (parallel lists) as TokenLogprobs."""
    if not block:
        return ()
    tops = block.get("top_logprobs") or []
    return tuple(
        TokenLogprob(
            token,
            float(lp if lp is not None else -9999.0),
            tuple(sorted(((t, float(v)) for t, v in (tops[i] or {}).items()), key=lambda kv: -kv[1]))
            if i < len(tops)
            else (),
        )
        for i, (token, lp) in enumerate(
            zip(block.get("tokens") or [], block.get("token_logprobs") or [], strict=False)
        )
    )
