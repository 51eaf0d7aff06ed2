"""The generation service: resolve the model, retrieve, build the prompt, generate.

Used by both /v1/chat/completions and /v1/completions; the routes only parse and shape.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import aclosing, contextmanager
from functools import partial
from typing import Any, cast

import anyio

from ragtune.core.errors import RagtuneError
from ragtune.core.prompt import ContextChunk
from ragtune.retrieval import Hit, Library
from ragtune.retrieval.search import search_options
from ragtune.serving.adapters import AdapterNotFound, AdapterRegistry
from ragtune.serving.auth import UNLIMITED, Scope
from ragtune.serving.engine import AdapterRef, Delta, Engine, SamplingOptions
from ragtune.serving.grounded import Checked, Grounder, GroundingAsked, option
from ragtune.serving.metrics import Metrics
from ragtune.serving.prepared import Choice, Prepared, Result
from ragtune.serving.prompts import Arrange, ContextLengthExceeded, Popularity, PromptBuilder
from ragtune.serving.protocol import ChatCompletionRequest, CompletionRequest, RagOptions
from ragtune.serving.resolve import ModelResolver, Target
from ragtune.serving.responses import Source, new_id
from ragtune.serving.routing import AUTO, Route, Router
from ragtune.serving.sampling import sampling_options
from ragtune.serving.settings import ServingSettings
from ragtune.serving.structured import (
    Plan,
    check_shape,
    instruct,
    plan,
    template_formats_tools,
    template_message,
    template_parser,
    tools_for_template,
)
from ragtune.serving.toolcalls import load_parser


class GenerationService:
    def __init__(
        self,
        *,
        engine: Engine,
        tokenizer: Any,
        resolver: ModelResolver,
        adapters: AdapterRegistry,
        library: Library,
        settings: ServingSettings,
        metrics: Metrics,
    ):
        self.engine = engine
        self.tokenizer = tokenizer
        self.resolver = resolver
        self.adapters = adapters
        self.library = library
        self.settings = settings
        self.metrics = metrics
        self.prompts = PromptBuilder(
            tokenizer, max_model_len=engine.max_model_len, reserve_tokens=settings.context_reserve_tokens
        )
        self.grounder = Grounder(tokenizer, self.prompts.count_tokens, engine.max_model_len)
        self.popularity = Popularity()
        template = getattr(tokenizer, "chat_template", None)
        self.formats_tools = template_formats_tools(template)
        self.parser_name = settings.tool_parser or template_parser(template)
        self._parser: Any = None
        self.router = Router(
            library=library,
            profiles=resolver.profiles,
            base_name=resolver.base_name,
            adapters=adapters,
            settings=settings.routing,
            metrics=metrics,
        )

    # -- preparation -------------------------------------------------------------------

    async def retrieve(
        self,
        target: Target,
        rag: RagOptions | bool | None,
        query: str,
        *,
        param: str = "messages",
        scope: Scope = UNLIMITED,
    ) -> list[Hit]:
        """Hits for `query` as the profile says, overridden field by field by `rag`; `param` is
        the request field the query came from. A collection outside the key's `scope` is a 403."""
        collection = self._collection(target, rag)
        if not collection:
            return []
        asked = isinstance(rag, RagOptions) and rag.collection
        scope.check_collection(collection, param="rag.collection" if asked else "model")
        if not query.strip():
            what = "the last user message" if param == "messages" else f"the {param}"
            raise RagtuneError(f"{what} is empty: there is no question to retrieve for", param=param)
        # Request, then profile, then the server's retrieval settings (retrieval.search.search_options).
        options = search_options(
            self.library.settings,
            k=option(rag, target, "top_k", None),
            mode=option(rag, target, "mode", None),
            fusion=option(rag, target, "fusion", None),
        )
        filt = option(rag, target, "filter", None)
        coll = await asyncio.to_thread(self.library.open, collection)
        started = time.perf_counter()
        hits = await asyncio.to_thread(
            coll.search, query, k=options.k, mode=options.mode, filter=filt, fusion=options.fusion
        )
        self.metrics.retrieval.labels(mode=options.mode).observe(time.perf_counter() - started)
        return hits

    def _arrange(self, target: Target, rag: RagOptions | bool | None) -> Arrange | None:
        """How this request lays out its chunks: None keeps rank order (serving.prompts)."""
        collection = self._collection(target, rag)
        order = option(rag, target, "context_order", None) or self.settings.context_order
        if collection is None or order == "rank":
            return None
        return partial(self.popularity.arrange, collection)

    @staticmethod
    def _collection(target: Target, rag: RagOptions | bool | None) -> str | None:
        """The collection this request retrieves from; None when retrieval is off."""
        if rag is False:
            return None
        override = rag if isinstance(rag, RagOptions) else RagOptions()
        return override.collection or (target.profile.collection if target.profile else None)

    async def _constraint(
        self,
        target: Target,
        rag: RagOptions | bool | None,
        query: str,
        prompt_ids: list[int],
        kept: list[ContextChunk],
        max_tokens: int | None,
    ) -> tuple[dict[str, Any], Checked | None]:
        """What grounding holds the answer to (serving.grounded): SamplingOptions fields, and for
        checked grounding the check of the reply; nothing when retrieval is off."""
        collection = self._collection(target, rag)
        asked = GroundingAsked.of(rag, target)
        if collection is None or (asked.grounding == "free" and not asked.floor):
            return {}, None
        coll = await asyncio.to_thread(self.library.open, collection)
        texts = [c.text for c in kept]
        checked = Checked(query, texts) if asked.grounding == "checked" else None
        constraint = await self.grounder.constraint(
            asked,
            query=query,
            texts=texts,
            embedder=coll.embedder,
            prompt_ids=prompt_ids,
            max_tokens=max_tokens,
        )
        return constraint, checked

    def _target(self, model: str, scope: Scope) -> Target:
        """The model a request names, refused before any work if its adapter is not loaded (the
        grounding probe runs on it, and a stream must not fail after its headers are sent)."""
        scope.check_model(model)
        target = self.resolver.resolve(model)
        if target.adapter is not None and self.adapters.get(target.adapter) is None:
            raise AdapterNotFound(
                f"model {target.name!r} uses adapter {target.adapter!r}, which is not loaded; "
                "POST /v1/adapters to load it",
                param="model",
            )
        return target

    async def _route(self, model: str, turns: list[str], scope: Scope) -> Route | None:
        """For `model: auto`, the model serving.routing chooses from the user turns; else None."""
        return await asyncio.to_thread(self.router.route, turns, scope) if model == AUTO else None

    async def prepare_chat(self, req: ChatCompletionRequest, scope: Scope = UNLIMITED) -> Prepared:
        route = await self._route(req.model, [m.text() for m in req.messages if m.role == "user"], scope)
        target = self._target(route.chosen if route else req.model, scope)
        shape = plan(req.response_format, req.tools, req.tool_choice, req.parallel_tool_calls)
        self._check_shape(shape, target, req.rag)
        messages = [
            template_message(
                "system" if m.role == "developer" else m.role,
                m.text(),
                m.tool_calls,
                m.tool_call_id,
                formats_tools=self.formats_tools,
            )
            for m in req.messages
        ]
        system_prompt = target.profile.system_prompt if target.profile else None
        tools = tools_for_template(req.tools) if req.tools and self.formats_tools else None
        # What the template cannot show (tools), and the schema a reply must fit, go in the system turn.
        instruction = instruct(req.response_format, None if self.formats_tools else req.tools)
        query = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        hits = await self.retrieve(target, req.rag, query, scope=scope)

        # Tokenising runs in a thread: a prompt of megabytes would otherwise stall every request.
        prompt_ids, hits, kept = await asyncio.to_thread(
            partial(
                self.prompts.chat,
                tools=tools,
                instruction=instruction,
                arrange=self._arrange(target, req.rag),
            ),
            messages,
            system_prompt,
            hits,
            req.token_limit,
        )
        held = await self._constraint(target, req.rag, query, prompt_ids, kept, req.token_limit)
        prepared = self._finish(req, target, prompt_ids, hits, kept, shape, *held)
        prepared.route = route
        prepared.plan = shape
        return prepared

    def _check_shape(self, shape: Plan, target: Target, rag: RagOptions | bool | None) -> None:
        """serving.structured.check_shape, with the grounding this request retrieves under; and a
        grounded request that retrieves nothing is refused: it would answer from memory."""
        retrieves = self._collection(target, rag) is not None
        grounding = option(rag, target, "grounding", "free")
        if grounding != "free" and not retrieves:
            raise RagtuneError(
                f"model {target.name!r} holds answers to retrieved sources (grounding {grounding!r}), "
                "and this request retrieves none: name a collection in rag.collection",
                param="rag.collection",
            )
        floor = option(rag, target, "min_similarity", 0.0) if retrieves else 0.0
        check_shape(shape, parser=self.parser_name, grounding=grounding, floor=floor)

    def tool_parser(self) -> Any:
        """vLLM's tool parser for this model's `auto` replies, built on first use."""
        if self._parser is None and self.parser_name is not None:
            self._parser = load_parser(self.parser_name, self.tokenizer)
        return self._parser

    async def prepare_completion(self, req: CompletionRequest, scope: Scope = UNLIMITED) -> Prepared:
        route = await self._route(req.model, [req.prompt_text], scope)
        target = self._target(route.chosen if route else req.model, scope)
        shape = plan(req.response_format, None, None, None)
        self._check_shape(shape, target, req.rag)
        prompt = req.prompt_text
        hits = await self.retrieve(target, req.rag, prompt, param="prompt", scope=scope)
        prompt_ids, hits, kept = await asyncio.to_thread(
            partial(self.prompts.completion, arrange=self._arrange(target, req.rag)),
            prompt,
            hits,
            req.token_limit,
        )
        held = await self._constraint(target, req.rag, prompt, prompt_ids, kept, req.token_limit)
        prepared = self._finish(req, target, prompt_ids, hits, kept, shape, *held)
        prepared.route = route
        return prepared

    def _finish(
        self,
        req: ChatCompletionRequest | CompletionRequest,
        target: Target,
        prompt_ids: list[int],
        hits: list[Hit],
        kept: list[ContextChunk],
        shape: Plan,
        constraint: dict[str, Any],
        checked: Checked | None,
    ) -> Prepared:
        limit = self.engine.max_model_len
        if len(prompt_ids) >= limit:  # fit_chunks keeps this from happening; a guard, not a path
            raise ContextLengthExceeded(f"the prompt has {len(prompt_ids)} tokens; the context is {limit}")
        if not prompt_ids:
            raise RagtuneError("the prompt is empty after tokenisation", param="prompt", code="empty_prompt")
        max_tokens = req.token_limit or (limit - len(prompt_ids))
        if req.min_tokens > max_tokens:
            raise ContextLengthExceeded(
                f"min_tokens={req.min_tokens} does not fit: the prompt leaves {max_tokens} tokens "
                "of the model's context",
                param="min_tokens",
            )
        options = sampling_options(
            req, max_tokens=max_tokens, vocab_size=len(self.tokenizer), shape=shape, constraint=constraint
        )
        sources = [Source.of(i, h, c.text) for i, (h, c) in enumerate(zip(hits, kept, strict=False), start=1)]
        if checked is not None:
            checked.choices = options.n
        return Prepared(new_id("req"), target, prompt_ids, options, sources, checked=checked)

    # -- generation ----------------------------------------------------------------------

    async def stream(self, prep: Prepared) -> AsyncIterator[Delta]:
        """Engine deltas for a prepared request; aborts the engine request if abandoned."""
        kind = prep.target.kind
        self.metrics.model_use.labels(kind=kind, model=prep.target.name).inc()
        self.metrics.tokens.labels(type="prompt").inc(len(prep.prompt_ids))
        started = time.perf_counter()
        first = True
        generated = self._generate(prep.target, prep.prompt_ids, prep.options, prep.request_id)
        async with aclosing(generated) as deltas:
            async for delta in deltas:
                first = self._observe(delta, first, started, kind, len(prep.prompt_ids))
                if prep.checked is None:
                    yield delta
                else:
                    if (checked := prep.checked.add(delta)) is not None:
                        yield checked
                    if prep.checked.done:  # the check ended every reply: stop generating
                        break

    async def _generate(
        self, target: Target, prompt_ids: list[int], options: SamplingOptions, request_id: str
    ) -> AsyncGenerator[Delta, None]:
        """The engine's deltas on the target's adapter (or the base model). Stopped early, it
        aborts the engine request; either way it collects adapters no longer in use. Iterate it
        under `aclosing`, so that this happens when the caller stops, not when it is collected."""
        finished = False
        try:
            with self._adapter(target) as ref:
                async for delta in self.engine.generate(prompt_ids, options, request_id, ref):
                    yield delta
            finished = True
        finally:
            # Shielded: on a client disconnect this runs inside a cancelled scope.
            with anyio.CancelScope(shield=True):
                if not finished:
                    await self.engine.abort(request_id)
                await self.adapters.collect()

    @contextmanager
    def _adapter(self, target: Target) -> Iterator[AdapterRef | None]:
        """The adapter version a request runs on (None: the base model), held while it runs."""
        if target.adapter is None:
            yield self.adapters.base()
            return
        with self.adapters.use(target.adapter) as ref:
            yield ref

    async def start(self, prep: Prepared) -> AsyncIterator[Delta]:
        """`stream` with its first delta already received: a request the engine refuses fails
        here, before a streamed response has sent its headers."""
        deltas = cast(AsyncGenerator[Delta, None], self.stream(prep))
        try:
            first: Delta | None = await anext(deltas)
        except StopAsyncIteration:
            first = None
        except BaseException:
            await deltas.aclose()
            raise
        return _prepend(first, deltas)

    def _observe(self, delta: Delta, first: bool, started: float, kind: str, prompt: int) -> bool:
        if first:
            self.metrics.ttft.labels(kind=kind).observe(time.perf_counter() - started)
        if delta.cached_tokens is not None:
            self.metrics.tokens.labels(type="prompt_cached").inc(delta.cached_tokens)
            self.metrics.cached_share.labels(kind=kind).observe(delta.cached_tokens / max(prompt, 1))
        self.metrics.tokens.labels(type="completion").inc(delta.tokens)
        return False

    async def run(self, prep: Prepared) -> Result:
        result = Result(prep, [Choice() for _ in range(prep.options.n)])
        async for delta in self.stream(prep):
            choice = result.choices[delta.index]
            choice.text += delta.text
            choice.tokens += delta.tokens
            choice.finish_reason = delta.finish_reason or choice.finish_reason
            choice.logprobs.extend(delta.logprobs)
            if delta.cached_tokens is not None:
                result.cached_tokens = delta.cached_tokens
        return result


async def _prepend(first: Delta | None, rest: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    if first is None:
        return
    yield first
    async for delta in rest:
        yield delta
