"""Structured outputs and tool calls: the OpenAI request types, and the constraint each asks of
the engine (a JSON schema for vLLM's structured outputs); serving.toolcalls reads the replies.

`response_format` json_object / json_schema and `tool_choice` "required" or a named function hold
on any model: decoding is constrained to the schema (xgrammar through vLLM). `tool_choice` "auto"
lets the model decide, so the reply must be read in the model family's own tool-call format: the
chat template is given the tools, and vLLM's tool parser for that family (`hermes` for Qwen2.5,
found from the template, or `serving.tool_parser`) turns its reply into `tool_calls`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ragtune.core.errors import RagtuneError

FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"
_EMPTY_OBJECT: dict[str, Any] = {"type": "object", "properties": {}}
HERMES_START = "<tool_call>"  # the marker of Qwen2.5's (Hermes) tool-call format


class JsonSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """`text` (free), `json_object` (any JSON object) or `json_schema` (JSON that fits a schema)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is required with type 'json_schema', and only with it")
        return self


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDef


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=FUNCTION_NAME)


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="the function's arguments, a JSON object as text")


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ToolsUnsupported(RagtuneError):
    code = "tool_parser_missing"


@dataclass(frozen=True)
class Plan:
    """What a chat request asks of structured output: `schema` (JSON text) or `json_object`
    constrain the reply; `tools` says how it is read: "named" (the reply is that function's
    arguments), "required" (a JSON list of calls), "auto" (the family's parser), or None."""

    schema: str | None = None
    json_object: bool = False
    tools: Literal["named", "required", "auto"] | None = None
    function: str | None = None  # the named function
    names: tuple[str, ...] = ()  # "auto": the tools' names, for replies that call one bare

    @property
    def constrained(self) -> bool:
        return self.schema is not None or self.json_object


def plan(
    response_format: ResponseFormat | None,
    tools: list[ToolDef] | None,
    tool_choice: ToolChoice | None,
    parallel_tool_calls: bool | None,
) -> Plan:
    """The plan for these request fields; a RagtuneError naming the field when they disagree."""
    choice = tool_choice if tool_choice is not None else ("auto" if tools else "none")
    if choice != "none" and not tools:
        raise RagtuneError("tool_choice needs tools: the request lists none", param="tool_choice")
    wants_json = response_format is not None and response_format.type != "text"
    if wants_json and choice in ("required", "auto") or wants_json and isinstance(choice, NamedToolChoice):
        raise RagtuneError(
            "response_format and tool calls cannot both shape one reply: send tool_choice 'none' "
            "with a response_format, or no response_format with tools",
            param="response_format",
        )
    if isinstance(choice, NamedToolChoice):
        named = {t.function.name: t for t in tools or []}
        tool = named.get(choice.function.name)
        if tool is None:
            raise RagtuneError(
                f"tool_choice names function {choice.function.name!r}, which is not in tools "
                f"({', '.join(named) or 'none'})",
                param="tool_choice",
            )
        schema = _checked(_parameters(tool.function), "tools")
        return Plan(schema=schema, tools="named", function=tool.function.name)
    if choice == "required":
        return Plan(
            schema=_checked(calls_schema(tools or [], parallel_tool_calls), "tools"), tools="required"
        )
    if choice == "auto":
        return Plan(tools="auto", names=tuple(t.function.name for t in tools or []))
    if response_format is None or response_format.type == "text":
        return Plan()
    if response_format.type == "json_object":
        return Plan(json_object=True)
    assert response_format.json_schema is not None
    return Plan(schema=_checked(response_format.json_schema.schema_ or {"type": "object"}, "response_format"))


def check_shape(shape: Plan, *, parser: str | None, grounding: str, floor: float) -> None:
    """Refuse what cannot be done as asked: `auto` tool calls on a model whose reply format for
    them is unknown (no `parser`); a schema or tool call under grounding that holds the reply to
    its sources (quotations, their words, or the abstention sentence below the relevance floor)."""
    if shape.tools == "auto" and parser is None:
        raise ToolsUnsupported(
            "tool_choice 'auto' needs a model whose chat template has a tool-call format with a "
            "parser; this model's has none: send tool_choice 'required' or a named function "
            "(constrained to the tools' schemas on any model), or set serving.tool_parser",
            param="tool_choice",
        )
    if not (shape.constrained or shape.tools) or (grounding == "free" and not floor):
        return
    what = "tool calls" if shape.tools else "response_format"
    if grounding != "free":
        held = f"rag.grounding {grounding!r} (from the request or the model's profile)"
        fix = "send rag.grounding 'free'"
    else:
        held = f"the profile's relevance floor (min_similarity {floor})"
        fix = "ask a model whose profile sets no floor, or retrieve nothing (rag: false)"
    raise RagtuneError(
        f"{what} cannot combine with {held}: grounding holds the reply to its sources, a schema "
        f"to JSON; {fix}, or leave out the schema",
        param="tool_choice" if shape.tools else "response_format",
    )


