"""`model: "auto"` (issue 30): serving.routing on the real MiniLM embedder and real collections,
then through the app (echo engine): the choice in the response, the stream and /metrics, the
fallback off-domain, and scoped keys that never reach another domain's documents."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ragtune.retrieval import Document, Library
from ragtune.serving.auth import UNLIMITED, Scope
from ragtune.serving.errors import Forbidden
from ragtune.serving.routing import Router, training_questions
from ragtune.serving.settings import ProfileSettings, RoutingSettings, load_settings

FIXTURE = Path(__file__).parent / "fixtures" / "routing" / "docs.jsonl"
BASE = "smollm2-135m-instruct"
RAIL_Q = "How often does the Heron Line run?"
GARDEN_Q = "When should I prune my roses?"
TAX_Q = "When is the deadline for my self-employed tax return?"
OFF_Q = "Who painted the Mona Lisa?"
PROFILES = {
    "rail": {"collection": "rail", "description": "Northwind Rail: trains, tickets, stations."},
    "garden": {"collection": "garden"},
    "tax": {"collection": "tax"},
}


def fill(library: Library) -> None:
    rows = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    for name in ("rail", "garden", "tax"):
        docs = [
            Document(id=r["id"], text=r["text"], title=r["title"]) for r in rows if r["collection"] == name
        ]
        library.create(name).upsert(docs)


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Library]:
    settings = load_settings(indexes_dir=tmp_path_factory.mktemp("indexes"))
    lib = Library(settings.indexes_dir, settings.retrieval)
    fill(lib)
    yield lib
    lib.close()


def router(library: Library, profiles: dict[str, Any] = PROFILES, **routing: Any) -> Router:
    parsed = {name: ProfileSettings(**p) for name, p in profiles.items()}
    return Router(
        library=library,
        profiles=lambda: parsed,
        base_name=BASE,
        adapters=None,
        settings=RoutingSettings(**routing),
    )


def test_each_question_goes_to_its_domain(library: Library) -> None:
    r = router(library)
    for question, domain in [(RAIL_Q, "rail"), (GARDEN_Q, "garden"), (TAX_Q, "tax")]:
        route = r.route([question], UNLIMITED)
        assert (route.chosen, route.fallback, route.reason) == (domain, False, "confident"), route
        assert list(route.scores)[0] == domain and set(route.scores) == set(PROFILES)


def test_off_domain_falls_back_never_guesses(library: Library) -> None:
    route = router(library).route([OFF_Q], UNLIMITED)
    assert (route.chosen, route.fallback, route.reason) == (BASE, True, "below_floor")
    assert router(library, fallback="tax").route([OFF_Q], UNLIMITED).chosen == "tax"
    # Two profiles over the same documents cannot be told apart: a close call falls back.
    twins = {"rail": PROFILES["rail"] | {"description": None}, "rail-copy": {"collection": "rail"}}
    close = router(library, twins).route([RAIL_Q], UNLIMITED)
    assert (close.chosen, close.reason) == (BASE, "close_call")


def test_decide_applies_the_floor_and_the_margin(library: Library) -> None:
    r = router(library, min_score=0.4, min_margin=0.1)
    assert r.decide({"a": 0.6, "b": 0.45}).chosen == "a"
    assert r.decide({"a": 0.6, "b": 0.55}).reason == "close_call"
    assert r.decide({"a": 0.39, "b": 0.1}).reason == "below_floor"
    assert r.decide({"a": 0.41}).chosen == "a"
    assert r.decide({}).reason == "no_candidates"


def test_a_follow_up_leans_on_the_conversation(library: Library) -> None:
    r = router(library)
    follow_up = "And what about at weekends?"
    assert r.route([follow_up], UNLIMITED).fallback
    route = r.route([RAIL_Q, follow_up], UNLIMITED)
    assert (route.chosen, route.on) == ("rail", "conversation")


def test_scoped_keys_see_only_their_profiles(library: Library) -> None:
    r = router(library)
    rail_only = Scope(collections=frozenset({"rail"}))
    assert list(r.candidates(rail_only)) == ["rail"]
    route = r.route([GARDEN_Q], rail_only)
    assert route.fallback and "garden" not in route.scores  # never scored, never chosen
    # A key limited to one profile: auto is that profile, whatever the question.
    one = Scope(models=frozenset({"rail"}))
    assert r.route([GARDEN_Q], one).chosen == "rail" and r.route([GARDEN_Q], one).reason == "only_choice"
    # A key that may not use the fallback is told so, not sent elsewhere.
    two = Scope(models=frozenset({"rail", "tax"}))
    with pytest.raises(Forbidden):
        r.route([OFF_Q], two)
    assert r.route([TAX_Q], two).chosen == "tax"


def test_description_alone_routes_a_profile_without_documents(library: Library) -> None:
    profiles = PROFILES | {"chef": {"description": "Cooking recipes: baking bread, cakes and pastry."}}
    route = router(library, profiles).route(["How do I bake a loaf of bread?"], UNLIMITED)
    assert route.chosen == "chef", route


class _Adapters:
    """The one AdapterRegistry method routing reads (`get`): a loaded adapter whose manifest names
    its training data. A real registry needs an engine and a trained adapter (minutes here)."""

    def __init__(self, path: Path, data: Path):
        from types import SimpleNamespace

        self.entry = SimpleNamespace(
            ref=SimpleNamespace(path=path), info=SimpleNamespace(manifest={"data": str(data)})
        )

    def get(self, name: str) -> Any:
        return self.entry if name == "cook" else None


def test_an_adapter_s_training_questions_route_to_its_profile(library: Library, tmp_path: Path) -> None:
    data = tmp_path / "cooking.jsonl"
    questions = ["How long do I knead bread dough?", "What oven temperature for a sponge cake?"]
    chats = [[{"role": "user", "content": q}, {"role": "assistant", "content": "..."}] for q in questions]
    data.write_text("".join(json.dumps({"messages": m}) + "\n" for m in chats))
    vague = "Help in the kitchen."
    parsed = {name: ProfileSettings(**p) for name, p in PROFILES.items()} | {
        "chef": ProfileSettings(adapter="cook", description=vague),  # its data says more than this
        "kitchen": ProfileSettings(description=vague),
        "cook-only": ProfileSettings(adapter="cook"),  # nothing of its own to be chosen for
        "ghost": ProfileSettings(adapter="not-loaded", description="Baking bread and cakes."),
    }
    r = Router(
        library=library,
        profiles=lambda: parsed,
        base_name=BASE,
        adapters=_Adapters(tmp_path, data),  # type: ignore[arg-type]
        settings=RoutingSettings(),
    )
    candidates = r.candidates(UNLIMITED)
    assert "ghost" not in candidates  # its adapter is not loaded: it cannot answer
    assert "cook-only" not in candidates and "chef" in candidates
    route = r.route(["How long should bread dough be kneaded?"], UNLIMITED)
    assert route.chosen == "chef" and route.scores["chef"] > route.scores["kitchen"] + 0.1, route
    assert r.route([RAIL_Q], UNLIMITED).chosen == "rail"


def test_training_questions_drop_the_context_block(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    with_sources = "Use the numbered sources below ...\n\n[1] Heron\nText.\n\nQuestion: How late is it?"
    rows = [
        {"messages": [{"role": "user", "content": with_sources}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": "Plain question?"}, {"role": "assistant", "content": "y"}]},
        {"text": "no messages"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    assert training_questions(data) == ["How late is it?", "Plain question?"]


# -- through the app ---------------------------------------------------------------------------

RAIL_KEY, ONE_KEY, ADMIN = "rail-coll-key", "rail-model-key", "admin-key"


@pytest.fixture(scope="module")
def tokenizer(base_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model)


@pytest.fixture
def client(
    tmp_path: Path, base_model: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    from ragtune.serving.app import create_app
    from tests.doubles import EchoEngine

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAGTUNE_ADMIN_KEYS", ADMIN)
    monkeypatch.setenv(
        "RAGTUNE_SCOPED_KEYS",
        json.dumps([{"key": RAIL_KEY, "collections": ["rail"]}, {"key": ONE_KEY, "models": ["rail"]}]),
    )
    settings = load_settings(
        models_dir=base_model.parent,
        adapters_dir=tmp_path / "adapters",
        indexes_dir=tmp_path / "indexes",
        serving={"profiles": PROFILES},
    )
    (tmp_path / "adapters").mkdir()
    library = Library(settings.indexes_dir, settings.retrieval)
    fill(library)
    with TestClient(create_app(settings, engine=EchoEngine(tokenizer), library=library)) as c:
        yield c
    library.close()


def chat(client: TestClient, question: str, key: str = ADMIN, **extra: Any) -> Any:
    body = {"model": "auto", "messages": [{"role": "user", "content": question}], "max_tokens": 300}
    return client.post("/v1/chat/completions", json=body | extra, headers={"Authorization": f"Bearer {key}"})


def test_the_response_names_the_choice(client: TestClient) -> None:
    resp = chat(client, RAIL_Q)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    route = body["ragtune"]["route"]
    assert body["model"] == route["chosen"] == "rail" and route["fallback"] is False
    assert {s["document_id"] for s in body["sources"]} <= {f"rail-{i}" for i in range(5)}
    assert body["sources"] and "12 minutes" in body["choices"][0]["message"]["content"]

    off = chat(client, OFF_Q).json()
    assert off["model"] == BASE and off["ragtune"]["route"]["fallback"] is True and off["sources"] == []

    named = chat(client, RAIL_Q, model="rail").json()
    assert named["model"] == "rail" and "ragtune" not in named

    comp = client.post(
        "/v1/completions",
        json={"model": "auto", "prompt": TAX_Q, "max_tokens": 5},
        headers={"Authorization": f"Bearer {ADMIN}"},
    ).json()
    assert comp["model"] == "tax" and comp["ragtune"]["route"]["chosen"] == "tax"


def test_the_stream_carries_the_choice_in_its_first_chunk(client: TestClient) -> None:
    resp = chat(client, GARDEN_Q, stream=True)
    events = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: {")]
    assert events[0]["ragtune"]["route"]["chosen"] == "garden"
    assert all(e["model"] == "garden" for e in events)
    assert all("ragtune" not in e for e in events[1:])


def test_models_and_metrics_show_auto(client: TestClient) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    assert "auto" in [m["id"] for m in client.get("/v1/models", headers=auth).json()["data"]]
    assert client.get("/v1/models/auto", headers=auth).json()["kind"] == "auto"
    chat(client, RAIL_Q)
    chat(client, RAIL_Q)
    chat(client, OFF_Q)
    metrics = client.get("/metrics", headers=auth).text
    assert 'ragtune_route_requests_total{fallback="false",model="rail"} 2.0' in metrics
    assert f'ragtune_route_requests_total{{fallback="true",model="{BASE}"}} 1.0' in metrics


def test_a_scoped_key_never_reaches_another_domain(client: TestClient) -> None:
    garden_texts = [json.loads(x)["text"] for x in FIXTURE.read_text().splitlines() if '"garden"' in x]
    # Scoped to the rail collection: a garden question falls back, with no garden document.
    for key in (RAIL_KEY, ONE_KEY):
        for stream in (False, True):
            resp = chat(client, GARDEN_Q, key=key, stream=stream)
            assert resp.status_code == 200, resp.text
            assert "garden" not in resp.text.replace(GARDEN_Q, "")
            assert not any(t[:40] in resp.text for t in garden_texts)
    assert chat(client, GARDEN_Q, key=RAIL_KEY).json()["ragtune"]["route"]["scores"].keys() == {"rail"}
    # Limited to the rail profile: auto is the rail profile, as if named.
    one = chat(client, GARDEN_Q, key=ONE_KEY).json()
    assert one["model"] == "rail" and one["ragtune"]["route"]["reason"] == "only_choice"
    assert all(s["document_id"].startswith("rail-") for s in one["sources"])
    # A key with one model has nothing to choose: auto is not listed to it.
    listed = client.get("/v1/models", headers={"Authorization": f"Bearer {ONE_KEY}"}).json()["data"]
    assert [m["id"] for m in listed] == ["rail"]
