"""What only the PostgreSQL store has: a URL that may not answer, a change log replicas follow."""
# ruff: noqa: F811  (fixtures imported from the fixture modules are redefined as arguments)

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pg_server
import pytest
from retrieval_fixtures import EMBEDDER, CountingEmbedder, embedder, settings  # noqa: F401
from store_fixtures import postgres  # noqa: F401

from ragtune.core.errors import InvalidDocument, RagtuneError, StoreUnavailable
from ragtune.retrieval import Document, Library
from ragtune.retrieval.storage import hide_password


def test_an_unreachable_store_is_a_clear_error_without_the_password(tmp_path: Path) -> None:
    url = "postgresql://ragtune:s3cret-pw@127.0.0.1:1/ragtune"
    with pytest.raises(StoreUnavailable) as caught:
        Library(tmp_path, settings(store_url=url))
    message = str(caught.value)
    assert "postgresql://ragtune:***@127.0.0.1:1/ragtune" in message and "s3cret" not in message
    assert "RAGTUNE_RETRIEVAL__STORE_URL" in message and caught.value.status_code == 503
    with pytest.raises(RagtuneError, match="postgresql:// URL, got 'mysql://u:\\*\\*\\*@h/db'"):
        Library(tmp_path, settings(store_url="mysql://u:pw@h/db"))
    assert hide_password("postgresql://u@h/db") == "postgresql://u@h/db"


def test_a_replica_follows_the_change_log(
    tmp_path: Path,
    embedder: CountingEmbedder,
    postgres,  # noqa: ANN001
) -> None:
    """Replica B catches up from the few rows of `changes`, not by listing every chunk id."""
    url = postgres.create_database("follow")
    a, b = (
        Library(tmp_path / n, settings(store_url=url), embedders={EMBEDDER: embedder}) for n in ("a", "b")
    )
    ca = a.create("kb")
    ca.upsert([Document(f"d{i}", f"document number {i} about trains") for i in range(20)])
    cb = b.open("kb")
    listed = []
    ca.upsert([Document("late", "a late note about harbor ferries")])
    ca.delete(["d3"])
    from ragtune.retrieval.store_pg import PgTxn

    original = PgTxn.chunk_ids
    PgTxn.chunk_ids = lambda self: listed.append(1) or original(self)  # type: ignore[method-assign]
    try:
        assert [h.document_id for h in cb.search("harbor ferries", k=1, mode="sparse")] == ["late"]
    finally:
        PgTxn.chunk_ids = original  # type: ignore[method-assign]
    assert not listed
    assert cb.stats()["documents"] == 20 and cb.stats()["consistent"] and cb.check()
    a.close()
    b.close()


