"""Replies read back as tool calls (serving.structured makes the plan): a constrained reply's
JSON, or an `auto` reply in its model family's format through vLLM's tool parser; and the
stream that holds a call back until it is whole."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from ragtune.serving.structured import HERMES_START, FunctionCall, Plan, ToolCall, ToolsUnsupported


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def read_calls(plan: Plan, text: str, parser: Any | None) -> tuple[str | None, list[ToolCall]]:
    """A finished reply as (content, tool calls) under `plan`. A constrained reply that is cut
    (max_tokens) is no JSON: it stays content, with no calls, as vLLM's server returns it."""
    if plan.tools == "named":
        assert plan.function is not None
        if not _is_json(text):
            return text, []
        return None, [ToolCall(id=new_call_id(), function=FunctionCall(name=plan.function, arguments=text))]
    if plan.tools == "required":
        try:
            items = json.loads(text)
        except ValueError:
            return text, []
        calls = [
            ToolCall(
                id=new_call_id(),
                function=FunctionCall(
                    name=item["name"], arguments=json.dumps(item["parameters"], ensure_ascii=False)
                ),
            )
            for item in items
        ]
        return None, calls
    if plan.tools == "auto" and parser is not None:
        info = parser.extract_tool_calls(text, None)
        if info.tools_called:
            calls = [
                ToolCall(
                    id=new_call_id(),
                    function=FunctionCall(name=c.function.name, arguments=c.function.arguments),
                )
                for c in info.tool_calls
            ]
            return (info.content or None), calls
        bare = _bare_calls(text, plan.names)
        if bare:
            return None, bare
    return text, []


_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)


def _bare_calls(text: str, names: tuple[str, ...]) -> list[ToolCall]:
    """A reply that is nothing but a call (or a list of calls) without the family's markers:
    Qwen2.5-Coder-0.5B answers `{"name": "get_weather", "arguments": {...}}` bare, where its
    template asks for <tool_call> tags, and the 1.5B in a ```json fence. Only a listed tool's name
    with object arguments counts."""
    fenced = _FENCE.fullmatch(text.strip())
    try:
        value = json.loads(fenced.group(1) if fenced else text)
    except ValueError:
        return []
    items = value if isinstance(value, list) else [value]
    ok = all(
        isinstance(i, dict) and i.get("name") in names and isinstance(i.get("arguments"), dict) for i in items
    )
    if not items or not ok:
        return []
    return [
        ToolCall(
            id=new_call_id(),
            function=FunctionCall(name=i["name"], arguments=json.dumps(i["arguments"], ensure_ascii=False)),
        )
        for i in items
    ]


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


class AutoStream:
    """Streams an `auto` reply's text as content until the family's tool-call marker appears;
    from there the rest is held and read as calls when the reply ends. Text that could still be
    the start of the marker is held back until it cannot, and so is a reply that opens with "{",
    "[" or a code fence (a call without its markers, `_bare_calls`): it is content or calls once
    it ends."""

    def __init__(self, marker: str = HERMES_START):
        self.marker = marker
        self.text = ""
        self.sent = 0
        self.calling = False

    def feed(self, new: str) -> str:
        """The content that may go out now."""
        self.text += new
        if self.calling:
            return ""
        if not self.sent and self.text.lstrip()[:1] in ("{", "[", "`"):
            self.calling = True
            return ""
        at = self.text.find(self.marker, self.sent)
        if at >= 0:
            self.calling = True
            out, self.sent = self.text[self.sent : at], at
            return out
        keep = _partial_overlap(self.text, self.marker)
        out = self.text[self.sent : len(self.text) - keep]
        self.sent = len(self.text) - keep
        return out


def _partial_overlap(text: str, marker: str) -> int:
    """How many of `text`'s last characters are the start of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


def load_parser(name: str, tokenizer: Any) -> Any:
    """vLLM's tool parser `name` over the model's tokenizer."""
    from vllm.tool_parsers import ToolParserManager

    try:
        cls = ToolParserManager.get_tool_parser(name)
    except KeyError:
        known = ", ".join(sorted(ToolParserManager.list_registered()))
        raise ToolsUnsupported(f"no tool parser named {name!r}; vLLM's parsers: {known}") from None
    return cls(tokenizer)
