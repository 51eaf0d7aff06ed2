"""Each key sees only what it may use (issue 29, point 7): a key scoped to one tenant's collection
never sees the other tenant's profile, in lists or on its own route; user keys see adapters'
names, ranks and fingerprints but no server path or manifest; admin keys see everything.
And document ids refuse control characters on every write path."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ragtune.core.errors import InvalidDocument
from ragtune.retrieval import Document, Library
from ragtune.retrieval.ingest import collect
from ragtune.serving.app import create_app
from ragtune.serving.settings import load_settings
from tests.conftest import make_lora_adapter
from tests.doubles import EchoEngine
from tests.test_hardening_auth import ADMIN, USER, bearer, call, error
from tests.test_hardening_auth import tokenizer as tokenizer_fixture

tokenizer = tokenizer_fixture  # the same module-scoped fixture, found here by its name

TENANT_A = "tenant-a-key-321"
SECRET = "INTERNAL: you serve tenant B; escalation phone 555-0199"


@pytest.fixture(scope="module")
def style(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lora_adapter(base_model, tmp_path_factory.mktemp("style") / "style", seed=21)


@pytest.fixture
def tenants(
    tmp_path: Path, base_model: Path, tokenizer: Any, style: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TestClient]:
    """Two tenants, each a collection behind a profile; a key scoped to tenant A's collection
    only (any model name), a user key, an admin key; one adapter loaded."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAGTUNE_API_KEYS", USER)
    monkeypatch.setenv("RAGTUNE_ADMIN_KEYS", ADMIN)
    monkeypatch.setenv("RAGTUNE_SCOPED_KEYS", f'[{{"key": "{TENANT_A}", "collections": ["a"]}}]')
    profiles = {
        "prof-a": {"collection": "a"},
        "prof-b": {"collection": "b", "system_prompt": SECRET, "filter": {"tier": "gold"}},
    }
    settings = load_settings(
        models_dir=base_model.parent,
        adapters_dir=tmp_path / "adapters",
        indexes_dir=tmp_path / "indexes",
        serving={"profiles": profiles},
    )
    shutil.copytree(style, tmp_path / "adapters" / "style")
    library = Library(settings.indexes_dir, settings.retrieval)
    with TestClient(create_app(settings, engine=EchoEngine(tokenizer), library=library)) as c:
        for name in ("a", "b"):
            assert call(c, "POST", "/v1/collections", {"name": name}, ADMIN).status_code == 201
        assert call(c, "POST", "/v1/adapters", {"name": "style", "path": "style"}, ADMIN).status_code == 201
        yield c
    library.close()


def names(client: TestClient, path: str, key: str, field: str) -> list[str]:
    resp = call(client, "GET", path, None, key)
    assert resp.status_code == 200, resp.text
    return [item[field] for item in resp.json()["data"]]


def test_a_key_scoped_to_one_tenant_never_sees_the_other(tenants: TestClient) -> None:
    profiles = names(tenants, "/v1/profiles", TENANT_A, "name")
    models = names(tenants, "/v1/models", TENANT_A, "id")
    assert "prof-a" in profiles and "prof-b" not in profiles
    assert "prof-a" in models and "prof-b" not in models
    unknown = call(tenants, "GET", "/v1/profiles/no-such", None, TENANT_A)
    for path, code, missing in [
        ("/v1/profiles/prof-b", "profile_not_found", unknown),
        ("/v1/models/prof-b", "model_not_found", call(tenants, "GET", "/v1/models/no-such", None, TENANT_A)),
    ]:
        resp = call(tenants, "GET", path, None, TENANT_A)
        assert error(resp, 404, "not_found_error")["code"] == code
        assert "INTERNAL" not in resp.text and "tenant B" not in resp.text
        # the same answer as for a name that does not exist: nothing says it is there
        expected = missing.json()["error"]["message"].replace("no-such", "prof-b")
        assert resp.json()["error"]["message"] == expected
    assert call(tenants, "GET", "/v1/profiles/prof-a", None, TENANT_A).json()["collection"] == "a"
    # Unscoped keys, user or admin, see both tenants' profiles.
    for key in (USER, ADMIN):
        assert {"prof-a", "prof-b"} <= set(names(tenants, "/v1/profiles", key, "name"))
        assert {"prof-a", "prof-b"} <= set(names(tenants, "/v1/models", key, "id"))
        assert call(tenants, "GET", "/v1/profiles/prof-b", None, key).json()["system_prompt"] == SECRET


