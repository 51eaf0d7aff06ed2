"""Structured outputs and tool calls without the engine: the plan a request asks for, the
schemas, replies read back as calls (vLLM's Hermes parser over the real tokenizer), the stream
that holds a tool call back, and the conversation as a template without tools sees it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragtune.core.errors import RagtuneError
from ragtune.serving.structured import (
    FunctionCall,
    Plan,
    ResponseFormat,
    ToolCall,
    ToolDef,
    calls_schema,
    check_shape,
    instruct,
    plan,
    template_message,
    template_parser,
    with_instruction,
)
from ragtune.serving.toolcalls import AutoStream, load_parser, read_calls

WEATHER = ToolDef.model_validate(
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
)
CLOCK = ToolDef.model_validate({"type": "function", "function": {"name": "get_time"}})
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def _plan(**fields: object) -> Plan:
    from ragtune.serving.protocol import ChatCompletionRequest

    req = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
    )
    return plan(req.response_format, req.tools, req.tool_choice, req.parallel_tool_calls)


def test_plans_follow_the_request() -> None:
    assert _plan() == Plan()
    assert _plan(response_format={"type": "text"}) == Plan()
    assert _plan(response_format={"type": "json_object"}) == Plan(json_object=True)
    schema = {"type": "object", "properties": {"b": {"type": "string"}, "a": {"type": "integer"}}}
    shaped = _plan(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert list(json.loads(shaped.schema)["properties"]) == ["b", "a"]  # fields keep their order
    named = _plan(tools=[WEATHER.model_dump()], tool_choice=NAMED)
    assert named.tools == "named" and named.function == "get_weather"
    assert json.loads(named.schema) == WEATHER.function.parameters
    assert _plan(tools=[WEATHER.model_dump()]).tools == "auto"  # OpenAI's default with tools
    assert _plan(tools=[WEATHER.model_dump()], tool_choice="none") == Plan()


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [CLOCK.model_dump()], "tool_choice": NAMED}, "tool_choice"),
        (
            {
                "tools": [CLOCK.model_dump()],
                "tool_choice": "required",
                "response_format": {"type": "json_object"},
            },
            "response_format",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 3}}}},
            "response_format",
        ),
    ],
)
def test_plans_that_cannot_be_kept_are_refused(fields: dict, param: str) -> None:
    with pytest.raises(RagtuneError) as err:
        _plan(**fields)
    assert err.value.param == param


def test_required_calls_schema_lists_each_tool_once() -> None:
    schema = calls_schema([WEATHER, CLOCK], parallel_tool_calls=False)
    names = [item["properties"]["name"]["enum"] for item in schema["items"]["anyOf"]]
    assert names == [["get_weather"], ["get_time"]]
    assert schema["minItems"] == 1 and schema["maxItems"] == 1
    assert schema["items"]["anyOf"][1]["properties"]["parameters"] == {"type": "object", "properties": {}}
    assert "maxItems" not in calls_schema([WEATHER], parallel_tool_calls=None)


def test_replies_are_read_as_calls() -> None:
    content, calls = read_calls(
        Plan(schema="{}", tools="named", function="get_weather"), '{"city":"Oslo"}', None
    )
    assert content is None and [(c.function.name, c.function.arguments) for c in calls] == [
        ("get_weather", '{"city":"Oslo"}')
    ]
    cut, none = read_calls(Plan(schema="{}", tools="named", function="get_weather"), '{"city":"Os', None)
    assert cut == '{"city":"Os' and none == []  # a reply cut by max_tokens is no call
    listed = '[{"name":"get_time","parameters":{}},{"name":"get_weather","parameters":{"city":"Rome"}}]'
    _, calls = read_calls(Plan(schema="{}", tools="required"), listed, None)
    assert [json.loads(c.function.arguments) for c in calls] == [{}, {"city": "Rome"}]
    assert len({c.id for c in calls}) == 2


def test_hermes_replies_are_read_by_vllms_parser(base_model: Path) -> None:
    from transformers import AutoTokenizer

    parser = load_parser("hermes", AutoTokenizer.from_pretrained(base_model))
    text = 'Let me look.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lima"}}\n</tool_call>'
    content, calls = read_calls(Plan(tools="auto"), text, parser)
    assert content == "Let me look."
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Lima"})
    ]
    assert read_calls(Plan(tools="auto"), "It is sunny.", parser) == ("It is sunny.", [])
    with pytest.raises(RagtuneError, match="no tool parser named"):
        load_parser("no-such-parser", None)


def test_auto_stream_holds_back_only_what_may_be_the_marker() -> None:
    stream = AutoStream()
    sent = [
        stream.feed(piece) for piece in ["The answer", " is <", "b>.", " Now <tool", "_call>{", '"x": 1}']
    ]
    assert sent == ["The answer", " is ", "<b>.", " Now ", "", ""]
    assert stream.calling and stream.text[stream.sent :].startswith("<tool_call>")
    plain = AutoStream()
    assert "".join(plain.feed(p) for p in ["no ", "call <", "here"]) == "no call <here"


def test_template_without_tools_sees_calls_as_text() -> None:
    call = ToolCall(id="call_1", function=FunctionCall(name="get_time", arguments='{"city": "Lima"}'))
    plain = template_message("assistant", "", [call], None, formats_tools=False)
    assert plain == {
        "role": "assistant",
        "content": '<tool_call>\n{"name": "get_time", "arguments": {"city": "Lima"}}\n</tool_call>',
    }
    rich = template_message("assistant", "", [call], None, formats_tools=True)
    assert rich["tool_calls"][0]["function"]["arguments"] == {"city": "Lima"}  # templates take objects
    assert template_message("tool", "14:35", None, "call_1", formats_tools=True)["tool_call_id"] == "call_1"
    assert template_parser("{% if tools %}<tool_call>{% endif %}") == "hermes"
    assert template_parser("{{ message['content'] }}") is None


def test_the_system_turn_carries_the_schema_and_the_tools() -> None:
    fmt = ResponseFormat.model_validate(
        {"type": "json_schema", "json_schema": {"name": "c", "schema": {"type": "object"}}}
    )
    text = instruct(fmt, [CLOCK])
    assert '{"type": "object"}' in text and "get_time" in text
    assert instruct(None, None) is None
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert with_instruction(turns, "JSON.")[0]["content"] == "Be brief.\n\nJSON."
    assert with_instruction(turns[1:], "JSON.")[0] == {"role": "system", "content": "JSON."}


def test_a_bare_call_to_a_listed_tool_is_a_call(base_model: Path) -> None:
    from transformers import AutoTokenizer

    parser = load_parser("hermes", AutoTokenizer.from_pretrained(base_model))
    auto = Plan(tools="auto", names=("get_weather",))
    content, calls = read_calls(auto, '{"name": "get_weather", "arguments": {"city": "Paris"}}', parser)
    assert content is None and [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    fenced = '```json\n{\n  "name": "get_weather",\n  "arguments": {"city": "Oslo"}\n}\n```'
    assert [c.function.name for c in read_calls(auto, fenced, parser)[1]] == ["get_weather"]
    # Not a listed tool, or not a call's shape: the JSON is the answer.
    assert read_calls(auto, '{"name": "send_mail", "arguments": {}}', parser)[1] == []
    assert read_calls(auto, '{"name": "get_weather", "arguments": "Paris"}', parser)[1] == []
    assert read_calls(auto, '{"city": "Paris"}', parser) == ('{"city": "Paris"}', [])
    held = AutoStream()
    assert [held.feed(p) for p in [" {", '"name": ', "1}"]] == ["", "", ""] and held.calling


def test_a_schema_under_grounding_is_refused_naming_what_to_change() -> None:
    """The floor is a profile's calibration: the refusal says how to do without it, never to send
    a request field that is itself refused."""
    shape = plan(ResponseFormat(type="json_object"), None, None, None)
    check_shape(shape, parser=None, grounding="free", floor=0.0)  # nothing holds the reply: fine
    with pytest.raises(RagtuneError, match="rag.grounding 'free'") as strict:
        check_shape(shape, parser=None, grounding="strict", floor=0.0)
    assert strict.value.param == "response_format"
    with pytest.raises(RagtuneError, match=r"relevance floor \(min_similarity 0.67\)") as floor:
        check_shape(shape, parser=None, grounding="free", floor=0.67)
    assert "rag.min_similarity" not in floor.value.message
