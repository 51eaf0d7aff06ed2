"""Scaling out for real, on loopback: vLLM's own OpenAI server as the engine
(`RAGTUNE_ENGINE__URL`), two ragtune replicas in front of it sharing one PostgreSQL database.

One vLLM server for the module (the replicas import no vLLM and start in seconds); PostgreSQL
is the throwaway server of the store tests.
"""
# ruff: noqa: F811  (the postgres fixture is imported, then named as an argument)

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pg_server
import pytest
from store_fixtures import postgres  # noqa: F401

from bench.serving_servers import Server, base_env, free_port, raw_vllm
from ragtune.serving.settings import EngineSettings
from tests.conftest import LiveServer, make_lora_adapter, quoted_source, wait_until

pytestmark = pytest.mark.engine

BASE = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
POLL_S = 0.2  # the replicas' registry poll, short so the test waits little


@pytest.fixture(scope="module")
def vllm_server(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("vllm")
    server = raw_vllm(base_model, EngineSettings(), workdir=work, model_name=BASE)
    server.env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    server.start(timeout=900)
    yield server
    server.stop()


Replica = Callable[..., Server]


@pytest.fixture(scope="module")
def replica(
    vllm_server: Server, base_model: Path, adapters_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replica]:
    """Start a ragtune replica (`ragtune serve`) on the vLLM server; all are stopped at the end."""
    started: list[Server] = []

    def start(name: str, store_url: str | None, **env: str) -> Server:
        work = tmp_path_factory.mktemp(name)
        server = Server(
            "ragtune",
            [
                sys.executable,
                "-m",
                "ragtune",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port := free_port()),
            ],
            {
                **base_env(),
                "RAGTUNE_ENGINE__URL": f"{vllm_server.url}/v1",
                "RAGTUNE_MODELS_DIR": str(base_model.parent),
                "RAGTUNE_ADAPTERS_DIR": str(adapters_dir),
                "RAGTUNE_INDEXES_DIR": str(work / "indexes"),
                "RAGTUNE_SERVING__REGISTRY_POLL_S": str(POLL_S),
                **({"RAGTUNE_RETRIEVAL__STORE_URL": store_url} if store_url else {}),
                **env,
            },
            work / "ragtune.log",
            work,
            port,
            BASE,
        )
        server.start(timeout=300)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def shared_db(postgres: pg_server.Server) -> str:
    return postgres.create_database(f"r{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="module")
def pair(replica: Replica, shared_db: str) -> tuple[Server, Server]:
    return replica("replica-a", shared_db), replica("replica-b", shared_db)


def chat(server: Server, model: str, messages: list[dict], **extra: object) -> dict:
    body = {"model": model, "messages": messages, "max_tokens": 16, "temperature": 0, **extra}
    resp = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()


def engine_models(vllm_server: Server) -> list[str]:
    return [m["id"] for m in httpx.get(f"{vllm_server.url}/v1/models", timeout=10).json()["data"]]


def test_a_replica_generates_with_the_remote_engine(pair: tuple[Server, Server]) -> None:
    a, _ = pair
    log = a.log.read_text()
    assert "engine self-check passed (remote engine at" in log  # checked against transformers
    body = chat(a, BASE, FRANCE)
    assert "Paris" in body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] > 0 and body["usage"]["prompt_tokens"] > 10
    # Streaming: deltas and usage, as in-process.
    with httpx.stream(
        "POST",
        f"{a.url}/v1/chat/completions",
        json={"model": BASE, "messages": FRANCE, "max_tokens": 8, "temperature": 0, "stream": True,
              "stream_options": {"include_usage": True}},
        timeout=120,
    ) as resp:  # fmt: skip
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    assert '"completion_tokens":8' in lines[-2].replace(" ", "")
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == chat(a, BASE, FRANCE, max_tokens=8)["choices"][0]["message"]["content"]


SAME_ANSWERS = [
    ("chat", {"messages": FRANCE, "max_tokens": 24, "temperature": 0}),
    ("chat", {"messages": FRANCE, "max_tokens": 24, "temperature": 0, "stop": ["Paris"]}),
    ("chat", {"messages": FRANCE, "max_tokens": 12, "temperature": 0.9, "seed": 7, "n": 2}),
    ("completions", {"prompt": "The three primary colours are", "max_tokens": 16, "temperature": 0,
                     "min_tokens": 16, "ignore_eos": True}),
]  # fmt: skip


