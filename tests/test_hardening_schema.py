"""schemathesis over the whole OpenAPI schema: no 5xx and no hang for any generated request
(issue 10, point 6). The app runs with the echo engine and a real library in tmp_path.

Bounded for CI: SCHEMATHESIS_EXAMPLES examples per operation (default 25, about 600 requests
in all); raise it for a longer run.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings

from ragtune.retrieval import Document, Library
from ragtune.serving.app import create_app
from ragtune.serving.settings import load_settings
from tests.doubles import EchoEngine

EXAMPLES = int(os.environ.get("SCHEMATHESIS_EXAMPLES", "25"))


@pytest.fixture(scope="module")
def api_schema(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("schema")
    (root / "adapters").mkdir()
    config = load_settings(
        models_dir=base_model.parent,
        adapters_dir=root / "adapters",
        indexes_dir=root / "indexes",
        serving={"profiles": {"notes": {"collection": "notes"}}},
    )
    library = Library(config.indexes_dir, config.retrieval)
    library.create("notes").upsert([Document("a", "The cat is named Biscuit.", metadata={"n": 1})])
    app = create_app(config, engine=EchoEngine(AutoTokenizer.from_pretrained(base_model)), library=library)
    with TestClient(app):  # runs the lifespan: the services exist while the schema is exercised
        yield schemathesis.openapi.from_asgi("/openapi.json", app)
    library.close()


@pytest.mark.timeout(900 + 2 * EXAMPLES)  # about 1.1 s per example over all operations here
def test_no_request_gets_a_server_error(api_schema: Any) -> None:
    """Every operation, EXAMPLES generated requests each (positive and negative cases)."""
    statuses: dict[int, int] = {}
    failures: list[str] = []
    for result in api_schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
        )
        def check(case: Any) -> None:
            response = case.call(timeout=30)  # a hang fails the test instead of stalling CI
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
                )

        check()
    total = sum(statuses.values())
    print(f"schemathesis: {total} requests, statuses {dict(sorted(statuses.items()))}")
    assert total >= 10 * EXAMPLES and not failures, "\n".join(failures[:10])


def test_the_schema_shows_what_every_route_returns(api_schema: Any) -> None:
    """/openapi.json names a response schema for every route: the OpenAI responses with their
    extensions (`sources`, `ragtune`), and the admin routes' own."""
    spec = api_schema.raw_schema
    components = spec["components"]["schemas"]

    def named(ref: str) -> dict[str, Any]:
        return components[ref.rsplit("/", 1)[1]]["properties"]

    def returned(path: str, method: str) -> dict[str, Any]:
        """The properties of the route's success response ({} when it names no schema)."""
        responses = spec["paths"][path][method]["responses"]
        content = responses[min(s for s in responses if s.startswith("2"))]["content"]
        if "text/plain" in content:  # /metrics: Prometheus text
            return {"text/plain": content["text/plain"]}
        ref = content["application/json"]["schema"].get("$ref")
        return named(ref) if ref else {}

    for path in ("/v1/chat/completions", "/v1/completions"):
        props = returned(path, "post")
        assert {"sources", "ragtune", "usage", "choices"} <= set(props), path
        source = named(props["sources"]["items"]["$ref"])
        assert {"index", "document_id", "chunk_id", "score", "text"} <= set(source)
    untyped = [f"{m.upper()} {p}" for p, ops in spec["paths"].items() for m in ops if not returned(p, m)]
    assert not untyped, untyped
    stats = returned("/v1/collections/{name}", "get")
    assert {"documents", "chunks", "consistent", "embedder", "store_version"} <= set(stats)
    adapter = named(returned("/v1/adapters", "get")["data"]["items"]["$ref"])
    assert {"name", "version", "fingerprint", "rank", "path", "manifest"} <= set(adapter)
    profile = returned("/v1/profiles/{name}", "get")
    assert {"name", "top_k", "mode", "adapter", "grounding"} <= set(profile)
