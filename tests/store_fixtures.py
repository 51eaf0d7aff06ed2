"""Fixtures that run a test against every document store: SQLite files and PostgreSQL.

`store_url` is parametrised: None (SQLite under tmp_path) and a fresh database on one
throwaway PostgreSQL server per test session (tests/pg_server.py). Where no PostgreSQL can be
started, its cases are skipped with the reason.
"""
# ruff: noqa: F811  (pytest fixtures imported from retrieval_fixtures are redefined as arguments)

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pg_server
import pytest
from retrieval_fixtures import EMBEDDER, CountingEmbedder, embedder, settings  # noqa: F401

from ragtune.retrieval import Library
from ragtune.retrieval.embedder import Embedder


@pytest.fixture(scope="session")
def postgres() -> Iterator[pg_server.Server]:
    try:
        server = pg_server.start()
    except pg_server.Unavailable as exc:
        pytest.skip(f"no PostgreSQL for the store tests: {exc}")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    server: pg_server.Server = request.getfixturevalue("postgres")
    return server.create_database(f"t{uuid.uuid4().hex[:12]}")


MakeLibrary = Callable[..., Library]


@pytest.fixture
def make_library(tmp_path: Path, embedder: CountingEmbedder, store_url: str | None) -> Iterator[MakeLibrary]:
    """Library(...) on this test's store; each call is another process or replica on it."""
    made: list[Library] = []

    def make(embedders: dict[str, Embedder] | None = None, **overrides: object) -> Library:
        lib = Library(
            tmp_path / "indexes",
            settings(store_url=store_url, **overrides),
            embedders=embedders or {EMBEDDER: embedder},
        )
        made.append(lib)
        return lib

    yield make
    for lib in made:
        lib.close()