@pytest.mark.parametrize(("route", "body"), SAME_ANSWERS)
def test_the_remote_engine_answers_as_the_in_process_one(
    route: str, body: dict, pair: tuple[Server, Server], live_server: LiveServer
) -> None:
    """One conformance check for both engine implementations: the same request through the
    in-process engine (the session's live server) and through the remote one gives the same
    choices, finish reasons and usage (the same engine arguments, float32)."""
    a, _ = pair
    path = "/v1/chat/completions" if route == "chat" else "/v1/completions"
    answers = []
    for url in (live_server.url, a.url):
        resp = httpx.post(f"{url}{path}", json={"model": BASE, **body}, timeout=120)
        assert resp.status_code == 200, resp.text
        out = resp.json()
        choices = [
            (c["index"], c["message"]["content"] if route == "chat" else c["text"], c["finish_reason"])
            for c in out["choices"]
        ]
        # What the prefix cache held depends on each engine's history, not on the engine kind.
        usage = {k: v for k, v in out["usage"].items() if k != "prompt_tokens_details"}
        answers.append((choices, usage))
    assert answers[0] == answers[1]


def test_what_the_engine_refuses_is_the_requests_fault(vllm_server: Server) -> None:
    """A parameter only vLLM checks (ragtune's own checks come first in the server) comes back
    as EngineRejected (a 400 naming the field), not as an engine failure."""
    from ragtune.serving.engine import SamplingOptions
    from ragtune.serving.errors import EngineRejected
    from ragtune.serving.remote_engine import RemoteEngine

    async def run() -> None:
        settings = EngineSettings(url=f"{vllm_server.url}/v1")
        engine = await RemoteEngine.connect(settings, adapters_dir=Path("."))
        options = SamplingOptions(max_tokens=4, allowed_token_ids=(10**8,))
        with pytest.raises(EngineRejected) as caught:
            async for _ in engine.generate([1, 2, 3], options, "bad-1", None):
                pass
        assert caught.value.param == "allowed_token_ids" and caught.value.status_code == 400
        assert engine.max_model_len == EngineSettings().max_model_len and engine.model == BASE

    asyncio.run(run())


def test_a_document_written_through_one_replica_is_cited_by_the_other(pair: tuple[Server, Server]) -> None:
    a, b = pair
    assert httpx.post(f"{a.url}/v1/collections", json={"name": "atlas"}, timeout=60).status_code == 201
    text = "{city} is the capital of {country}. The government and parliament of {country} meets in {city}."
    docs = [
        {"id": country, "title": country, "text": text.format(city=city, country=country)}
        for country, city in [("France", "Havana"), ("Belgium", "Warsaw"), ("Denmark", "Cairo")]
    ]
    resp = httpx.post(f"{a.url}/v1/collections/atlas/documents", json={"documents": docs}, timeout=60)
    assert resp.status_code == 200, resp.text
    rag = {"collection": "atlas", "top_k": 3}
    assert chat(b, BASE, FRANCE, rag=rag)["sources"][0]["document_id"] == "France"
    # Strict grounding through the remote engine: the memorised city cannot be written.
    strict = chat(b, BASE, FRANCE, rag={**rag, "grounding": "strict"})
    answer = strict["choices"][0]["message"]["content"]
    assert "Paris" not in answer and answer.strip(), answer
    # Extractive grounding's grammar travels as vLLM's structured outputs.
    extractive = chat(b, BASE, FRANCE, rag={**rag, "grounding": "extractive"}, max_tokens=48)
    quote = extractive["choices"][0]["message"]["content"]
    assert quoted_source(quote, extractive["sources"]) is not None, quote


