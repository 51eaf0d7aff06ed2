"""OpenAI compatibility as clients lean on it: structured outputs, tools, logprobs, logit_bias,
and no silent ignores; through the `openai` SDK and LangChain against the live server (the real
vLLM engine on the real 135M model). Fields and checks after vLLM's own OpenAI server tests."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import jsonschema
import pytest
from pydantic import BaseModel, Field

from tests.conftest import LiveServer

pytestmark = pytest.mark.engine

BASE = "smollm2-135m-instruct"
PROMPTS = [
    "What is the capital of France?",
    "Name a large city in Japan.",
    "Which city is the capital of Italy?",
    "Tell me a big city in Germany.",
    "What is the largest city in the USA?",
    "Where is the Eiffel Tower?",
    "Name the capital of Spain.",
    "Which city hosts the Colosseum?",
    "What is the capital of Canada?",
    "Name a city in Brazil.",
]
BAD_SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 3}}}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit", "days"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
NAMED = {"type": "function", "function": {"name": "get_weather"}}


class City(BaseModel):
    name: str = Field(description="the city")
    country: str


def _many(fn, items):  # noqa: ANN001, ANN202 - concurrent requests batch in the engine
    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(fn, items))


@pytest.fixture(scope="module")
def atlas(live_server: LiveServer) -> str:
    """A collection of city facts for requests with retrieval."""
    http = httpx.Client(base_url=live_server.url, timeout=120)
    assert http.post("/v1/collections", json={"name": "compat-atlas"}).status_code in (201, 409)
    docs = [
        {"id": "fr", "text": "Paris is the capital of France and its largest city."},
        {"id": "it", "text": "Rome is the capital of Italy; the Colosseum stands there."},
        {"id": "jp", "text": "Tokyo is the largest city in Japan."},
    ]
    assert http.post("/v1/collections/compat-atlas/documents", json={"documents": docs}).status_code == 200
    return "compat-atlas"


@pytest.mark.parametrize("rag", [False, True], ids=["no-retrieval", "retrieval"])
def test_parse_returns_the_pydantic_object_on_ten_prompts(
    live_server: LiveServer, atlas: str, rag: bool
) -> None:
    client = live_server.client()
    extra = {"rag": {"collection": atlas, "top_k": 2}} if rag else None

    def ask(prompt: str):  # noqa: ANN202
        return client.chat.completions.parse(
            model=BASE,
            messages=[{"role": "user", "content": prompt}],
            response_format=City,
            temperature=0,
            max_tokens=64,
            extra_body=extra,
        )

    replies = _many(ask, PROMPTS)
    parsed = [r.choices[0].message.parsed for r in replies]
    texts = [r.choices[0].message.content for r in replies]
    # Parsed on every prompt (what the 135M model puts in the fields is its own affair).
    assert all(isinstance(p, City) for p in parsed), texts
    assert all(r.choices[0].finish_reason == "stop" for r in replies), texts
    sources = [r.model_extra["sources"] for r in replies]
    assert all(sources) if rag else not any(sources)  # retrieval still feeds the prompt and `sources`


def test_named_tool_choice_gives_valid_calls_on_ten_prompts(live_server: LiveServer) -> None:
    client = live_server.client()
    schema = WEATHER["function"]["parameters"]

    def ask(city: str):  # noqa: ANN202
        return client.chat.completions.create(
            model=BASE,
            messages=[{"role": "user", "content": f"What will the weather be in {city} this week?"}],
            tools=[WEATHER, TIME],
            tool_choice=NAMED,
            temperature=0,
            max_tokens=64,
        )

    cities = ["Paris", "Rome", "Tokyo", "Berlin", "Madrid", "Oslo", "Lima", "Cairo", "Delhi", "Quito"]
    for reply in _many(ask, cities):
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        (call,) = choice.message.tool_calls
        assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), schema)


def test_streamed_named_call_matches_the_plain_one(live_server: LiveServer) -> None:
    client = live_server.client()
    ask = {
        "model": BASE,
        "messages": [{"role": "user", "content": "Weather in Oslo for three days?"}],
        "tools": [WEATHER],
        "tool_choice": NAMED,
        "temperature": 0,
        "max_tokens": 64,
    }
    plain = client.chat.completions.create(**ask).choices[0].message.tool_calls[0]
    arguments, names, ids, finish = "", [], set(), None
    for chunk in client.chat.completions.create(**ask, stream=True):
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                arguments += call.function.arguments or ""
                names += [call.function.name] if call.function.name else []
                ids |= {call.id} if call.id else set()
            finish = choice.finish_reason or finish
    assert arguments == plain.function.arguments
    assert names == ["get_weather"] and len(ids) == 1 and finish == "tool_calls"


def test_required_tool_choice_calls_listed_tools(live_server: LiveServer) -> None:
    client = live_server.client()
    ask = {
        "model": BASE,
        "messages": [{"role": "user", "content": "What time is it in Lima?"}],
        "tools": [WEATHER, TIME],
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "temperature": 0,
        "max_tokens": 80,
    }
    reply = client.chat.completions.create(**ask)
    calls = reply.choices[0].message.tool_calls
    assert len(calls) == 1 and reply.choices[0].finish_reason == "tool_calls"  # parallel_tool_calls=False
    tool = {"get_weather": WEATHER, "get_time": TIME}[calls[0].function.name]
    jsonschema.validate(json.loads(calls[0].function.arguments), tool["function"]["parameters"])
    streamed = client.chat.completions.create(**ask, stream=True)
    got = [c for chunk in streamed for choice in chunk.choices for c in choice.delta.tool_calls or []]
    assert [(c.function.name, c.function.arguments) for c in got] == [
        (calls[0].function.name, calls[0].function.arguments)
    ]


def test_a_tool_result_in_the_conversation_is_answered(live_server: LiveServer) -> None:
    client = live_server.client()
    first = client.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "What time is it in Lima?"}],
        tools=[TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        temperature=0,
        max_tokens=32,
    )
    message = first.choices[0].message
    conversation = [
        {"role": "user", "content": "What time is it in Lima?"},
        message.model_dump(exclude_none=True),  # sent back as the SDK returned it
        {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "It is 14:35 in Lima."},
    ]
    answer = client.chat.completions.create(
        model=BASE, messages=conversation, tools=[TIME], tool_choice="none", temperature=0, max_tokens=24
    )
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    # The tool's reply reached the prompt: the conversation costs more than its first turn alone.
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens


def test_logprobs_have_the_requested_alternatives(live_server: LiveServer) -> None:
    client = live_server.client()
    reply = client.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "Say hello."}],
        logprobs=True,
        top_logprobs=3,
        temperature=0,
        max_tokens=6,
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    assert "".join(t.token for t in content) == reply.choices[0].message.content
    for token in content:
        assert len(token.top_logprobs) == 3 and token.logprob <= 0
        assert token.top_logprobs[0].logprob >= token.top_logprobs[-1].logprob
        # greedy: the most likely one (in bf16 two tokens can tie; vLLM's argmax and its top-k
        # may then name different ones of them)
        assert token.logprob == token.top_logprobs[0].logprob, (token.token, token.top_logprobs)
        assert bytes(token.bytes) == token.token.encode()
    completion = client.completions.create(
        model=BASE, prompt="The capital of France is", logprobs=2, echo=True, temperature=0, max_tokens=4
    )
    lp = completion.choices[0].logprobs
    assert completion.choices[0].text.startswith("The capital of France is")
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 4
    assert all(len(top) == 2 for top in lp.top_logprobs)
    streamed = client.chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "Say hello."}],
        logprobs=True,
        top_logprobs=3,
        temperature=0,
        max_tokens=6,
        stream=True,
    )
    tokens = [t.token for chunk in streamed for c in chunk.choices if c.logprobs for t in c.logprobs.content]
    assert tokens == [t.token for t in content]


def test_logit_bias_is_honoured(live_server: LiveServer, base_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    (banana,) = tokenizer.encode(" banana", add_special_tokens=False)
    reply = live_server.client().chat.completions.create(
        model=BASE,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        logit_bias={str(banana): 100},
        temperature=0,
        max_tokens=3,
    )
    assert reply.choices[0].message.content == " banana" * 3


def test_json_object_and_schema_on_completions(live_server: LiveServer) -> None:
    http = httpx.Client(base_url=live_server.url, timeout=120)
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    body = {"model": BASE, "prompt": "The capital of France, as JSON:", "temperature": 0, "max_tokens": 40}
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    reply = http.post("/v1/completions", json={**body, "response_format": fmt}).json()
    jsonschema.validate(json.loads(reply["choices"][0]["text"]), schema)
    chat = http.post(
        "/v1/chat/completions",
        json={
            "model": BASE,
            "messages": [{"role": "user", "content": "Give the city and country of the Eiffel Tower."}],
            "response_format": {"type": "json_object"},
            "temperature": 0,
            "max_tokens": 120,
        },
    ).json()
    assert chat["choices"][0]["finish_reason"] == "stop", chat
    assert isinstance(json.loads(chat["choices"][0]["message"]["content"]), dict)


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("foo", 1, "invalid_request"),
        ("store", True, "unsupported_parameter"),
        ("functions", [{"name": "f"}], "unsupported_parameter"),
        ("reasoning_effort", "high", "unsupported_parameter"),
        ("top_logprobs", 2, "invalid_request"),  # without logprobs: true
        ("logit_bias", {"99999999": 5}, None),  # outside the vocabulary
        ("tool_choice", "required", None),  # with no tools
        ("tools", [WEATHER], "tool_parser_missing"),  # auto, and this template has no tool format
        (
            "response_format",
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 3}}},
            None,
        ),
        ("tools", [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}], None),
    ],
)
def test_what_is_not_honoured_is_refused_naming_the_field(
    live_server: LiveServer, field: str, value: object, code: str | None
) -> None:
    body = {"model": BASE, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, field: value}
    resp = httpx.post(f"{live_server.url}/v1/chat/completions", json=body, timeout=120)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert code is None or error["code"] == code, error
    assert error["param"] == field or field in error["message"], error


def test_a_schema_under_grounding_is_refused(live_server: LiveServer, atlas: str) -> None:
    body = {
        "model": BASE,
        "messages": [{"role": "user", "content": "Capital of Italy?"}],
        "rag": {"collection": atlas, "grounding": "extractive"},
        "response_format": {"type": "json_object"},
    }
    resp = httpx.post(f"{live_server.url}/v1/chat/completions", json=body, timeout=120)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "response_format"
    assert "grounding" in resp.json()["error"]["message"]


def test_langchain_structured_output_and_tools(live_server: LiveServer) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model=BASE,
        base_url=f"{live_server.url}/v1",
        api_key="unused",
        temperature=0,
        max_tokens=64,
        max_retries=0,
    )
    city = llm.with_structured_output(City).invoke("Which city is the capital of Italy?")
    assert isinstance(city, City)
    message = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke("Weather in Rome for two days?")
    (call,) = message.tool_calls
    assert call["name"] == "get_weather"
    jsonschema.validate(call["args"], WEATHER["function"]["parameters"])
    chunks = list(llm.stream("Say hello."))
    assert "".join(str(c.content) for c in chunks)