def _parameters(function: FunctionDef) -> dict[str, Any]:
    return function.parameters or _EMPTY_OBJECT


def calls_schema(tools: list[ToolDef], parallel_tool_calls: bool | None) -> dict[str, Any]:
    """`tool_choice: required`: a JSON list of one call or more, each the name of one of the
    tools with arguments that fit its parameters (the shape vLLM's server constrains to)."""
    one_of = [
        {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": [t.function.name]},
                "parameters": _parameters(t.function),
            },
            "required": ["name", "parameters"],
        }
        for t in tools
    ]
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": one_of}}
    if parallel_tool_calls is False:
        schema["maxItems"] = 1
    return schema


def _checked(schema: dict[str, Any], param: str) -> str:
    """The schema as JSON text, once xgrammar (the engine's backend) has read it: a schema it
    cannot follow is the request's error, named, not the engine's."""
    text = json.dumps(schema, separators=(",", ":"))  # key order kept: fields come in that order
    try:
        import xgrammar
    except ImportError:  # a remote engine's host checks it there
        return text
    try:
        xgrammar.Grammar.from_json_schema(text, any_whitespace=False)
    except Exception as exc:  # xgrammar raises RuntimeError with its C++ location first
        reason = str(exc).split(": ", 1)[-1]
        raise RagtuneError(
            f"{param} holds a JSON schema the engine cannot follow: {reason}", param=param
        ) from None
    return text


def tools_for_template(tools: list[ToolDef]) -> list[dict[str, Any]]:
    """Tools as chat templates take them (OpenAI's shape, parameters always an object)."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.function.name,
                "description": t.function.description or "",
                "parameters": _parameters(t.function),
            },
        }
        for t in tools
    ]


def instruct(response_format: ResponseFormat | None, tools: list[ToolDef] | None) -> str | None:
    """What the system turn tells the model of the reply's shape, as OpenAI's API tells its own
    models: the schema a reply must fit (decoding holds it to the schema; this tells it what the
    fields mean), and the functions when the chat template cannot show them itself."""
    parts = []
    if response_format is not None and response_format.json_schema is not None:
        schema = json.dumps(response_format.json_schema.schema_ or {"type": "object"}, ensure_ascii=False)
        parts.append(f"Reply with a JSON object that fits this JSON schema:\n{schema}")
    elif response_format is not None and response_format.type == "json_object":
        parts.append("Reply with a JSON object.")
    if tools:
        listed = json.dumps(tools_for_template(tools), ensure_ascii=False)
        parts.append(f"You can call these functions; a call is a JSON object of its arguments.\n{listed}")
    return "\n\n".join(parts) or None


def with_instruction(messages: list[dict[str, Any]], instruction: str) -> list[dict[str, Any]]:
    """`messages` with `instruction` at the end of their system turn (one is added if none)."""
    if messages and messages[0]["role"] == "system":
        first = {**messages[0], "content": f"{messages[0]['content']}\n\n{instruction}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": instruction}, *messages]


def template_message(
    role: str, text: str, calls: list[ToolCall] | None, call_id: str | None, *, formats_tools: bool
) -> dict[str, Any]:
    """One message as the chat template takes it. A template that formats tools gets an assistant's
    calls (arguments as objects) and a tool message's call id; for one that does not, the calls
    are written into the assistant's text in the Hermes form, so the model still sees them."""
    msg: dict[str, Any] = {"role": role, "content": text}
    if calls and formats_tools:
        msg["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": _args(c)}}
            for c in calls
        ]
    elif calls:
        written = [
            f"{HERMES_START}\n{json.dumps({'name': c.function.name, 'arguments': _args(c)})}\n</tool_call>"
            for c in calls
        ]
        msg["content"] = "\n".join([text, *written] if text else written)
    if call_id and formats_tools:
        msg["tool_call_id"] = call_id
    return msg


def _args(call: ToolCall) -> Any:
    try:
        return json.loads(call.function.arguments)
    except ValueError:
        return call.function.arguments


def template_formats_tools(chat_template: str | None) -> bool:
    return bool(chat_template) and "tools" in str(chat_template)


def template_parser(chat_template: str | None) -> str | None:
    """The vLLM tool parser for a chat template's tool-call format, when one is recognised."""
    if chat_template and HERMES_START in str(chat_template):
        return "hermes"
    return None
