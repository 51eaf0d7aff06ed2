"""Client mistakes get a 4xx in OpenAI's error format, never a 5xx (issue 10, point 4 and 8).

Through FastAPI's TestClient with the echo engine and a real library (SQLite + FAISS + MiniLM);
the engine-dependent cases are also checked once against the live server in
test_hardening_live.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ragtune.retrieval import Document, Library
from ragtune.serving.app import create_app
from ragtune.serving.engine import AdapterRef, Delta, SamplingOptions
from ragtune.serving.settings import load_settings
from tests.doubles import EchoEngine

BASE = "smollm2-135m-instruct"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def tokenizer(base_model: Path):  # noqa: ANN201
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model)


class FailingEngine(EchoEngine):
    """Answers one delta, then fails the way a dying engine does (its start-up canary passes)."""

    async def generate(
        self, prompt_ids: list[int], options: SamplingOptions, request_id: str, adapter: AdapterRef | None
    ) -> AsyncIterator[Delta]:
        yield Delta(0, "Hel", 1)
        if not request_id.startswith("canary"):
            raise RuntimeError("engine core died")


@pytest.fixture
def served(
    tmp_path: Path, base_model: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(
        models_dir=base_model.parent,
        adapters_dir=tmp_path / "adapters",
        indexes_dir=tmp_path / "indexes",
        serving={"max_request_bytes": 64 * 1024},
        retrieval={"max_document_chars": 2000},
    )
    (tmp_path / "adapters").mkdir()
    library = Library(settings.indexes_dir, settings.retrieval)
    library.create("notes").upsert([Document("a", "The cat is named Biscuit.", metadata={"n": 1})])
    engine = EchoEngine(tokenizer)
    with TestClient(create_app(settings, engine=engine, library=library)) as client:
        yield client
    library.close()


def error_of(resp: Any, status: int) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"]), body
    return body["error"]


def raw(client: TestClient, path: str, body: object) -> Any:
    """POST JSON written with ASCII escapes, so lone surrogates reach the server as JSON allows."""
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


CHAT_CASES = [
    ({"max_tokens": 4, "min_tokens": 8}, "min_tokens"),
    ({"max_completion_tokens": 4, "min_tokens": 8}, "min_tokens"),
    ({"n": 16, "temperature": 0}, "n"),
    ({"seed": 10**30}, "seed"),
    ({"seed": -(2**70)}, "seed"),
    ({"messages": [{"role": "user", "content": "\ud800"}]}, None),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "a\udfff"}]}]}, None),
    ({"rag": {"collection": "notes", "filter": {"n": 2**64}}}, "filter"),
    ({"rag": {"collection": "notes", "filter": {"n": {"$in": [-(2**70)]}}}}, "filter"),
    ({"rag": {"collection": "notes", "filter": {f"f{i}": i for i in range(3000)}}}, "filter"),
    ({"rag": {"collection": "notes", "grounding": "exact"}}, "rag.grounding"),
    ({"rag": {"collection": "notes", "top_k": 0}}, "rag.top_k"),
    # Grounding calibration is a profile's, never a request's (serving.options); the removed
    # options are refused naming them.
    ({"rag": {"collection": "notes", "min_similarity": 0.5}}, "rag.min_similarity"),
    ({"rag": {"collection": "notes", "quotes": 3}}, "rag.quotes"),
    ({"rag": {"collection": "notes", "quote_window": 0.5}}, "rag.quote_window"),
    ({"rag": {"collection": "notes", "fusion": "rrf"}}, "rag.fusion"),
    # A grounded answer with nothing retrieved would come from memory.
    ({"rag": {"grounding": "extractive"}}, "rag.collection"),
]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("extra", "param"), CHAT_CASES)
def test_bad_chat_requests_are_4xx_streamed_or_not(
    served: TestClient, extra: dict, param: str | None, stream: bool
) -> None:
    body = {"model": BASE, "messages": HI, "stream": stream, **extra}
    err = error_of(raw(served, "/v1/chat/completions", body), 400)
    assert err["type"] == "invalid_request_error"
    if param:
        assert err["param"] == param


@pytest.mark.parametrize("rag", [None, False, {"top_k": 2}])
def test_a_grounded_profile_without_a_collection_refuses_rather_than_answer_from_memory(
    served: TestClient, rag: object
) -> None:
    assert served.put("/v1/profiles/held", json={"grounding": "strict"}).status_code == 201
    body = {"model": "held", "messages": HI, **({} if rag is None else {"rag": rag})}
    err = error_of(raw(served, "/v1/chat/completions", body), 400)
    assert err["param"] == "rag.collection" and "'held'" in err["message"], err
    err = error_of(raw(served, "/v1/completions", {"model": "held", "prompt": "Hi"}), 400)
    assert err["param"] == "rag.collection"
    # With a collection it answers; `grounding: free` asked outright needs none.
    ok = {"model": "held", "messages": HI, "max_tokens": 2}
    assert raw(served, "/v1/chat/completions", {**ok, "rag": {"collection": "notes"}}).status_code == 200
    assert raw(served, "/v1/chat/completions", {**ok, "rag": {"grounding": "free"}}).status_code == 200


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("prompt", ["", [""]])
def test_empty_completion_prompt(served: TestClient, prompt: object, stream: bool) -> None:
    body = {"model": BASE, "prompt": prompt, "stream": stream}
    assert error_of(raw(served, "/v1/completions", body), 400)["param"] == "prompt"


def test_min_tokens_beyond_what_the_context_leaves(served: TestClient) -> None:
    err = error_of(raw(served, "/v1/completions", {"model": BASE, "prompt": "x", "min_tokens": 600}), 400)
    assert err["param"] == "min_tokens"


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"id": "s", "text": "bad \ud800 text"}, "text"),
        ({"id": "s", "text": "ok", "title": "\udc00"}, "title"),
        ({"id": "s", "text": "ok", "metadata": {"k": ["\ud83d"]}}, "metadata"),
        ({"id": "s", "text": "ok", "metadata": {"\ud800": 1}}, "metadata"),
        ({"id": "s\ud800", "text": "ok"}, "id"),
    ],
)
def test_lone_surrogates_in_documents(served: TestClient, doc: dict, field: str) -> None:
    err = error_of(raw(served, "/v1/collections/notes/documents", {"documents": [doc]}), 400)
    assert field in err["message"]
    # a valid pair (an emoji) is text, and is kept
    ok = raw(served, "/v1/collections/notes/documents", {"documents": [{"id": "e", "text": "a \U0001f600"}]})
    assert ok.status_code == 200, ok.text


def test_search_filter_and_offset_bounds(served: TestClient) -> None:
    for filt in ({"n": 10**20}, {f"f{i}": 1 for i in range(3000)}, {"n": {"$bogus": 1}}):
        err = error_of(
            served.post("/v1/collections/notes/search", json={"query": "cat", "filter": filt}), 400
        )
        assert err["param"] == "filter"
    err = error_of(served.get("/v1/collections/notes/documents?offset=99999999999999999999"), 400)
    assert err["param"] == "offset"
    assert served.get(f"/v1/collections/notes/documents?offset={2**63 - 1}").json()["data"] == []


@pytest.mark.parametrize("path", ["a\x00b", "x" * 60_000, "~nosuchuser/x", "y" * 1000, "../outside"])
def test_bad_adapter_paths(served: TestClient, path: str) -> None:
    err = error_of(served.post("/v1/adapters", json={"name": "a", "path": path}), 400)
    assert err["param"] == "path"


def test_symlinked_adapter_file_outside_the_folder_is_refused(
    served: TestClient, tmp_path: Path, base_model: Path
) -> None:
    from tests.conftest import make_lora_adapter

    outside = make_lora_adapter(base_model, tmp_path / "elsewhere", seed=5)
    inside = tmp_path / "adapters" / "linked"
    inside.mkdir()
    for f in outside.iterdir():
        if f.name == "adapter_config.json":
            os.symlink(f, inside / f.name)
        else:
            (inside / f.name).write_bytes(f.read_bytes())
    err = error_of(served.post("/v1/adapters", json={"name": "linked", "path": "linked"}), 400)
    assert "outside" in err["message"] and err["code"] == "invalid_adapter"


def test_names_collections_and_profiles(served: TestClient) -> None:
    assert error_of(served.post("/v1/collections", json={"name": "demo\n"}), 400)["param"] in (
        "name",
        "collection",
    )
    assert "demo\n" not in [c["name"] for c in served.get("/v1/collections").json()["data"]]
    for bad in ("a b", "..", "x" * 65, "%0A"):
        assert served.put(f"/v1/profiles/{bad}", json={}).status_code in (400, 404), bad
    err = error_of(
        served.put("/v1/profiles/p", json={"collection": "notes", "filter": {"x": {"$no": 1}}}), 400
    )
    assert err["param"] == "filter"
    surrogate = json.dumps({"system_prompt": "\ud800"}).encode()
    headers = {"content-type": "application/json"}
    assert error_of(served.put("/v1/profiles/p", content=surrogate, headers=headers), 400)
    assert served.put("/v1/profiles/ok-name.v2", json={"collection": "notes"}).status_code == 201
    # A profile's grounding calibration, out of range or removed, is refused naming the field.
    for field, value in [
        ("min_similarity", 1.5), ("min_similarity", "high"), ("quote_lead", 1), ("model_abstains", False),
    ]:  # fmt: skip
        err = error_of(served.put("/v1/profiles/p", json={"collection": "notes", field: value}), 400)
        assert field in err["message"] or field in (err["param"] or ""), (field, err)

    assert served.get("/v1/models/p").status_code == 404


def test_body_limit_counts_bytes_read_chunked_too(served: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "' + BASE.encode() + b'", "messages": [{"role": "user", "content": "'
        for _ in range(200):
            yield b"x" * 1024  # 200 KiB in all, no Content-Length
        yield b'"}]}'

    resp = served.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert error_of(resp, 413)["code"] == "request_too_large"
    lying = served.post(
        "/v1/collections/notes/documents",
        content=b"x" * (100 * 1024),
        headers={"content-type": "application/json", "content-length": "10"},
    )
    assert lying.status_code in (400, 413)  # h11 refuses the mismatch, or the counter stops it
    assert served.get("/health").status_code == 200


def test_document_size_limit_is_a_clear_413_on_every_write_route(served: TestClient) -> None:
    """One cap, retrieval.max_document_chars, whether the document comes as JSON or as a file."""
    resp = served.post(
        "/v1/collections/notes/documents", json={"documents": [{"id": "big", "text": "w " * 1500}]}
    )
    err = error_of(resp, 413)
    assert err["code"] == "document_too_large" and "RAGTUNE_RETRIEVAL__MAX_DOCUMENT_CHARS" in err["message"]
    files = "/v1/collections/notes/files"
    upload = served.post(files, files={"file": ("big.txt", b"w " * 1500, "text/plain")})
    assert error_of(upload, 413)["code"] == "document_too_large"
    fits = served.post(files, files={"file": ("small.txt", b"w " * 900, "text/plain")})
    assert fits.status_code == 200 and fits.json()["added"] == ["small.txt"], fits.text


def test_stream_that_fails_after_it_started_ends_with_an_error_and_done(
    tmp_path: Path, base_model: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(models_dir=base_model.parent, adapters_dir=tmp_path, indexes_dir=tmp_path / "i")
    library = Library(settings.indexes_dir, settings.retrieval)
    app = create_app(settings, engine=FailingEngine(tokenizer), library=library)
    with TestClient(app) as client:
        for path, body in (
            ("/v1/chat/completions", {"messages": HI}),
            ("/v1/completions", {"prompt": "Once"}),
        ):
            with client.stream("POST", path, json={"model": BASE, "stream": True, **body}) as resp:
                assert resp.status_code == 200
                events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
            assert events[-1] == "[DONE]"
            last = json.loads(events[-2])
            assert last["error"]["type"] == "server_error" and "RuntimeError" in last["error"]["message"]
            assert any("Hel" in e for e in events[:-2])
    library.close()