def test_the_change_log_is_pruned_and_a_replica_behind_it_still_catches_up(
    tmp_path: Path,
    embedder: CountingEmbedder,
    postgres,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ragtune.retrieval import store_pg_txn

    monkeypatch.setattr(store_pg_txn, "CHANGES_KEPT", 4)
    monkeypatch.setattr(store_pg_txn, "PRUNE_EVERY", 2)
    url = postgres.create_database("prune")
    a, b = (
        Library(tmp_path / n, settings(store_url=url), embedders={EMBEDDER: embedder}) for n in ("a", "b")
    )
    ca = a.create("kb")
    ca.upsert([Document("d0", "document zero about trains")])
    cb = b.open("kb")
    assert [h.document_id for h in cb.search("trains", k=1, mode="sparse")] == ["d0"]
    for i in range(1, 12):  # B is now 11 writes behind; the log keeps 4 to 5
        ca.upsert([Document(f"d{i}", f"document {i} about harbor ferry number {i}")])
    ca.delete(["d0"])
    with a.backend.connection() as conn:  # type: ignore[attr-defined]
        kept = conn.execute("SELECT count(*) FROM changes").fetchone()[0]
    assert kept <= 5, kept
    assert [h.document_id for h in cb.search("trains", k=1, mode="sparse")] == []
    assert {h.document_id for h in cb.search("harbor ferry", k=20, mode="sparse")} == {
        f"d{i}" for i in range(1, 12)
    }
    assert cb.check() and ca.check() and cb.stats()["consistent"]
    a.close()
    b.close()


def test_a_replica_reopens_from_its_local_snapshot_and_fetches_only_what_changed(
    tmp_path: Path,
    embedder: CountingEmbedder,
    postgres,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ragtune.retrieval.library import SNAPSHOTS
    from ragtune.retrieval.store_pg import PgTxn

    url = postgres.create_database("snap")
    fetched: list[int] = []
    original = PgTxn.embeddings

    def counting(self, ids, dim):  # noqa: ANN001, ANN202
        fetched.append(-1 if ids is None else len(ids))
        return original(self, ids, dim)

    monkeypatch.setattr(PgTxn, "embeddings", counting)
    open_a = lambda: Library(tmp_path / "a", settings(store_url=url), embedders={EMBEDDER: embedder})  # noqa: E731
    a = open_a()
    a.create("kb").upsert([Document(f"d{i}", f"document {i} about trains and ferries") for i in range(30)])
    a.close()  # saves the snapshot
    # Another replica writes while A is down: A reopens from its snapshot plus that one chunk.
    b = Library(tmp_path / "b", settings(store_url=url), embedders={EMBEDDER: embedder})
    store_id = b.open("kb").config["store_id"]
    assert (tmp_path / "a" / SNAPSHOTS / store_id / "manifest.json").is_file()
    b.open("kb").upsert([Document("late", "a late note about night buses")])
    b.open("kb").delete(["d0"])
    fetched.clear()
    a = open_a()
    found = a.open("kb")
    assert fetched == [1], fetched  # not every embedding (-1): only the chunk written meanwhile
    assert [h.document_id for h in found.search("night buses", k=1)] == ["late"]
    assert "d0" not in {h.document_id for h in found.search("document 0 trains", k=30)}
    assert found.stats()["consistent"] and found.stats()["documents"] == 30
    # Dropping it removes this replica's snapshot; the other replica prunes its own at start.
    b.drop("kb")
    assert not (tmp_path / "b" / SNAPSHOTS / store_id).exists()
    a.close()
    b.close()


def test_a_lost_database_is_a_503_and_the_replica_recovers(
    tmp_path: Path, embedder: CountingEmbedder
) -> None:
    try:
        server = pg_server.start()  # its own server: this test stops it
    except pg_server.Unavailable as exc:
        pytest.skip(f"no PostgreSQL: {exc}")
    try:
        url = server.create_database("lost")
        lib = Library(tmp_path, settings(store_url=url), embedders={EMBEDDER: embedder})
        c = lib.create("kb")
        c.upsert([Document("a", "the harbor ferry leaves at noon")])
        server.halt()
        with pytest.raises(StoreUnavailable, match=f"PostgreSQL store at {url} failed") as caught:
            c.search("harbor ferry", mode="sparse")
        assert caught.value.status_code == 503
        with pytest.raises(StoreUnavailable):
            c.upsert([Document("b", "a note about night buses")])
        server.start()
        assert [h.document_id for h in c.search("harbor ferry", mode="sparse")] == ["a"]
        c.upsert([Document("b", "a note about night buses")])  # the failed write can be repeated
        assert [h.document_id for h in c.search("night buses", mode="sparse")] == ["b"]
        assert c.stats()["documents"] == 2 and c.stats()["consistent"]
        lib.close()
    finally:
        server.stop()


def test_nul_characters_are_refused_whole_batch(
    tmp_path: Path,
    embedder: CountingEmbedder,
    postgres,  # noqa: ANN001
) -> None:
    """PostgreSQL text cannot hold NUL: a clear 400 for the batch, nothing written."""
    lib = Library(
        tmp_path, settings(store_url=postgres.create_database("nul")), embedders={EMBEDDER: embedder}
    )
    c = lib.create("kb")
    with pytest.raises(InvalidDocument, match="cannot store NUL"):
        c.upsert([Document("ok", "fine text"), Document("bad", "text with a \x00 in it")])
    assert c.list_documents() == [] and c.stats()["chunks"] == 0
    lib.close()


def test_the_server_does_not_start_on_an_unreachable_store(tmp_path: Path, base_model: Path) -> None:
    """The store is opened before the engine: a bad URL fails the start at once, password hidden."""
    from fastapi.testclient import TestClient

    from ragtune.serving.app import create_app
    from ragtune.serving.settings import load_settings

    settings = load_settings(
        models_dir=base_model.parent,
        indexes_dir=tmp_path / "indexes",
        retrieval={"store_url": "postgresql://ragtune:pw-123@127.0.0.1:1/ragtune"},
    )
    engines: list[int] = []

    def engine_factory():  # noqa: ANN202
        engines.append(1)
        raise AssertionError("the engine must not start")

    app = create_app(settings, engine_factory=engine_factory)
    pattern = r"postgresql://ragtune:\*\*\*@127.0.0.1:1/ragtune"
    with pytest.raises(StoreUnavailable, match=pattern) as caught, TestClient(app):
        pass
    assert "pw-123" not in str(caught.value) and not engines


WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[2])
    from pathlib import Path
    from retrieval_fixtures import HashEmbedder, settings
    from ragtune.retrieval import Document, Library

    lib = Library(Path(sys.argv[1]), settings(store_url=sys.argv[3]), embedders={"hash": HashEmbedder()})
    c = lib.open("kb")
    words = "lift drag wing shock flow heat boundary layer pressure nozzle".split()
    for batch in range(10_000):
        docs = [Document(f"b{batch}-{i}", " ".join(words[(batch + i + j) % 10] for j in range(120)))
                for i in range(10)]
        c.upsert(docs)
        print(batch, flush=True)
    """
)


def test_kill_9_mid_ingest_loses_at_most_the_open_batch(tmp_path: Path, postgres) -> None:  # noqa: ANN001
    """The SQLite crash test (tests/test_retrieval_ingest.py) on PostgreSQL: a writer process
    killed inside a batch leaves whole batches only, and its row lock goes with it."""
    from retrieval_fixtures import HashEmbedder

    url = postgres.create_database("crash")
    lib = Library(tmp_path, settings(store_url=url), embedders={"hash": HashEmbedder()})
    watcher = lib.create("kb", embedder="hash")  # another replica holding the collection open
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path / "writer"), str(Path(__file__).parent), url],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        text=True,
    )
    assert proc.stdout is not None
    committed = -1
    deadline = time.monotonic() + 120
    while committed < 3 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        committed = int(line)
    time.sleep(0.05)  # land inside the next batch
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert committed >= 3, "the writer never committed"
    stats = watcher.stats()
    assert stats["consistent"] and stats["documents"] % 10 == 0 and stats["documents"] >= 10 * (committed + 1)
    lib.close()
    lib = Library(tmp_path, settings(store_url=url), embedders={"hash": HashEmbedder()})
    c = lib.open("kb")
    stats = c.stats()
    assert stats["consistent"] and c.check(), stats
    assert stats["documents"] % 10 == 0 and stats["chunks"] == stats["vectors"]
    assert c.search("nozzle pressure", mode="sparse", k=3)
    c.upsert([Document("after", "the collection still takes writes after the crash")])  # lock released
    assert c.get("after").text.startswith("the collection")
    lib.close()