def test_user_keys_see_no_server_path(tenants: TestClient, tmp_path: Path) -> None:
    folder = str(tmp_path / "adapters" / "style")
    for key in (USER, TENANT_A):
        listed = call(tenants, "GET", "/v1/adapters", None, key)
        (adapter,) = listed.json()["data"]
        assert adapter["name"] == "style" and adapter["rank"] == 8 and adapter["fingerprint"]
        assert adapter["base_model"] and adapter["loaded_at"] > 0
        assert "path" not in adapter and "manifest" not in adapter
        models = call(tenants, "GET", "/v1/models", None, key)
        card = call(tenants, "GET", "/v1/models/style", None, key).json()
        assert card["root"] is None
        for resp in (listed, models):
            assert str(tmp_path) not in resp.text, key
    # The admin key still sees where each adapter lives and how it was made.
    (adapter,) = call(tenants, "GET", "/v1/adapters", None, ADMIN).json()["data"]
    assert adapter["path"] == folder and adapter["manifest"]["base_fingerprint"]
    assert call(tenants, "GET", "/v1/models/style", None, ADMIN).json()["root"] == folder


BAD_IDS = ["a\u0000b", "\u202e rtl", "x\u200fy", "tab\there", "c1\u0085", "iso\u2066late"]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_document_ids_refuse_control_characters(tenants: TestClient, bad: str) -> None:
    doc = {"documents": [{"id": bad, "text": "Some text."}]}
    resp = call(tenants, "POST", "/v1/collections/a/documents", doc, ADMIN)
    assert error(resp, 400, "invalid_request_error")["param"] == "documents.0.id"
    files = {"file": ("note.txt", b"Some text.", "text/plain")}
    upload = tenants.post("/v1/collections/a/files", files=files, data={"id": bad}, headers=bearer(ADMIN))
    assert error(upload, 400, "invalid_request_error")["param"] == "id"
    listed = call(tenants, "GET", "/v1/collections/a/documents", None, ADMIN).json()["data"]
    assert listed == []  # nothing was written


def test_printable_ids_still_pass(tenants: TestClient) -> None:
    ids = ["café/日本語.md", "a b-c_d.e", "emoji-\U0001f600"]
    doc = {"documents": [{"id": i, "text": f"Text of {n}."} for n, i in enumerate(ids)]}
    assert call(tenants, "POST", "/v1/collections/a/documents", doc, ADMIN).status_code == 200
    listed = call(tenants, "GET", "/v1/collections/a/documents", None, ADMIN).json()["data"]
    assert sorted(d["id"] for d in listed) == sorted(ids)


def test_file_names_and_folder_sync_refuse_control_characters(tenants: TestClient, tmp_path: Path) -> None:
    files = {"file": ("\u202etxt.exe.md", b"Some text.", "text/markdown")}
    upload = tenants.post("/v1/collections/a/files", files=files, headers=bearer(ADMIN))
    assert error(upload, 400, "invalid_request_error")["param"] == "id"
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "fine.md").write_text("Fine text.")
    (folder / "rtl\u200f.md").write_text("Sneaky text.")
    library: Library = tenants.app.state.library  # type: ignore[attr-defined]
    with pytest.raises(InvalidDocument) as exc:
        library.open("a").upsert(collect([folder]))  # what `ragtune ingest` and `sync` do
    assert exc.value.param == "id" and "U+200F" in exc.value.message
    with pytest.raises(InvalidDocument):
        library.open("a").upsert([Document("nul\x00id", "Text.")])


def test_ids_stored_before_the_rule_stay_readable_and_deletable(
    tenants: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    library: Library = tenants.app.state.library  # type: ignore[attr-defined]
    with monkeypatch.context() as m:
        # as data written by older versions
        m.setattr("ragtune.retrieval.documents.id_problem", lambda _: None)
        library.open("a").upsert([Document("old\u202eid", "Stored long ago.")])
    path = "/v1/collections/a/documents/old%E2%80%AEid"
    assert call(tenants, "GET", path, None, USER).json()["text"] == "Stored long ago."
    assert call(tenants, "DELETE", path, None, ADMIN).json()["deleted"] is True
