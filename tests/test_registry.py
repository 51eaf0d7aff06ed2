"""Adapters and profiles changed over HTTP survive restarts and agree across replicas
(serving/records.py, serving/converge.py), on SQLite and on PostgreSQL.

Each replica is the real app (TestClient, echo engine, real adapter checks and store); two
replicas share one store the way two servers would.
"""
# ruff: noqa: F811  (fixtures imported from store_fixtures are redefined as arguments)

from __future__ import annotations

import logging
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from retrieval_fixtures import embedder  # noqa: F401
from store_fixtures import MakeLibrary, make_library, postgres, store_url  # noqa: F401

from ragtune.core.adapters import adapter_fingerprint
from ragtune.core.packing import STORE_COPIES
from ragtune.retrieval import Library
from ragtune.serving import records as serving_records
from ragtune.serving.app import create_app
from ragtune.serving.records import open_records
from ragtune.serving.settings import load_settings
from tests.conftest import make_lora_adapter, wait_until
from tests.doubles import EchoEngine

POLL_S = 0.05


@pytest.fixture(scope="module")
def tokenizer(base_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model)


@pytest.fixture(scope="module")
def loras(base_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two adapters with different weights, so different fingerprints."""
    root = tmp_path_factory.mktemp("loras")
    return {
        "one": make_lora_adapter(base_model, root / "one", seed=1),
        "two": make_lora_adapter(base_model, root / "two", seed=2),
    }


@pytest.fixture
def start(
    tmp_path: Path, base_model: Path, tokenizer: Any, store_url: str | None, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Any]:
    """`with start(adapters_dir, **serving) as client`: a replica on this test's store."""
    monkeypatch.chdir(tmp_path)

    @contextmanager
    def replica(adapters_dir: Path, **serving: Any) -> Iterator[TestClient]:
        settings = load_settings(
            models_dir=base_model.parent,
            adapters_dir=adapters_dir,
            indexes_dir=tmp_path / "indexes",
            retrieval={"store_url": store_url, "store_timeout": 1.0},  # a lost PostgreSQL: 503 after 1 s
            serving={"registry_poll_s": POLL_S, **serving},
        )
        library = Library(settings.indexes_dir, settings.retrieval)
        try:
            with TestClient(create_app(settings, engine=EchoEngine(tokenizer), library=library)) as client:
                yield client
        finally:
            library.close()

    return replica


def folder_with(tmp_path: Path, loras: dict[str, Path], **names: str) -> Path:
    """An adapters folder holding `name=lora` copies."""
    root = tmp_path / "adapters"
    for name, lora in names.items():
        shutil.copytree(loras[lora], root / name)
    return root


def models(client: TestClient) -> set[str]:
    return {m["id"] for m in client.get("/v1/models").json()["data"]}


def fingerprint(client: TestClient, name: str) -> str | None:
    entry = client.app.state.adapters.get(name)  # type: ignore[attr-defined]
    return None if entry is None else entry.ref.fingerprint


def chat(client: TestClient, model: str) -> Any:
    return client.post(
        "/v1/chat/completions",
        json={"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]},
    )


def not_served(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    prefix = f"adapter {name} recorded in the store is not served"
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]


def test_http_changes_survive_a_restart(start: Any, tmp_path: Path, loras: dict[str, Path]) -> None:
    adapters = folder_with(tmp_path, loras, style="one")
    with start(adapters) as a:
        assert a.post("/v1/adapters", json={"name": "style", "path": "style"}).status_code == 201
        resp = a.put("/v1/profiles/support", json={"adapter": "style", "top_k": 3})
        assert resp.status_code == 201
    with start(adapters) as b:  # a new server on the same store, nothing in its config
        assert {"style", "support"} <= models(b)
        assert fingerprint(b, "style") == adapter_fingerprint(loras["one"])
        assert b.get("/v1/profiles/support").json()["top_k"] == 3
        assert chat(b, "support").status_code == 200


def test_deletes_survive_a_restart_even_for_config_entries(
    start: Any, tmp_path: Path, loras: dict[str, Path]
) -> None:
    adapters = folder_with(tmp_path, loras, style="one")
    config = {"adapters": {"house": "style"}, "profiles": {"cfg": {"top_k": 2}, "kept": {"top_k": 4}}}
    with start(adapters, **config) as a:
        assert {"house", "cfg", "kept"} <= models(a)
        assert a.delete("/v1/adapters/house").status_code == 200
        assert a.delete("/v1/profiles/cfg").status_code == 200
    with start(adapters, **config) as b:
        assert "house" not in models(b) and "cfg" not in models(b)
        assert b.get("/v1/profiles/cfg").status_code == 404
        assert chat(b, "house").status_code == 404
        assert b.get("/v1/profiles/kept").json()["top_k"] == 4  # untouched config entries stay


def test_a_change_through_one_replica_is_served_by_another(
    start: Any, tmp_path: Path, loras: dict[str, Path]
) -> None:
    adapters = folder_with(tmp_path, loras, style="one", **{"style-v2": "two"})  # one shared volume
    fp_one, fp_two = adapter_fingerprint(loras["one"]), adapter_fingerprint(loras["two"])
    with start(adapters) as a, start(adapters) as b:
        assert a.post("/v1/adapters", json={"name": "style", "path": "style"}).status_code == 201
        assert a.put("/v1/profiles/support", json={"adapter": "style"}).status_code == 201
        wait_until(lambda: {"style", "support"} <= models(b), "B serves A's adapter and profile")
        assert fingerprint(b, "style") == fp_one and chat(b, "support").status_code == 200

        resp = b.post("/v1/adapters", json={"name": "style", "path": "style-v2"})  # replaced through B
        assert resp.status_code == 200 and resp.json()["replaced"]
        wait_until(lambda: fingerprint(a, "style") == fp_two, "A follows B's replacement")
        assert b.delete("/v1/profiles/support").status_code == 200
        wait_until(lambda: a.get("/v1/profiles/support").status_code == 404, "A drops the profile")
        assert a.delete("/v1/adapters/style").status_code == 200
        wait_until(lambda: "style" not in models(b), "B unloads the adapter")
        assert chat(b, "style").status_code == 404


def forget_copies(store_url: str | None, tmp_path: Path) -> None:
    """Delete the store's copies of adapter files, as a record written before they were kept."""
    if store_url is None:
        with sqlite3.connect(tmp_path / "indexes" / serving_records.SQLITE_FILE) as conn:
            conn.execute("DELETE FROM adapter_files")
        return
    import psycopg

    with psycopg.connect(store_url, autocommit=True) as conn:
        conn.execute("DELETE FROM ragtune_adapter_files")


def test_a_changed_or_missing_folder_serves_the_store_copy(
    start: Any,
    tmp_path: Path,
    loras: dict[str, Path],
    store_url: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    adapters = folder_with(tmp_path, loras, style="one")
    fp_one, fp_two = adapter_fingerprint(loras["one"]), adapter_fingerprint(loras["two"])
    copy = adapters.resolve() / STORE_COPIES / fp_one
    with start(adapters) as a:
        assert a.post("/v1/adapters", json={"name": "style", "path": "style"}).status_code == 201
    shutil.rmtree(adapters / "style")
    shutil.copytree(loras["two"], adapters / "style")  # other weights under the recorded name
    with caplog.at_level(logging.INFO, logger="ragtune.serving"), start(adapters) as b:
        assert fingerprint(b, "style") == fp_one and chat(b, "style").status_code == 200
        assert b.app.state.adapters.get("style").ref.path == copy  # type: ignore[attr-defined]
    assert adapter_fingerprint(adapters / "style") == fp_two  # the operator's folder is left alone
    assert any(f"holds fingerprint {fp_two}, not the recorded {fp_one}" in m for m in caplog.messages)

    shutil.rmtree(adapters / "style")
    shutil.rmtree(copy)
    with start(adapters) as c:  # nothing on disk: unpacked from the store again
        assert fingerprint(c, "style") == fp_one and chat(c, "style").status_code == 200

    caplog.clear()
    shutil.rmtree(copy)
    forget_copies(store_url, tmp_path)
    with caplog.at_level(logging.ERROR, logger="ragtune.serving"), start(adapters) as d:
        assert "style" not in models(d) and chat(d, "style").status_code == 404
    [line] = not_served(caplog, "style")
    assert f"{adapters.resolve() / 'style'} is missing (recorded fingerprint {fp_one})" in line
    assert "the store holds no copy" in line


def test_a_replica_with_other_files_serves_the_recorded_version(
    start: Any, tmp_path: Path, loras: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """B serves 'style' from its own disk (weights two); A records 'style' with weights one."""
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    shutil.copytree(loras["one"], a_dir / "style")
    shutil.copytree(loras["two"], b_dir / "style")
    fp_one, fp_two = adapter_fingerprint(loras["one"]), adapter_fingerprint(loras["two"])
    logs = caplog.at_level(logging.INFO, logger="ragtune.serving")
    with logs, start(a_dir) as a, start(b_dir, adapters={"style": "style"}) as b:
        assert fingerprint(b, "style") == fp_two
        assert a.post("/v1/adapters", json={"name": "style", "path": "style"}).status_code == 201
        wait_until(lambda: fingerprint(b, "style") == fp_one, "B serves the recorded version")
        assert a.put("/v1/profiles/support", json={"adapter": "style"}).status_code == 201
        wait_until(lambda: b.get("/v1/profiles/support").status_code == 200, "B has the profile")
        assert chat(b, "support").status_code == 200 and chat(a, "support").status_code == 200
    assert any(f"holds fingerprint {fp_two}, not the recorded {fp_one}" in m for m in caplog.messages)


def test_replicas_on_separate_disks_share_adapters_through_the_store(
    start: Any, tmp_path: Path, loras: dict[str, Path], make_library: MakeLibrary
) -> None:
    """A's adapters folder holds the adapter; B's is empty (another machine): B serves A's
    versions from the store's copies, and a replaced or deleted version leaves the store."""
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    shutil.copytree(loras["one"], a_dir / "style")
    shutil.copytree(loras["two"], a_dir / "style-v2")
    fp_one, fp_two = adapter_fingerprint(loras["one"]), adapter_fingerprint(loras["two"])
    records = open_records(make_library().backend)
    with start(a_dir) as a, start(b_dir) as b:
        assert a.post("/v1/adapters", json={"name": "style", "path": "style"}).status_code == 201
        wait_until(lambda: fingerprint(b, "style") == fp_one, "B serves A's adapter")
        assert chat(b, "style").status_code == 200
        assert adapter_fingerprint(b_dir / STORE_COPIES / fp_one) == fp_one
        assert not (b_dir / "style").exists()

        assert a.post("/v1/adapters", json={"name": "style", "path": "style-v2"}).status_code == 200
        wait_until(lambda: fingerprint(b, "style") == fp_two, "B follows the replacement")
        assert records.files(fp_one) is None  # no row names the old version any more
        assert records.files(fp_two) is not None
        assert a.delete("/v1/adapters/style").status_code == 200
        wait_until(lambda: "style" not in models(b), "B unloads it")
        assert records.files(fp_two) is None
    records.close()


@contextmanager
def store_down(
    client: TestClient, store_url: str | None, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[None]:
    """PostgreSQL: the server stopped. SQLite: another process holds the record's write lock."""
    if store_url is None:
        other = sqlite3.connect(tmp_path / "indexes" / serving_records.SQLITE_FILE, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()
        return
    server = request.getfixturevalue("postgres")
    assert client.app.state.library.backend.pool.timeout == 1.0  # type: ignore[attr-defined]
    server.halt()
    try:
        yield
    finally:
        server.start()


def test_an_unreachable_store_is_a_503_and_changes_nothing(
    start: Any,
    tmp_path: Path,
    loras: dict[str, Path],
    store_url: str | None,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(serving_records, "BUSY_TIMEOUT_MS", 200)  # SQLite: a lock waited on briefly
    adapters = folder_with(tmp_path, loras, style="one", other="two")
    fp_one, fp_two = adapter_fingerprint(loras["one"]), adapter_fingerprint(loras["two"])
    with start(adapters) as a:
        engine: EchoEngine = a.app.state.engine  # type: ignore[attr-defined]
        assert a.post("/v1/adapters", json={"name": "style", "path": "style"}).status_code == 201
        assert a.put("/v1/profiles/p", json={"top_k": 2}).status_code == 201
        with store_down(a, store_url, tmp_path, request):
            answers = [
                a.post("/v1/adapters", json={"name": "style", "path": "other"}),
                a.delete("/v1/adapters/style"),
                a.put("/v1/profiles/q", json={"top_k": 3}),
                a.put("/v1/profiles/p", json={"top_k": 9}),
                a.delete("/v1/profiles/p"),
            ]
            for resp in answers:
                assert resp.status_code == 503, resp.text
                error = resp.json()["error"]
                assert error["code"] == "store_unavailable" and error["type"] == "server_error"
                assert "failed" in error["message"]
            assert fingerprint(a, "style") == fp_one  # the old version is still served
            assert engine.removed[-1].fingerprint == fp_two  # the new one left the engine unserved
            assert a.get("/v1/profiles/q").status_code == 404
            assert a.get("/v1/profiles/p").json()["top_k"] == 2
            assert chat(a, "style").status_code == 200
            if store_url is not None:  # a lost database: /health says so (SQLite here is only locked)
                health = a.get("/health")
                assert health.status_code == 503 and "PostgreSQL store at" in health.json()["detail"]
        # The store is back (PostgreSQL: once the pool has reconnected): the same writes go through.
        wait_until(lambda: a.put("/v1/profiles/q", json={"top_k": 3}).status_code == 201, "a write", 60)
        assert a.delete("/v1/adapters/style").status_code == 200
        assert a.get("/health").status_code == 200
    with start(adapters) as b:
        assert "q" in models(b) and "style" not in models(b)
        assert b.get("/v1/profiles/p").json()["top_k"] == 2


def test_replicas_starting_and_writing_at_once_agree_on_one_order(make_library: MakeLibrary) -> None:
    """Four replicas create the record at once, then write: every seq once, the last write wins."""
    libraries = [make_library() for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        records = list(pool.map(lambda lib: open_records(lib.backend), libraries))

        def write(replica: int) -> list[tuple[int, str, dict[str, int]]]:
            done = []
            for j in range(15):
                name, value = f"p{j % 5}", {"replica": replica, "j": j}
                done.append((records[replica].put("profile", name, value), name, value))
            return done

        written = [w for part in pool.map(write, range(4)) for w in part]
    assert sorted(seq for seq, _, _ in written) == list(range(1, 61))
    last = {name: (seq, value) for seq, name, value in sorted(written, key=lambda w: w[0])}
    for r in records:  # every replica reads the same rows: the newest per name, in seq order
        rows = r.since(0)
        assert [(row.seq, row.name, row.value) for row in rows] == sorted(
            (seq, name, value) for name, (seq, value) in last.items()
        )
        assert r.since(rows[2].seq) == rows[3:]
        r.close()


def test_a_profile_recorded_with_removed_options_is_served_without_them(
    start: Any, tmp_path: Path, make_library: MakeLibrary, caplog: pytest.LogCaptureFixture
) -> None:
    """Extractive grounding's former calibration (serving.options.REMOVED), recorded by an
    earlier version: the profile is served, its other fields kept, the log names what was
    dropped; sent now, the same field is a 400 naming it."""
    records = open_records(make_library().backend)
    old = {
        "collection": "kb",
        "top_k": 2,
        "grounding": "extractive",
        "quote_window": 0.5,
        "model_abstains": False,
    }
    records.put("profile", "old", old)
    records.close()
    with caplog.at_level(logging.WARNING), start(tmp_path / "adapters") as a:
        profile = a.get("/v1/profiles/old").json()
        assert (profile["collection"], profile["top_k"], profile["grounding"]) == ("kb", 2, "extractive")
        assert "quote_window" not in profile and "model_abstains" not in profile
        refused = a.put("/v1/profiles/new", json={"quote_window": 0.5})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "quote_window"
    logged = [r.getMessage() for r in caplog.records if "removed options" in r.getMessage()]
    assert logged and "model_abstains, quote_window" in logged[0], logged
