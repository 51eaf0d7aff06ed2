"""The app through FastAPI's TestClient with an echo engine: prompt assembly, fitting, errors.

The echo engine answers with the end of its prompt, so these tests see exactly what the model
would have been given. The library is real (SQLite + FAISS + MiniLM in tmp_path).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ragtune.retrieval import Document, Library
from ragtune.serving.app import create_app
from ragtune.serving.settings import load_settings
from tests.doubles import EchoEngine

BASE = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def tokenizer(base_model: Path):  # noqa: ANN201
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model)


@pytest.fixture
def served(
    tmp_path: Path,
    base_model: Path,
    tokenizer,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> Iterator[tuple[TestClient, EchoEngine, Library]]:
    monkeypatch.chdir(tmp_path)
    settings = load_settings(
        models_dir=base_model.parent,
        adapters_dir=tmp_path / "adapters",
        indexes_dir=tmp_path / "indexes",
        serving={"profiles": {"notes": {"collection": "notes", "top_k": 2, "system_prompt": "Be terse."}}},
    )
    (tmp_path / "adapters").mkdir()
    engine = EchoEngine(tokenizer)
    library = Library(settings.indexes_dir, settings.retrieval)
    notes = library.create("notes")
    notes.upsert(
        [
            Document("a", "The lighthouse keeper's cat is named Biscuit.", title="Cat"),
            Document("b", "The lighthouse was built in 1871 from granite.", title="Lighthouse"),
            Document("c", "Tide tables are posted on the harbour office door.", title="Tides"),
        ]
    )
    with TestClient(create_app(settings, engine=engine, library=library)) as client:
        yield client, engine, library
    library.close()


def chat(client: TestClient, **body: object) -> dict:
    resp = client.post("/v1/chat/completions", json={"model": BASE, "max_tokens": 400, **body})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_context_block_and_sources_agree(served) -> None:  # noqa: ANN001
    client, _, _ = served
    body = chat(client, model="notes", messages=[{"role": "user", "content": "What is the cat called?"}])
    prompt_tail = body["choices"][0]["message"]["content"]
    sources = body["sources"]
    assert sources[0]["document_id"] == "a" and [s["index"] for s in sources] == [1, 2]
    for s in sources:  # the numbers in the prompt are the numbers in `sources`
        assert f"[{s['index']}] {s['title']}\n{s['text']}" in prompt_tail
    assert "Question: What is the cat called?" in prompt_tail
    assert body["usage"]["completion_tokens"] == len(client.app.state.engine.prompts[-1][-400:])  # type: ignore[attr-defined]


def test_profile_system_prompt_and_rag_false(served) -> None:  # noqa: ANN001
    client, engine, _ = served
    chat(client, model="notes", messages=[{"role": "user", "content": "cat?"}], rag=False)
    text = engine.tokenizer.decode(engine.prompts[-1])
    assert "Be terse." in text and "[1]" not in text


def test_context_is_fitted_to_the_model_length(served) -> None:  # noqa: ANN001
    client, engine, library = served
    long_text = " ".join(f"Granite block {i} was cut from the quarry near the cape." for i in range(150))
    library.open("notes").upsert([Document("long", long_text, title="Quarry")])
    body = chat(
        client,
        model="notes",
        max_tokens=64,
        messages=[{"role": "user", "content": "Which quarry supplied the granite block?"}],
    )
    assert len(engine.prompts[-1]) + 64 <= engine.max_model_len
    assert body["sources"], "the best chunk survives, cut to fit"
    assert len(body["sources"][0]["text"]) < len(long_text)


def test_rag_override_filter_and_unknown_collection(served) -> None:  # noqa: ANN001
    client, _, _ = served
    body = chat(
        client,
        messages=[{"role": "user", "content": "lighthouse"}],
        rag={"collection": "notes", "top_k": 1, "mode": "sparse"},
    )
    assert len(body["sources"]) == 1
    resp = client.post(
        "/v1/chat/completions",
        json={"model": BASE, "messages": [{"role": "user", "content": "x"}], "rag": {"collection": "nope"}},
    )
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "collection_not_found"


def test_streaming_events(served) -> None:  # noqa: ANN001
    client, _, _ = served
    with client.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": "notes",
            "messages": [{"role": "user", "content": "cat"}],
            "max_tokens": 5,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as resp:
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    assert parsed[0]["choices"][0]["delta"]["role"] == "assistant" and parsed[0]["sources"]
    assert parsed[-1]["usage"]["completion_tokens"] == 5 and parsed[-1]["choices"] == []
    assert any(p["choices"] and p["choices"][0]["finish_reason"] == "length" for p in parsed)
    # The completions stream reports usage in the same shape, as the whole response does.
    body = {"model": "notes", "prompt": "cat", "max_tokens": 5}
    whole = client.post("/v1/completions", json=body).json()["usage"]
    streamed = {**body, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/completions", json=streamed) as resp:
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]
    assert events[-1]["usage"] == whole and whole["completion_tokens"] == 5 and events[-1]["choices"] == []
    assert whole["total_tokens"] == whole["prompt_tokens"] + 5


def test_profiles_over_http(served) -> None:  # noqa: ANN001
    client, _, _ = served
    assert client.put("/v1/profiles/tides", json={"collection": "notes", "top_k": 1}).status_code == 201
    assert "tides" in [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert client.get("/v1/models/tides").json()["kind"] == "profile"
    assert client.get("/v1/models/nope").json()["error"]["code"] == "model_not_found"
    bad = client.put("/v1/profiles/x", json={"collection": "missing"})
    assert bad.status_code == 404
    bad = client.put("/v1/profiles/y", json={"adapter": "missing"})
    assert bad.status_code == 404 and bad.json()["error"]["code"] == "adapter_not_found"
    taken = client.put(f"/v1/profiles/{BASE}", json={})
    assert taken.status_code == 400 and taken.json()["error"]["code"] == "name_taken"
    assert client.delete("/v1/profiles/tides").status_code == 200
    assert client.delete("/v1/profiles/tides").status_code == 404


def test_documents_api_errors(served) -> None:  # noqa: ANN001
    client, _, _ = served
    assert client.post("/v1/collections", json={"name": "notes"}).status_code == 409
    assert client.get("/v1/collections/missing").status_code == 404
    resp = client.post("/v1/collections/notes/documents", json={"documents": []})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "documents"
    resp = client.post("/v1/collections/notes/documents", json={"documents": [{"id": "e", "text": ""}]})
    assert resp.status_code == 400
    assert client.get("/v1/collections/notes/documents/a").json()["text"].startswith("The lighthouse keeper")
    assert client.delete("/v1/collections/notes/documents/zzz").status_code == 404
    resp = client.post("/v1/collections/notes/search", json={"query": "cat", "filter": {"x": {"$bogus": 1}}})
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_filter"
    # the fusion method reaches the collection: RRF scores are sums of 1 / (60 + rank)
    scores = {}
    for f in ("rrf", "convex"):
        resp = client.post("/v1/collections/notes/search", json={"query": "cat", "fusion": f})
        scores[f] = [h["score"] for h in resp.json()["data"]]
    assert scores["rrf"][0] == pytest.approx(2 / 61) and scores["convex"][0] != scores["rrf"][0]
    resp = client.post("/v1/collections/notes/search", json={"query": "cat", "fusion": "max"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "fusion"


def test_completions_and_max_tokens_default(served) -> None:  # noqa: ANN001
    client, engine, _ = served
    resp = client.post("/v1/completions", json={"model": BASE, "prompt": "Once upon a time"})
    assert resp.status_code == 200
    body = resp.json()
    assert body["object"] == "text_completion" and "Once upon a time" in body["choices"][0]["text"]


def test_the_retrieval_settings_defaults_reach_chat_search_and_profiles(
    tmp_path: Path,
    base_model: Path,
    tokenizer,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    """RAGTUNE_RETRIEVAL__TOP_K / __MODE decide what a request, a profile or a search leaves unset."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAGTUNE_RETRIEVAL__TOP_K", "2")
    monkeypatch.setenv("RAGTUNE_RETRIEVAL__MODE", "sparse")
    settings = load_settings(
        models_dir=base_model.parent,
        adapters_dir=tmp_path / "adapters",
        indexes_dir=tmp_path / "indexes",
        serving={"profiles": {"kb": {"collection": "kb"}, "kb3": {"collection": "kb", "top_k": 3}}},
    )
    library = Library(settings.indexes_dir, settings.retrieval)
    library.create("kb").upsert(
        [Document(f"d{i}", f"Ferry number {i} leaves the harbour.") for i in range(6)]
    )
    with TestClient(create_app(settings, engine=EchoEngine(tokenizer), library=library)) as client:
        ask = [{"role": "user", "content": "Which ferry leaves the harbour?"}]
        assert len(chat(client, model="kb", messages=ask)["sources"]) == 2
        assert len(chat(client, model="kb3", messages=ask)["sources"]) == 3  # the profile's own
        assert len(chat(client, messages=ask, rag={"collection": "kb"})["sources"]) == 2
        found = client.post("/v1/collections/kb/search", json={"query": "ferry harbour"}).json()["data"]
        assert len(found) == 2
        # A sparse search finds nothing for words no document has; a dense one always returns k.
        none = client.post("/v1/collections/kb/search", json={"query": "zebra"}).json()["data"]
        assert none == []
        put = client.put("/v1/profiles/kb-put", json={"collection": "kb"}).json()
        assert (put["top_k"], put["mode"]) == (2, "sparse")  # answered as GET will show it
        profiles = {p["name"]: p for p in client.get("/v1/profiles").json()["data"]}
        assert (profiles["kb"]["top_k"], profiles["kb"]["mode"]) == (2, "sparse")
        assert profiles["kb3"]["top_k"] == 3
    library.close()


