"""Generated choices shaped as OpenAI responses and stream events: content or tool calls
(serving.structured), logprobs in the chat or the completions shape, `sources`, and the
`ragtune` extension for where `model: auto` went. The routes hand over; nothing here generates.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ragtune.serving.engine import Delta, TokenLogprob
from ragtune.serving.prepared import Prepared, Result, usage_of
from ragtune.serving.responses import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionResponse,
    ChoiceLogprobs,
    CompletionChoice,
    CompletionLogprobs,
    CompletionResponse,
    TopLogprob,
    new_id,
    now,
)
from ragtune.serving.responses import TokenLogprob as TokenLogprobOut
from ragtune.serving.structured import ToolCall
from ragtune.serving.toolcalls import AutoStream, new_call_id, read_calls


def model_name(prep: Prepared, requested: str) -> str:
    """The model a response names: for `auto`, the one chosen (serving.routing)."""
    return prep.route.chosen if prep.route else requested


def extension(prep: Prepared) -> dict[str, Any]:
    """The `ragtune` extension field saying where `model: auto` went, with its scores."""
    return {"ragtune": {"route": prep.route.to_json()}} if prep.route else {}


def _dump(response: ChatCompletionResponse | CompletionResponse, prep: Prepared) -> dict[str, Any]:
    """The response as JSON; `ragtune` only when there is something to say."""
    return response.model_dump(exclude={"ragtune"}) | extension(prep)


def chat_response(result: Result, model: str, parser: Any) -> dict[str, Any]:
    prep = result.prepared
    choices = []
    for i, c in enumerate(result.choices):
        content, calls = read_calls(prep.plan, c.text, parser) if prep.plan.tools else (c.text, [])
        choices.append(
            ChatChoice(
                index=i,
                message=AssistantMessage(content=content, tool_calls=calls),
                finish_reason="tool_calls" if calls else c.finish_reason,
                logprobs=_chat_logprobs(c.logprobs) if prep.options.logprobs is not None else None,
            )
        )
    response = ChatCompletionResponse(
        id=new_id("chatcmpl"), model=model, choices=choices, usage=result.usage, sources=prep.sources
    )
    return _dump(response, prep)


def completion_response(result: Result, model: str, echo: str | None) -> dict[str, Any]:
    prep = result.prepared
    choices = [
        CompletionChoice(
            index=i,
            text=(echo or "") + c.text,
            finish_reason=c.finish_reason,
            logprobs=_completion_logprobs(c.logprobs, len(echo or ""))
            if prep.options.logprobs is not None
            else None,
        )
        for i, c in enumerate(result.choices)
    ]
    response = CompletionResponse(
        id=new_id("cmpl"), model=model, choices=choices, usage=result.usage, sources=prep.sources
    )
    return _dump(response, prep)


def _chat_logprobs(tokens: list[TokenLogprob] | tuple[TokenLogprob, ...]) -> ChoiceLogprobs:
    return ChoiceLogprobs(
        content=[
            TokenLogprobOut(
                token=t.token,
                logprob=t.logprob,
                bytes=list(t.token.encode()),
                top_logprobs=[TopLogprob(token=s, logprob=lp, bytes=list(s.encode())) for s, lp in t.top],
            )
            for t in tokens
        ]
    )


def _completion_logprobs(
    tokens: list[TokenLogprob] | tuple[TokenLogprob, ...], offset: int = 0
) -> CompletionLogprobs:
    out = CompletionLogprobs()
    for t in tokens:
        out.tokens.append(t.token)
        out.token_logprobs.append(t.logprob)
        out.top_logprobs.append(dict(t.top) if t.top else None)
        out.text_offset.append(offset)
        offset += len(t.token)
    return out


class _ChoiceStream:
    """One choice of a streamed chat reply, as delta events under the request's plan: text as
    content; a named function's arguments as they come; `required` calls and `auto` calls (after
    the family's marker) held and sent whole when the choice ends."""

    def __init__(self, prep: Prepared, index: int, parser: Any):
        self.plan = prep.plan
        self.index = index
        self.parser = parser
        self.text = ""
        self.call_id = new_call_id() if self.plan.tools == "named" else None
        self.opened = False
        self.auto = AutoStream() if self.plan.tools == "auto" else None

    def feed(self, text: str) -> dict[str, Any] | None:
        self.text += text
        if self.plan.tools == "named":
            call: dict[str, Any] = {"index": 0, "function": {"arguments": text}}
            if not self.opened:
                call |= {"id": self.call_id, "type": "function"}
                call["function"]["name"] = self.plan.function
                self.opened = True
            return {"tool_calls": [call]}
        if self.plan.tools == "required":
            return None
        out = self.auto.feed(text) if self.auto else text
        return {"content": out} if out else None

    def finish(self, reason: str | None) -> tuple[dict[str, Any] | None, str | None]:
        """The last delta (held text or calls) and the finish reason."""
        if self.plan.tools == "named":
            return None, "tool_calls" if self.opened and reason == "stop" else reason
        if self.plan.tools not in ("required", "auto"):
            return None, reason
        if self.auto and not self.auto.calling:
            rest = self.auto.text[self.auto.sent :]
            return ({"content": rest} if rest else None), reason
        content, calls = read_calls(self.plan, self.text, self.parser)
        if not calls:
            held = self.text[self.auto.sent :] if self.auto else content
            return ({"content": held} if held else None), reason
        delta: dict[str, Any] = {"tool_calls": [_call_delta(i, c) for i, c in enumerate(calls)]}
        return delta, "tool_calls"


