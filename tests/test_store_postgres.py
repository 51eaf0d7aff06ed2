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

from retrieval import Document, Library
from retrieval.errors import InvalidDocument, RagtuneError, StoreUnavailable
from retrieval.storage import hide_password


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
    from retrieval.store_pg import PgTxn

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

    from serving.app import create_app
    from serving.settings import load_settings

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
    from retrieval import Document, Library

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