def test_the_documented_multi_gpu_settings_reach_vllm_unchanged(base_model: Path) -> None:
    """docs/scaling.md's several-GPU example, parsed from the page itself, becomes vLLM's own
    AsyncEngineArgs (no GPU here to run it: this checks what vLLM is given)."""
    import re

    import yaml
    from vllm.engine.arg_utils import AsyncEngineArgs

    from ragtune.serving.engine import engine_args

    page = (Path(__file__).parents[1] / "docs" / "scaling.md").read_text()
    section = page[page.index("**vLLM in-process on several GPUs.**") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None
    engine = yaml.safe_load(block.group(1))["engine"]
    settings = load_settings(models_dir=base_model.parent, engine=engine).engine
    args = AsyncEngineArgs(**engine_args(base_model, settings))
    assert (args.tensor_parallel_size, args.data_parallel_size) == (2, 2)
    assert args.distributed_executor_backend == "ray"

    del engine["extra"]  # several GPUs on one node: vLLM picks its executor, never 'uni'
    plain = AsyncEngineArgs(**engine_args(base_model, load_settings(engine=engine).engine))
    assert plain.tensor_parallel_size == 2 and plain.distributed_executor_backend is None
    one = AsyncEngineArgs(**engine_args(base_model, load_settings().engine))
    assert (one.tensor_parallel_size, one.data_parallel_size) == (1, 1)
    assert one.block_size == 32  # on a CPU; vLLM's own choice there is 128 (serving.engine)
    finer = AsyncEngineArgs(**engine_args(base_model, load_settings(engine={"block_size": 32}).engine))
    assert finer.block_size == 32
    # n-gram speculative decoding when asked for (docs/performance.md); off by default.
    assert one.speculative_config is None
    on = AsyncEngineArgs(**engine_args(base_model, load_settings(engine={"speculative_tokens": 4}).engine))
    spec = on.speculative_config
    assert (spec["method"], spec["num_speculative_tokens"]) == ("ngram", 4)


def test_extractive_grounding_offers_the_ranked_quotations(
    served,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One engine call, whose grammar offers the ranker's first quotation alone when it leads
    the second by more than QUOTE_LEAD, else the close ones; never the abstention above the
    floor (the model is not asked whether to abstain), nor to a yes/no question about a thing no
    source names. The echo engine ignores grammars: what is checked is what the engine is asked
    for."""
    from ragtune.serving.grounding import QUOTE_LEAD, QUOTE_WINDOW, choice_grammar, rank_quotations

    client, engine, library = served
    calls: list[object] = []
    echo = engine.generate

    async def recorded(prompt_ids, options, request_id, adapter):  # noqa: ANN001, ANN202
        calls.append(options)
        async for delta in echo(prompt_ids, options, request_id, adapter):
            yield delta

    monkeypatch.setattr(engine, "generate", recorded)
    embedder = library.open("notes").embedder
    offers = {}
    for question in ["When was the lighthouse built?", "What is in the notes?"]:
        calls.clear()
        ask = {"model": "notes", "messages": [{"role": "user", "content": question}]}
        body = chat(client, **ask, rag={"grounding": "extractive"})
        ranking = rank_quotations(question, [s["text"] for s in body["sources"]], embedder, k=3)
        offers[question] = ranking.quotes[:1] if ranking.lead > QUOTE_LEAD else ranking.close(QUOTE_WINDOW)
        assert len(calls) == 1 and calls[0].grammar == choice_grammar(offers[question], abstain=False)
    # The lighthouse's first quotation leads the second by 2 standard deviations: offered alone.
    (alone,) = offers["When was the lighthouse built?"]
    assert "1871" in alone
    # A yes/no question about a thing no source names is not answered by a quotation.
    yes_no = [("Is there a lift in the lighthouse?", False), ("Is the lighthouse granite?", True)]
    for question, quoted in yes_no:
        calls.clear()
        ask = {"model": "notes", "messages": [{"role": "user", "content": question}]}
        body = chat(client, **ask, rag={"grounding": "extractive"})
        assert len(calls) == 1 and (calls[0].grammar != choice_grammar([])) is quoted, question
        assert body["sources"]  # retrieved and shown, as below the floor


def test_checked_grounding_sends_the_reply_once_checked_against_its_sources(
    served,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The model answers freely (no grammar); each sentence of its reply is held until whole,
    then sent as it is when its cited source holds it, with the right marker when another source
    does; a reply with nothing held is the abstention sentence. Streamed, a sentence comes once
    whole: a one-sentence reply as one delta. Where the check ends a reply, generation stops."""
    from ragtune.core.prompt import ABSTAIN
    from ragtune.serving.engine import Delta

    client, engine, _ = served
    calls: list[object] = []
    reply = {"words": []}
    generated: list[str] = []

    async def scripted(prompt_ids, options, request_id, adapter):  # noqa: ANN001, ANN202
        calls.append(options)
        words = reply["words"]
        for i, word in enumerate(words):
            generated.append(word)
            yield Delta(0, word, 1, "stop" if i == len(words) - 1 else None)

    monkeypatch.setattr(engine, "generate", scripted)
    ask = {"model": "notes", "messages": [{"role": "user", "content": "When was the lighthouse built?"}]}
    body = chat(client, **ask, rag={"grounding": "free"})
    n = next(i for i, s in enumerate(body["sources"], start=1) if "1871" in s["text"])
    for words, sent in [
        (["It was ", "built in ", f"1871 [{n}]."], [f"It was built in 1871 [{n}]."]),
        (["It was ", "built in ", "1871."], [f"It was built in 1871. [{n}]"]),
        (["It was ", "built in ", "1923 ", f"[{n}]."], [ABSTAIN]),
        (["The sources ", "do not say."], [ABSTAIN]),
        # Sent sentence by sentence; a second claim no source holds ends the reply.
        (
            [f"Built in 1871 [{n}]. ", "It still ", "stands. ", "Ines Varga ", "built it."],
            [f"Built in 1871 [{n}].", " It still stands."],
        ),
        # Ended once the next sentence begins: the rest is never generated.
        (
            [f"Built in 1871 [{n}]. ", "Ines Varga ", "built it. ", "It has ", "a lamp."],
            [f"Built in 1871 [{n}]."],
        ),
    ]:
        reply["words"] = words
        calls.clear()
        generated.clear()
        body = chat(client, **ask, rag={"grounding": "checked"})
        assert calls[0].grammar is None and calls[0].allowed_token_ids is None
        assert body["choices"][0]["message"]["content"] == "".join(sent), words
        stopped = 4 if words[-1] == "a lamp." else len(words)
        assert generated == words[:stopped] and body["usage"]["completion_tokens"] == stopped
        streamed = {**ask, "max_tokens": 50, "stream": True, "rag": {"grounding": "checked"}}
        with client.stream("POST", "/v1/chat/completions", json=streamed) as resp:
            lines = [line for line in resp.iter_lines() if line.startswith("data: {")]
        texts = [c["delta"].get("content") for line in lines for c in json.loads(line[6:])["choices"]]
        assert [t for t in texts if t] == sent


def test_below_the_relevance_floor_the_reply_is_the_abstention_in_every_grounding(
    served,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`min_similarity`: when no run of the sources comes that close to the question, the engine
    is asked for the abstention alone, without a probe, whatever the grounding; above it the
    grounding runs as before."""
    from ragtune.serving.grounding import choice_grammar, rank_quotations

    client, engine, library = served
    calls: list[object] = []
    echo = engine.generate

    async def recorded(prompt_ids, options, request_id, adapter):  # noqa: ANN001, ANN202
        calls.append(options)
        async for delta in echo(prompt_ids, options, request_id, adapter):
            yield delta

    monkeypatch.setattr(engine, "generate", recorded)
    embedder = library.open("notes").embedder

    def similarity(question: str, body: dict) -> float:
        return rank_quotations(question, [s["text"] for s in body["sources"]], embedder, k=1).similarity

    near, far = "When was the lighthouse built?", "Which team won the cup final?"
    ask = {"model": "notes", "messages": [{"role": "user", "content": far}]}
    body = chat(client, **ask)
    assert calls[-1].grammar is None and body["sources"]  # no floor: free decoding, as before
    floor = (
        similarity(far, body)
        + similarity(near, chat(client, **{**ask, "messages": [{"role": "user", "content": near}]}))
    ) / 2
    # The floor is a profile's calibration; the request chooses the grounding it applies under.
    careful = client.put("/v1/profiles/careful", json={"collection": "notes", "min_similarity": floor})
    assert careful.status_code == 201
    for grounding in ("free", "strict", "extractive", "checked"):
        calls.clear()
        chat(client, **{**ask, "model": "careful"}, rag={"grounding": grounding})
        assert len(calls) == 1 and calls[0].grammar == choice_grammar([]), grounding  # no probe either
        calls.clear()
        chat(
            client,
            **{**ask, "model": "careful", "messages": [{"role": "user", "content": near}]},
            rag={"grounding": grounding},
        )
        assert calls[-1].grammar != choice_grammar([]), grounding


def test_popular_context_order_lays_shared_chunks_out_alike(served) -> None:  # noqa: ANN001
    """`context_order: popular`: the chunk retrieved most often comes first whatever its rank, so
    requests answered from it share a prompt prefix; `sources` keep the prompt's numbering."""
    client, engine, _ = served
    assert (
        client.put(
            "/v1/profiles/hot", json={"collection": "notes", "top_k": 2, "context_order": "popular"}
        ).status_code
        == 201
    )

    def ask(question: str, model: str = "hot", **rag: object) -> tuple[dict, str]:
        turn = [{"role": "user", "content": question}]
        body = chat(client, model=model, max_tokens=1, messages=turn, rag=rag or None)
        return body, engine.tokenizer.decode(engine.prompts[-1])

    for _ in range(3):  # the lighthouse note becomes the most retrieved
        assert ask("When was the lighthouse built?", top_k=1)[0]["sources"][0]["document_id"] == "b"
    body, prompt = ask("What is the lighthouse keeper's cat called?")
    ranked, _ = ask("What is the lighthouse keeper's cat called?", model="notes")
    assert ranked["sources"][0]["document_id"] == "a"  # by rank the cat note is first...
    assert [s["document_id"] for s in body["sources"]] == ["b", "a"]  # ...by popularity second
    assert [s["index"] for s in body["sources"]] == [1, 2]
    assert prompt.index("[1] Lighthouse") < prompt.index("[2] Cat")
    assert (
        client.put("/v1/profiles/hot", json={"collection": "notes", "context_order": "newest"}).status_code
        == 400
    )