def _call_delta(i: int, call: ToolCall) -> dict[str, Any]:
    return {"index": i, **call.model_dump()}


async def chat_events(
    deltas: AsyncIterator[Delta], prep: Prepared, *, model: str, include_usage: bool, parser: Any
) -> AsyncIterator[dict[str, Any]]:
    head = {"id": new_id("chatcmpl"), "object": "chat.completion.chunk", "created": now(), "model": model}
    cached: int | None = None
    logprobs = prep.options.logprobs is not None
    streams = [_ChoiceStream(prep, i, parser) for i in range(prep.options.n)]
    for i in range(prep.options.n):
        first: dict[str, Any] = {
            **head,
            "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
        }
        if i == 0:
            first["sources"] = [s.model_dump() for s in prep.sources]
            first.update(extension(prep))
        yield first
    completion = 0
    async for d in deltas:
        completion += d.tokens
        cached = d.cached_tokens if d.cached_tokens is not None else cached
        stream = streams[d.index]
        delta = stream.feed(d.text) if d.text else None
        if delta or (logprobs and d.logprobs):
            choice: dict[str, Any] = {"index": d.index, "delta": delta or {}, "finish_reason": None}
            if logprobs:
                choice["logprobs"] = _chat_logprobs(d.logprobs).model_dump()
            yield {**head, "choices": [choice]}
        if d.finish_reason:
            last, reason = stream.finish(d.finish_reason)
            yield {**head, "choices": [{"index": d.index, "delta": last or {}, "finish_reason": reason}]}
    if include_usage:
        yield {**head, "choices": [], "usage": usage_of(prep, completion, cached).model_dump()}


async def completion_events(
    deltas: AsyncIterator[Delta], prep: Prepared, *, model: str, include_usage: bool, echo: str | None
) -> AsyncIterator[dict[str, Any]]:
    head = {"id": new_id("cmpl"), "object": "text_completion", "created": now(), "model": model}
    completion = 0
    first = True
    logprobs = prep.options.logprobs is not None
    echoed: set[int] = set()
    cached: int | None = None
    async for d in deltas:
        completion += d.tokens
        cached = d.cached_tokens if d.cached_tokens is not None else cached
        text = d.text
        if echo and d.index not in echoed:  # each choice's first text starts with the prompt
            text = echo + text
            echoed.add(d.index)
        choice = {
            "index": d.index,
            "text": text,
            "finish_reason": d.finish_reason,
            "logprobs": _completion_logprobs(d.logprobs).model_dump() if logprobs else None,
        }
        event: dict[str, Any] = {**head, "choices": [choice]}
        if first:
            event["sources"] = [s.model_dump() for s in prep.sources]
            event.update(extension(prep))
            first = False
        yield event
    if include_usage:
        yield {**head, "choices": [], "usage": usage_of(prep, completion, cached).model_dump()}