def test_an_adapter_loaded_through_one_replica_is_served_by_the_other(
    pair: tuple[Server, Server], vllm_server: Server, adapters_dir: Path, base_model: Path
) -> None:
    a, b = pair
    make_lora_adapter(base_model, adapters_dir / "remote-style", seed=7)
    resp = httpx.post(f"{a.url}/v1/adapters", json={"name": "rs", "path": "remote-style"}, timeout=120)
    assert resp.status_code in (200, 201), resp.text

    def served_by_b() -> bool:
        return httpx.get(f"{b.url}/v1/models/rs", timeout=10).status_code == 200

    # B checks the adapter on the shared engine as it takes it up (the canary probe). A request
    # batched with that probe is computed with other shapes, and greedy text can differ after a
    # few tokens (vLLM is not batch-invariant), so the answers are compared once B is done.
    # Its probe is a generation on the engine both share: on busy cores that alone takes seconds.
    wait_until(served_by_b, "replica B serves the adapter loaded through A", timeout=60)
    on_a = chat(a, "rs", FRANCE)["choices"][0]["message"]["content"]
    assert on_a != chat(a, BASE, FRANCE)["choices"][0]["message"]["content"]  # the adapter acts
    assert chat(b, "rs", FRANCE)["choices"][0]["message"]["content"] == on_a
    # One copy on the engine, named by content, whichever replica loaded it.
    names = [n for n in engine_models(vllm_server) if n.startswith("rs@")]
    assert len(names) == 1, engine_models(vllm_server)
    # Unloaded on the engine behind the replicas' backs: the next request loads it again.
    httpx.post(f"{vllm_server.url}/v1/unload_lora_adapter", json={"lora_name": names[0]}, timeout=30)
    assert names[0] not in engine_models(vllm_server)
    assert chat(b, "rs", FRANCE)["choices"][0]["message"]["content"] == on_a


def test_an_adapter_the_engine_lost_and_cannot_load_again_is_a_503(
    pair: tuple[Server, Server], vllm_server: Server, adapters_dir: Path, base_model: Path
) -> None:
    a, _ = pair
    folder = make_lora_adapter(base_model, adapters_dir / "short-lived", seed=8)
    resp = httpx.post(f"{a.url}/v1/adapters", json={"name": "sl", "path": "short-lived"}, timeout=120)
    assert resp.status_code == 201, resp.text
    [name] = [n for n in engine_models(vllm_server) if n.startswith("sl@")]
    shutil.rmtree(folder)  # its files gone, then the engine loses it
    httpx.post(f"{vllm_server.url}/v1/unload_lora_adapter", json={"lora_name": name}, timeout=30)
    resp = httpx.post(
        f"{a.url}/v1/chat/completions", json={"model": "sl", "messages": FRANCE, "max_tokens": 4}, timeout=60
    )
    assert resp.status_code == 503, resp.text
    assert "lost adapter 'sl' and did not load it again" in resp.json()["error"]["message"]
    assert httpx.delete(f"{a.url}/v1/adapters/sl", timeout=30).status_code == 200


def test_a_profile_put_through_one_replica_survives_a_restart_of_the_other(
    pair: tuple[Server, Server],
) -> None:
    a, b = pair
    profile = {"collection": "atlas", "top_k": 1, "system_prompt": "Answer briefly."}
    assert httpx.put(f"{a.url}/v1/profiles/atlas-qa", json=profile, timeout=30).status_code in (200, 201)
    wait_until(lambda: httpx.get(f"{b.url}/v1/profiles/atlas-qa", timeout=10).status_code == 200,
               "replica B has the profile put through A")  # fmt: skip
    b.stop()
    b.start(timeout=300)
    assert httpx.get(f"{b.url}/v1/profiles/atlas-qa", timeout=10).json()["top_k"] == 1
    assert httpx.get(f"{b.url}/v1/models/rs", timeout=10).status_code == 200  # and the adapter
    assert chat(b, "atlas-qa", FRANCE)["sources"][0]["document_id"] == "France"


def test_a_named_model_the_engine_does_not_serve_stops_the_start(replica: Replica) -> None:
    with pytest.raises(RuntimeError) as caught:
        replica("wrong-model", None, RAGTUNE_ENGINE__SERVED_MODEL="no-such-model")
    assert "serves no model 'no-such-model'" in str(caught.value)
    assert "RAGTUNE_ENGINE__SERVED_MODEL" in str(caught.value)


def test_a_lost_engine_is_a_503_and_health_says_so(pair: tuple[Server, Server], vllm_server: Server) -> None:
    """Last in the module: it stops the vLLM server."""
    a, _ = pair
    vllm_server.stop()
    resp = httpx.post(
        f"{a.url}/v1/chat/completions", json={"model": BASE, "messages": FRANCE, "max_tokens": 4}, timeout=60
    )
    assert resp.status_code == 503, resp.text
    error = resp.json()["error"]
    assert error["code"] == "engine_unhealthy" and "cannot be reached" in error["message"]
    health = httpx.get(f"{a.url}/health", timeout=30)
    assert health.status_code == 503 and "cannot be reached" in health.json()["detail"]
