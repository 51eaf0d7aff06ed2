"""The server against the real vLLM engine and the real 135M model, called as users call it."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from retrieval_fixtures import real_embedder

from ragtune.core.prompt import ABSTAIN
from ragtune.serving.grounding import rank_quotations
from tests.conftest import LiveServer, make_lora_adapter, quoted_source

pytestmark = pytest.mark.engine

BASE = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
FACT_DOC = {
    "id": "zorblatt",
    "title": "The Zorblatt reactor",
    "text": "The Zorblatt reactor was invented by the engineer Marta Quell in the town of Brindlemoor.",
    "metadata": {"topic": "energy"},
}
FILLER = [
    {"id": f"filler-{i}", "text": t}
    for i, t in enumerate(
        [
            "Bread is baked from flour, water, salt and yeast.",
            "The river Danube flows through ten countries.",
            "Chess is played on a board of sixty-four squares.",
        ]
    )
]


def greedy(
    client: openai.OpenAI, model: str, messages: list[dict], **extra: object
) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=24, extra_body=extra or None
    )


def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "param", "code"} <= set(body["error"])
    return body["error"]


def test_models_lists_base_adapter_and_profile(live_server: LiveServer) -> None:
    models = {m.id: m for m in live_server.client().models.list().data}
    assert models[BASE].kind == "base"  # type: ignore[attr-defined]
    assert models["style"].kind == "adapter"  # type: ignore[attr-defined]
    assert models["kb-docs"].kind == "profile"  # type: ignore[attr-defined]


def test_chat_answers_paris_with_usage(live_server: LiveServer) -> None:
    resp = greedy(live_server.client(), BASE, FRANCE)
    assert "Paris" in resp.choices[0].message.content
    assert resp.choices[0].finish_reason in {"stop", "length"}
    assert resp.usage.prompt_tokens > 5 and resp.usage.completion_tokens > 0
    assert resp.model_extra["sources"] == []


def test_stream_matches_plain_and_reports_usage(live_server: LiveServer) -> None:
    client = live_server.client()
    plain = greedy(client, BASE, FRANCE).choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model=BASE,
            messages=FRANCE,
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_a_repeated_prompt_is_served_from_the_prefix_cache(live_server: LiveServer) -> None:
    """The engine's prefix cache, seen by a client (usage.prompt_tokens_details.cached_tokens)
    and by an operator (/metrics: ragtune_tokens_total{type="prompt_cached"})."""
    client = live_server.client()
    question = [{"role": "user", "content": "Name three rivers of Europe, one per line, " * 8}]
    first = greedy(client, BASE, question)
    second = greedy(client, BASE, question)
    assert second.usage.prompt_tokens == first.usage.prompt_tokens > 64
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached >= second.usage.prompt_tokens - 32  # all but the last partial KV block
    metrics = httpx.get(f"{live_server.url}/metrics").text
    line = next(x for x in metrics.splitlines() if x.startswith('ragtune_tokens_total{type="prompt_cached"}'))
    assert float(line.split()[-1]) >= cached


def test_completions_endpoint(live_server: LiveServer) -> None:
    resp = live_server.client().completions.create(
        model=BASE, prompt="The capital of France is", max_tokens=5, temperature=0
    )
    assert "Paris" in resp.choices[0].text
    assert resp.usage.completion_tokens <= 5


def test_n_and_seed(live_server: LiveServer) -> None:
    client = live_server.client()
    kwargs = {"model": BASE, "messages": FRANCE, "max_tokens": 12, "temperature": 1.0, "seed": 7}
    first = client.chat.completions.create(**kwargs)
    again = client.chat.completions.create(**kwargs)
    assert first.choices[0].message.content == again.choices[0].message.content
    two = client.chat.completions.create(**{**kwargs, "n": 2})
    assert [c.index for c in two.choices] == [0, 1]


def test_adapter_changes_output(live_server: LiveServer) -> None:
    client = live_server.client()
    base = greedy(client, BASE, FRANCE).choices[0].message.content
    styled = greedy(client, "style", FRANCE).choices[0].message.content
    assert styled != base


LONG = [
    {
        "role": "user",
        "content": " ".join(f"Line {i} of the ledger records {i * 7} crates of tea." for i in range(40))
        + " How many crates does line 12 record?",
    }
]


# How far below PEFT's top token (log-probability) the engine's token may be where the two part.
# The engine batches requests and transformers runs them one by one: other shapes, other rounding,
# and a near-tie can go either way (bf16, the dtype on a CPU with AMX or AVX512-BF16, keeps 8
# bits: logits near 20 step by 0.125; fp32 far finer). A missing or leaked adapter measured
# 0.6-6.5 off on these prompts.
TIE_TOLERANCE = {"bfloat16": 0.25, "float32": 0.02}


def _tie_gap(model: Any, tok: Any, prompt: list[dict], reply: str, expected: str) -> float:
    """0 when `reply` is PEFT's greedy `expected`; else, at the first token where they part, how
    much less likely PEFT finds the engine's token than its own (log-probability)."""
    import torch

    if reply == expected:
        return 0.0
    text = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    got = tok(reply, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    want = tok(expected, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    if at is None:
        return 0.0  # the same tokens: the texts differ only in spaces around them
    with torch.inference_mode():
        logits = model(torch.tensor([prompt_ids + want[:at]])).logits[0, -1].float()
    logp = torch.log_softmax(logits, dim=-1)
    return float(logp[want[at]] - logp[got[at]])


def test_adapter_answers_match_transformers_in_a_mixed_batch(
    live_server: LiveServer, base_model: Path
) -> None:
    """The engine's LoRA (ragtune's grouped CPU ops, serving/lora_cpu.py) gives PEFT's greedy
    tokens, for a long prefill and with base-model requests in the same batch: the same text,
    or text that parts from PEFT's only at a near-tie."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ragtune.serving.engine import resolved_dtype
    from ragtune.training.generate import generate

    client = live_server.client()
    asks = [(BASE, LONG), ("style", LONG), (BASE, FRANCE), ("style", FRANCE)] * 2
    with ThreadPoolExecutor(len(asks)) as pool:  # in flight together: one batch, mixed adapters
        replies = list(
            pool.map(
                lambda a: (
                    client.chat.completions.create(model=a[0], messages=a[1], temperature=0, max_tokens=12)
                    .choices[0]
                    .message.content
                ),
                asks,
            )
        )
    dtype = resolved_dtype("auto")
    tok = AutoTokenizer.from_pretrained(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=getattr(torch, dtype)).eval()
    model = PeftModel.from_pretrained(model, live_server.adapters_dir / "style").eval()
    prompts = [LONG, FRANCE]
    expected = {"style": generate(model, tok, prompts, max_new_tokens=12, batch_size=1)}
    with model.disable_adapter():
        expected[BASE] = generate(model, tok, prompts, max_new_tokens=12, batch_size=1)
    for (name, messages), reply in zip(asks, replies, strict=True):
        want = expected[name][prompts.index(messages)]
        with model.disable_adapter() if name == BASE else nullcontext():
            gap = _tie_gap(model, tok, messages, reply, want)
        assert gap <= TIE_TOLERANCE[dtype], (name, messages[0]["content"][-40:], reply, want, gap)
    # Most replies are PEFT's exactly (each ask is sent twice, so one near-tie costs two).
    assert sum(r == expected[n][prompts.index(m)] for (n, m), r in zip(asks, replies, strict=True)) >= 4


def test_document_fact_is_answered_cited_then_forgotten(live_server: LiveServer) -> None:
    http = httpx.Client(base_url=live_server.url, timeout=120)
    assert http.post("/v1/collections", json={"name": "kb"}).status_code in (201, 409)
    up = http.post("/v1/collections/kb/documents", json={"documents": [FACT_DOC, *FILLER]})
    assert up.status_code == 200, up.text
    again = http.post("/v1/collections/kb/documents", json={"documents": [FACT_DOC]}).json()
    assert again["unchanged"] == ["zorblatt"]

    client = live_server.client()
    question = [{"role": "user", "content": "Who invented the Zorblatt reactor?"}]
    resp = greedy(client, BASE, question, rag={"collection": "kb", "top_k": 2})
    sources = resp.model_extra["sources"]
    assert sources[0]["document_id"] == "zorblatt" and sources[0]["index"] == 1
    assert "Quell" in resp.choices[0].message.content
    without = greedy(client, BASE, question)
    assert "Quell" not in without.choices[0].message.content  # the fact comes from the document

    # The profile binds the same collection; the very next request sees a deletion.
    assert http.delete("/v1/collections/kb/documents/zorblatt").status_code == 200
    after = greedy(client, "kb-docs", question)
    assert "zorblatt" not in [s["document_id"] for s in after.model_extra["sources"]]
    assert after.model_extra["sources"], "the profile still retrieves the remaining documents"
    assert http.get("/v1/collections/kb/documents/zorblatt").status_code == 404


def test_strict_grounding_keeps_a_memorised_answer_out(live_server: LiveServer) -> None:
    """Sources contradict what the model memorised (examples/world-qa's conflict): free decoding
    answers from memory, strict grounding cannot write the memorised city, extractive grounding
    quotes a source, streamed or not, and checked grounding sends the abstention instead of it."""
    http = httpx.Client(base_url=live_server.url, timeout=120)
    assert http.post("/v1/collections", json={"name": "atlas"}).status_code in (201, 409)
    docs = [
        {
            "id": country,
            "title": country,
            "text": f"{city} is the capital of {country}. The government "
            f"and parliament of {country} meets in {city}.",
        }
        for country, city in [("France", "Havana"), ("Belgium", "Warsaw"), ("Denmark", "Cairo")]
    ]
    assert http.post("/v1/collections/atlas/documents", json={"documents": docs}).status_code == 200
    client = live_server.client()
    rag = {"collection": "atlas", "top_k": 3}
    free = greedy(client, BASE, FRANCE, rag=rag)
    strict = greedy(client, BASE, FRANCE, rag={**rag, "grounding": "strict"})
    assert "Paris" in free.choices[0].message.content  # the memory wins without the constraint
    answer = strict.choices[0].message.content
    assert "Paris" not in answer and answer.strip(), answer
    assert strict.model_extra["sources"][0]["document_id"] == "France"
    # Extractive: a sentence of a source, word for word, with that source's marker.
    ask = {"model": BASE, "messages": FRANCE, "temperature": 0, "max_tokens": 48}
    extractive_rag = {"rag": {**rag, "grounding": "extractive"}}
    extractive = client.chat.completions.create(**ask, extra_body=extractive_rag)
    quote, sources = extractive.choices[0].message.content, extractive.model_extra["sources"]
    assert quoted_source(quote, sources) is not None and "Paris" not in quote, quote
    streamed = client.chat.completions.create(**ask, stream=True, extra_body=extractive_rag)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == quote
    # The quotation is among the runs ranked closest to the question.
    ranked = rank_quotations(FRANCE[-1]["content"], [s["text"] for s in sources], real_embedder(), k=3).quotes
    assert quote in ranked, (quote, ranked)
    # Checked: the model's free answer names Paris, which no source holds: the abstention is sent.
    checked = greedy(client, BASE, FRANCE, rag={**rag, "grounding": "checked"})
    assert checked.choices[0].message.content == ABSTAIN, checked.choices[0].message.content
    # The `grounded` profile is extractive (no reader adapter in this test's adapters folder).
    profile = client.chat.completions.create(
        **{**ask, "model": "grounded"}, extra_body={"rag": {"collection": "atlas"}}
    )
    quote = profile.choices[0].message.content
    assert quoted_source(quote, profile.model_extra["sources"]) is not None, quote
    # Its relevance floor: sources that contradict the embedder's memory (Havana, 0.61 by cosine)
    # are still on topic, but nothing in them is about a novel's author: it abstains.
    off = client.chat.completions.create(
        **{
            **ask,
            "model": "grounded",
            "messages": [{"role": "user", "content": "Who wrote the novel Moby-Dick?"}],
        },
        extra_body={"rag": {"collection": "atlas"}},
    )
    assert off.choices[0].message.content == ABSTAIN and off.model_extra["sources"]
    http.delete("/v1/collections/atlas")


def _files_state(*folders: Path) -> dict[str, tuple[int, int]]:
    return {
        str(f): (f.stat().st_size, f.stat().st_mtime_ns)
        for folder in folders
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    }


def test_changing_a_document_changes_the_answer_without_retraining(
    live_server: LiveServer, base_model
) -> None:  # noqa: ANN001
    """Knowledge comes from the collection: update a document over HTTP and the next answer
    follows the new version and cites it; delete it and the fact is gone from the answers.
    No model or adapter file is touched on the way."""
    weights = _files_state(base_model, live_server.adapters_dir)
    http = httpx.Client(base_url=live_server.url, timeout=120)
    assert http.post("/v1/collections", json={"name": "reindex"}).status_code == 201
    doc = {**FACT_DOC, "id": "reactor"}
    assert (
        http.post("/v1/collections/reindex/documents", json={"documents": [doc, *FILLER]}).status_code == 200
    )
    client = live_server.client()
    question = [{"role": "user", "content": "Who invented the Zorblatt reactor?"}]
    rag = {"collection": "reindex", "top_k": 2}

    def cited(resp) -> list[dict]:  # noqa: ANN001 - the sources its [n] markers point at
        sources = resp.model_extra["sources"]
        marks = {int(n) for n in re.findall(r"\[(\d+)\]", resp.choices[0].message.content)}
        return [s for s in sources if s["index"] in marks]

    first = greedy(client, BASE, question, rag=rag)
    assert "Quell" in first.choices[0].message.content

    changed = {**doc, "text": doc["text"].replace("Marta Quell", "Ivo Brenn")}
    up = http.post("/v1/collections/reindex/documents", json={"documents": [changed]}).json()
    assert up["updated"] == ["reactor"]
    second = greedy(client, BASE, question, rag=rag)
    answer = second.choices[0].message.content
    assert "Brenn" in answer and "Quell" not in answer, answer
    top = second.model_extra["sources"][0]
    assert top["document_id"] == "reactor" and "Ivo Brenn" in top["text"]
    assert all(s["document_id"] == "reactor" and "Brenn" in s["text"] for s in cited(second)), answer
    grounded = {"model": "grounded", "messages": question, "temperature": 0, "max_tokens": 48}
    grounded["extra_body"] = {"rag": {"collection": "reindex"}}
    reply = client.chat.completions.create(**grounded)
    quote, sources = reply.choices[0].message.content, reply.model_extra["sources"]
    n = quoted_source(quote, sources)
    assert "Ivo Brenn" in quote and n is not None and sources[n - 1]["document_id"] == "reactor", quote

    assert http.delete("/v1/collections/reindex/documents/reactor").status_code == 200
    third = greedy(client, BASE, question, rag=rag)
    assert "reactor" not in [s["document_id"] for s in third.model_extra["sources"]]
    assert "Brenn" not in third.choices[0].message.content  # the deleted fact is not served
    # The `grounded` profile says so: nothing left is about the reactor (its relevance floor).
    assert client.chat.completions.create(**grounded).choices[0].message.content == ABSTAIN
    assert _files_state(base_model, live_server.adapters_dir) == weights


def test_stream_first_chunk_carries_sources(live_server: LiveServer) -> None:
    http = httpx.Client(base_url=live_server.url, timeout=120)
    http.post("/v1/collections", json={"name": "kb2"})
    http.post("/v1/collections/kb2/documents", json={"documents": FILLER})
    body = {
        "model": BASE,
        "messages": [{"role": "user", "content": "How is bread made?"}],
        "max_tokens": 8,
        "stream": True,
        "rag": {"collection": "kb2", "top_k": 1},
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    first = json.loads(lines[0][6:])
    assert first["sources"][0]["document_id"] == "filler-0"
    assert all("sources" not in json.loads(x[6:]) for x in lines[1:-1])


def test_search_endpoint_returns_source_objects(live_server: LiveServer) -> None:
    http = httpx.Client(base_url=live_server.url, timeout=60)
    http.post("/v1/collections", json={"name": "kb3"})
    http.post("/v1/collections/kb3/documents", json={"documents": FILLER})
    hits = http.post("/v1/collections/kb3/search", json={"query": "chess board", "top_k": 2}).json()["data"]
    assert hits[0]["document_id"] == "filler-2"
    assert set(hits[0]) == {"index", "document_id", "chunk_id", "title", "source", "score", "text"}


def test_adapter_load_replace_unload_at_runtime(live_server: LiveServer) -> None:
    http = httpx.Client(base_url=live_server.url, timeout=120)
    client = live_server.client()
    loaded = http.post("/v1/adapters", json={"name": "runtime", "path": "style"})
    assert loaded.status_code == 201, loaded.text
    assert "runtime" in [a["name"] for a in http.get("/v1/adapters").json()["data"]]
    v1 = greedy(client, "runtime", FRANCE).choices[0].message.content
    assert v1 == greedy(client, "style", FRANCE).choices[0].message.content

    replaced = http.post("/v1/adapters", json={"name": "runtime", "path": "style-v2"})
    assert replaced.status_code == 200 and replaced.json()["replaced"] is True
    v2 = greedy(client, "runtime", FRANCE).choices[0].message.content
    assert v2 != v1

    assert http.delete("/v1/adapters/runtime").status_code == 200
    gone = http.post("/v1/chat/completions", json={"model": "runtime", "messages": FRANCE})
    assert gone.status_code == 404 and error_of(gone)["code"] == "model_not_found"


def test_trained_adapter_loads_at_runtime_and_changes_output(live_server: LiveServer) -> None:
    """An adapter made by `ragtune train` (training.train) goes live without a restart."""
    http = httpx.Client(base_url=live_server.url, timeout=120)
    client = live_server.client()
    question = [{"role": "user", "content": "What colour is the lamp number 3?"}]
    base = greedy(client, BASE, question).choices[0].message.content
    loaded = http.post("/v1/adapters", json={"name": "trained", "path": "trained"})
    assert loaded.status_code == 201, loaded.text
    assert loaded.json()["manifest"]["base_fingerprint"]
    assert greedy(client, "trained", question).choices[0].message.content != base
    http.delete("/v1/adapters/trained")


def test_replace_while_in_flight_finishes_on_old_version(live_server: LiveServer) -> None:
    http = httpx.Client(base_url=live_server.url, timeout=120)
    assert http.post("/v1/adapters", json={"name": "swap", "path": "style"}).status_code == 201
    results: dict[str, httpx.Response] = {}
    body = {"model": "swap", "messages": FRANCE, "max_tokens": 200, "ignore_eos": True, "temperature": 0}
    worker = threading.Thread(target=lambda: results.update(r=http.post("/v1/chat/completions", json=body)))
    worker.start()
    time.sleep(1.0)
    assert http.post("/v1/adapters", json={"name": "swap", "path": "style-v2"}).status_code == 200
    worker.join(120)
    assert results["r"].status_code == 200
    assert results["r"].json()["usage"]["completion_tokens"] == 200
    http.delete("/v1/adapters/swap")


def test_disconnect_aborts_generation(live_server: LiveServer) -> None:
    http = httpx.Client(base_url=live_server.url, timeout=60)
    body = {"model": BASE, "messages": FRANCE, "max_tokens": 1500, "ignore_eos": True, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        for line in resp.iter_lines():
            if '"content"' in line:
                break
    deadline = time.time() + 15  # 1500 tokens would take minutes on this CPU
    while http.get("/health").json()["running_requests"] and time.time() < deadline:
        time.sleep(0.25)
    assert http.get("/health").json()["running_requests"] == 0


def test_metrics_count_requests_and_adapters(live_server: LiveServer) -> None:
    greedy(live_server.client(), "style", FRANCE)
    text = httpx.get(f"{live_server.url}/metrics").text
    assert 'ragtune_model_requests_total{kind="adapter",model="style"}' in text
    assert "ragtune_time_to_first_token_seconds_bucket" in text
    assert 'ragtune_requests_total{method="POST",route="/v1/chat/completions",status="200"}' in text


# -- bad input: a 4xx in OpenAI's format, and the server keeps serving -----------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": BASE, "messages": []}, "messages"),
        ({"model": BASE, "messages": FRANCE, "max_tokens": "many"}, "max_tokens"),
        ({"model": BASE, "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"model": BASE, "messages": [{"role": "system", "content": "hi"}]}, "messages"),
        ({"messages": FRANCE}, "model"),
        ({"model": BASE, "messages": FRANCE, "temperature": 5}, "temperature"),
        ({"model": BASE, "messages": FRANCE, "rag": {"collection": "kb", "top_k": 0}}, "rag.top_k"),
    ],
)
def test_validation_errors_name_the_field(live_server: LiveServer, body: dict, param: str) -> None:
    resp = httpx.post(f"{live_server.url}/v1/chat/completions", json=body)
    assert resp.status_code == 400
    err = error_of(resp)
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_malformed_json(live_server: LiveServer) -> None:
    resp = httpx.post(
        f"{live_server.url}/v1/chat/completions",
        content=b'{"model": ',
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 400 and "JSON" in error_of(resp)["message"]


def test_max_tokens_beyond_context(live_server: LiveServer) -> None:
    resp = httpx.post(
        f"{live_server.url}/v1/chat/completions", json={"model": BASE, "messages": FRANCE, "max_tokens": 5000}
    )
    err = error_of(resp)
    assert (
        resp.status_code == 400 and err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"
    )


def test_unknown_model_and_collection(live_server: LiveServer) -> None:
    with pytest.raises(openai.NotFoundError) as exc:
        greedy(live_server.client(), "no-such-model", FRANCE)
    assert exc.value.body["code"] == "model_not_found"  # type: ignore[index]
    resp = httpx.post(
        f"{live_server.url}/v1/chat/completions",
        json={"model": BASE, "messages": FRANCE, "rag": {"collection": "missing"}},
    )
    assert resp.status_code == 404 and error_of(resp)["code"] == "collection_not_found"


def test_bad_adapters_are_refused_before_the_engine(live_server: LiveServer, base_model) -> None:  # noqa: ANN001
    http = httpx.Client(base_url=live_server.url, timeout=120)
    root = live_server.adapters_dir
    outside = http.post("/v1/adapters", json={"name": "evil", "path": "../../etc"})
    assert outside.status_code == 400 and error_of(outside)["param"] == "path"

    other = root / "other-base"
    if not other.exists():
        make_lora_adapter(base_model, other, seed=3)
        manifest = json.loads((other / "ragtune-adapter.json").read_text())
        (other / "ragtune-adapter.json").write_text(json.dumps({**manifest, "base_fingerprint": "0" * 16}))
    mismatch = http.post("/v1/adapters", json={"name": "other", "path": "other-base"})
    assert mismatch.status_code == 400 and "base" in error_of(mismatch)["message"]

    corrupt = root / "corrupt"
    if not corrupt.exists():
        shutil.copytree(root / "style", corrupt)
        weights = corrupt / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    bad = http.post("/v1/adapters", json={"name": "corrupt", "path": "corrupt"})
    assert bad.status_code == 400 and error_of(bad)["code"] == "invalid_adapter"

    missing = http.post("/v1/adapters", json={"name": "ghost", "path": "nope"})
    assert missing.status_code == 400
    assert http.delete("/v1/adapters/ghost").status_code == 404
    # still serving
    assert "Paris" in greedy(live_server.client(), BASE, FRANCE).choices[0].message.content


def test_unknown_route_and_oversized_body(live_server: LiveServer) -> None:
    resp = httpx.get(f"{live_server.url}/v1/nothing")
    assert resp.status_code == 404 and error_of(resp)["type"] == "not_found_error"
    big = httpx.post(
        f"{live_server.url}/v1/chat/completions",
        content=b"x" * (9 * 1024 * 1024),
        headers={"content-type": "application/json"},
    )
    assert big.status_code == 413 and error_of(big)["code"] == "request_too_large"


def test_the_newcomers_six_questions_through_grounded_never_answer_from_memory(
    live_server: LiveServer,
) -> None:
    """bench.newcomer's questions about the demo handbook (examples/house-style), through the
    `grounded` profile on the default model (extractive): every reply is a quotation of a source
    with its marker, or the abstention; and all six are right, as measured (the wifi question
    abstains by the yes/no rule, bench/results/polar.md; the Lantern question is quoted right from
    3 sources, bench/results/quote-rank.md)."""
    from bench.newcomer import QUESTIONS, judge

    http = httpx.Client(base_url=live_server.url, timeout=120)
    assert http.post("/v1/collections", json={"name": "handbook"}).status_code in (201, 409)
    lines = Path(__file__).resolve().parents[1] / "examples" / "house-style" / "docs.jsonl"
    fields = ("id", "title", "text")
    docs = [{k: json.loads(line)[k] for k in fields} for line in lines.read_text().splitlines()]
    assert http.post("/v1/collections/handbook/documents", json={"documents": docs}).status_code == 200
    client = live_server.client()
    right = 0
    for question, holds, doc in QUESTIONS:
        reply = client.chat.completions.create(
            model="grounded",
            messages=[{"role": "user", "content": question}],
            temperature=0,
            max_tokens=80,
            extra_body={"rag": {"collection": "handbook"}},
        )
        text, sources = reply.choices[0].message.content, reply.model_extra["sources"]
        assert text == ABSTAIN or quoted_source(text, sources) is not None, (question, text)
        right += judge(text, sources, holds, doc)["right"]
    assert right == 6, right
