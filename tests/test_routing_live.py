"""`model: "auto"` through the `openai` client against the session's live server (the real vLLM
engine and 135M model): the choice arrives as `model` and the `ragtune` extension, whole and
streamed, and an off-domain question falls back to the base model without sources."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import LiveServer

pytestmark = pytest.mark.engine

BASE = "smollm2-135m-instruct"
DOC = {
    "id": "route-heron",
    "title": "Heron Line",
    "text": "The Heron Line runs between Pier Street and Millbrook. Trains leave every 12 minutes.",
}
QUESTION = [{"role": "user", "content": "How often does the Heron Line run?"}]


def test_auto_through_the_openai_client(live_server: LiveServer) -> None:
    http = httpx.Client(base_url=live_server.url, timeout=60)
    assert http.post("/v1/collections", json={"name": "kb"}).status_code in (201, 409)
    assert http.post("/v1/collections/kb/documents", json={"documents": [DOC]}).status_code == 200
    client = live_server.client()
    try:
        resp = client.chat.completions.create(model="auto", messages=QUESTION, temperature=0, max_tokens=16)
        route = resp.model_extra["ragtune"]["route"]
        assert resp.model == route["chosen"] == "kb-docs" and route["fallback"] is False
        assert "route-heron" in [s["document_id"] for s in resp.model_extra["sources"]]

        chunks = list(
            client.chat.completions.create(
                model="auto", messages=QUESTION, temperature=0, max_tokens=16, stream=True
            )
        )
        assert chunks[0].model_extra["ragtune"]["route"]["chosen"] == "kb-docs"
        assert {c.model for c in chunks} == {"kb-docs"}
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()

        off = client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "Who painted the Mona Lisa?"}],
            temperature=0,
            max_tokens=16,
        )
        assert off.model == BASE and off.model_extra["ragtune"]["route"]["fallback"] is True
        assert off.model_extra["sources"] == []
        assert "auto" in [m.id for m in client.models.list().data]
    finally:
        http.delete("/v1/collections/kb/documents/route-heron")
        http.close()
