"""What a newcomer runs into first: each stumble found on a clean clone, fixed and kept fixed.

CLI commands run through typer's runner with the real MiniLM embedder; HTTP through the app
with the echo engine (tests/doubles.py) and a real library; `ragtune serve` on a busy port as
a real subprocess.
"""

# ruff: noqa: F811  (pytest fixtures imported from retrieval_fixtures are redefined as arguments)

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import typer
from fastapi.testclient import TestClient
from retrieval_fixtures import EMBEDDER, FIXTURES, CountingEmbedder, embedder, library, settings  # noqa: F401
from typer.testing import CliRunner

from ragtune.core.errors import InvalidFilter
from ragtune.retrieval import Document, Library
from ragtune.serving.app import create_app
from ragtune.serving.builtin import sync_demo_documents
from ragtune.serving.settings import load_settings
from tests.doubles import EchoEngine

REPO = Path(__file__).resolve().parents[1]
FILES = FIXTURES / "files"
BASE = "smollm2-135m-instruct"


@pytest.fixture
def cli(tmp_path: Path, embedder: CountingEmbedder, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """The retrieval and eval commands on a root app like ragtune.cli's, with the test embedder
    injected."""
    from ragtune.evaluation import cli as evaluation_cli
    from ragtune.retrieval import cli as retrieval_cli
    from ragtune.retrieval import library as library_module

    real = library_module.Library
    monkeypatch.setattr(
        library_module, "Library", lambda root, s, **kw: real(root, s, embedders={EMBEDDER: embedder})
    )
    app = typer.Typer()

    @app.callback()
    def main(ctx: typer.Context) -> None:
        ctx.obj = SimpleNamespace(retrieval=settings(), indexes_dir=tmp_path / "indexes")

    retrieval_cli.register(app)
    evaluation_cli.register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def _counts(output: str) -> dict[str, int]:
    return {k: int(v) for v, k in re.findall(r"(\d+) (added|updated|unchanged|deleted)", output)}


# -- sync after ingest -------------------------------------------------------------------------
def test_sync_after_ingest_keeps_unchanged_files_and_deletes_gone_ones(cli, tmp_path: Path) -> None:  # noqa: ANN001
    folder = tmp_path / "docs"
    shutil.copytree(FILES, folder)
    r = cli("ingest", folder, "-C", "kb")
    assert r.exit_code == 0 and _counts(r.output) == {"added": 4, "updated": 0, "unchanged": 0}, r.output
    (folder / "notes.txt").unlink()
    r = cli("sync", folder, "-C", "kb")
    assert r.exit_code == 0, r.output
    assert _counts(r.output) == {"added": 0, "updated": 0, "unchanged": 3, "deleted": 1}
    ids = [d["id"] for d in json.loads(cli("collections", "docs", "kb", "--json").stdout)]
    assert sorted(ids) == ["guide.md", "inlet.pdf", "page.html"]
    # and ingesting the folder again after a sync changes nothing either
    assert _counts(cli("ingest", folder, "-C", "kb").output) == {"added": 0, "updated": 0, "unchanged": 3}


# -- errors that name what to fix ---------------------------------------------------------------
def test_eval_on_a_missing_dataset_folder_says_so(cli, tmp_path: Path) -> None:  # noqa: ANN001
    r = cli("eval", "retrieval", "--dataset", tmp_path / "cranfield")
    assert r.exit_code == 2
    assert "no such folder" in " ".join(r.output.split()), r.output


def test_deleting_an_unknown_document_id_fails_and_deletes_nothing(cli) -> None:  # noqa: ANN001
    assert cli("ingest", FILES, "-C", "kb").exit_code == 0
    r = cli("collections", "delete", "kb", "notes.txt", "nosuch")
    assert r.exit_code != 0 and "no document 'nosuch'" in " ".join(r.output.split()), r.output
    assert json.loads(cli("collections", "stats", "kb", "--json").stdout)["documents"] == 4
    r = cli("collections", "delete", "kb", "notes.txt")
    assert r.exit_code == 0 and "deleted 1" in r.output


def test_filter_on_a_field_no_document_has_is_an_error(library: Library) -> None:
    kb = library.create("kb")
    kb.upsert(
        [
            Document(
                "a", "Wings stall when the angle of attack is too high.", "Stall", "x", {"topic": "aero"}
            ),
            Document(
                "b", "Bread rises because yeast makes gas.", "Bread", "y", {"topic": "food", "year": 2020}
            ),
        ]
    )
    with pytest.raises(InvalidFilter, match="unknown filter field 'topc'.*metadata fields here: topic, year"):
        kb.search("wing", filter={"topc": "aero"})
    with pytest.raises(InvalidFilter, match="'source' is a document field, not metadata"):
        kb.search("wing", filter={"source": "x"})
    with pytest.raises(InvalidFilter, match="unknown filter field 'topc'"):
        kb.delete_where({"topc": "aero"})
    # a field only some documents have is a real filter: it matches those, or nothing, without error
    assert [h.document_id for h in kb.search("bread", filter={"year": 2020})] == ["b"]
    assert kb.search("bread", filter={"year": 1999}) == []
    assert kb.search("bread", filter={"topic": "music"}) == []
    # `$exists` may ask about any field; a filter that matches keeps working as before
    assert kb.search("wing", filter={"reviewed": {"$exists": False}}, k=2)
    assert [h.document_id for h in kb.search("wing", filter={"topic": "aero"})] == ["a"]
    # an empty collection has no fields to compare with: no hits, no error
    assert library.create("empty").search("wing", filter={"anything": 1}) == []


def test_cli_search_with_an_unknown_filter_field(cli) -> None:  # noqa: ANN001
    assert cli("ingest", FILES, "-C", "kb").exit_code == 0
    r = cli("search", "wing", "-C", "kb", "--filter", '{"source": "notes.txt"}')
    assert r.exit_code == 2 and "'source' is a document field" in " ".join(r.output.split()), r.output


# -- the demo's documents --------------------------------------------------------------------------
def test_demo_resync_touches_only_its_own_documents(library: Library, tmp_path: Path) -> None:
    demo = library.create("demo")
    source = tmp_path / "docs.jsonl"
    rows = [{"id": f"d{i}", "title": "Line", "text": f"Fact number {i} about the line."} for i in range(3)]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert sync_demo_documents(demo, source) == {"added": 3, "updated": 0, "unchanged": 0, "deleted": 0}
    demo.upsert([Document("mine", "A note the user added to the demo collection.", "Mine")])
    assert sync_demo_documents(demo, source) == {"added": 0, "updated": 0, "unchanged": 3, "deleted": 0}
    source.write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))  # the demo drops one of its own
    assert sync_demo_documents(demo, source)["deleted"] == 1
    assert sorted(d.id for d in demo.list_documents()) == ["d0", "d1", "mine"]


# -- serve: a busy port, PORT= for make, help pages ------------------------------------------------
def test_serve_on_a_busy_port_fails_before_the_engine_starts(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        env = {**os.environ, "RAGTUNE_MODELS_DIR": str(tmp_path / "no-models")}
        proc = subprocess.run(
            [sys.executable, "-m", "ragtune", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env=env,
        )
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 2, out
    assert f"port {port} on 127.0.0.1 is already in use" in out
    assert "--port" in out and "RAGTUNE_SERVING__PORT" in out and "make demo PORT=" in out
    assert "Started server process" not in out and "vllm" not in out.lower()


def test_make_demo_and_serve_take_a_port() -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    for target in ("demo", "serve"):
        out = subprocess.run(
            ["make", "-n", target, "PORT=8100"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
        assert f"ragtune {target} --port 8100" in out, out


def test_help_pages_show_no_type_beside_flags() -> None:
    from ragtune.cli import app

    result = CliRunner().invoke(app, ["collections", "drop", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0 and "--yes" in result.output
    assert "<bool>" not in result.output and "<str>" in result.output  # a value's type is still shown


# -- HTTP: upload, errors that name the field, the playground page ----------------------------------
@pytest.fixture(scope="module")
def tokenizer(base_model: Path):  # noqa: ANN201
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model)


@pytest.fixture
def client(tmp_path: Path, base_model: Path, tokenizer, embedder: CountingEmbedder) -> Iterator[TestClient]:  # noqa: ANN001
    config = load_settings(
        models_dir=base_model.parent,
        adapters_dir=tmp_path / "adapters",
        indexes_dir=tmp_path / "indexes",
        serving={"profiles": {"notes": {"collection": "notes", "top_k": 2}}},
    )
    (tmp_path / "adapters").mkdir()
    library = Library(config.indexes_dir, settings(), embedders={EMBEDDER: embedder})
    library.create("notes").upsert(
        [Document("cat", "The lighthouse keeper's cat is named Biscuit.", "Cat", metadata={"kind": "pet"})]
    )
    with TestClient(create_app(config, engine=EchoEngine(tokenizer), library=library)) as test_client:
        yield test_client
    library.close()


def _error(resp) -> dict:  # noqa: ANN001
    body = resp.json()
    assert set(body) == {"error"}, body
    return body["error"]


def test_upload_files_through_the_ingest_loaders(client: TestClient) -> None:
    files = [("file", (p.name, p.read_bytes())) for p in sorted(FILES.iterdir())]
    resp = client.post("/v1/collections/notes/files", files=files)
    assert resp.status_code == 200, resp.text
    assert sorted(resp.json()["added"]) == ["guide.md", "inlet.pdf", "notes.txt", "page.html"]
    pdf = client.get("/v1/collections/notes/documents/inlet.pdf").json()
    assert pdf["source"] == "inlet.pdf" and pdf["metadata"]["type"] == "pdf" and pdf["text"].strip()
    hits = client.post("/v1/collections/notes/search", json={"query": "turbofan bypass", "top_k": 1}).json()
    assert hits["data"][0]["document_id"] == "page.html"
    # the same file again is unchanged; a path sent as the file name keeps only the name; an id renames
    guide = (FILES / "guide.md").read_bytes()
    resp = client.post("/v1/collections/notes/files", files=[("file", ("C:\\docs\\guide.md", guide))])
    assert resp.json() == {"added": [], "updated": [], "unchanged": ["guide.md"]}
    resp = client.post("/v1/collections/notes/files", files=[("file", ("g.md", guide))], data={"id": "howto"})
    assert resp.json()["added"] == ["howto"]


@pytest.mark.parametrize(
    ("name", "content", "status", "message"),
    [
        ("report.docx", b"PK\x03\x04", 400, "unsupported file type '.docx'"),
        ("empty.md", b"   \n", 400, "empty.md: no text in this file"),
        ("latin1.txt", "café".encode("latin1"), 400, "latin1.txt: not UTF-8"),
        ("broken.pdf", b"%PDF-1.4 not really", 400, "broken.pdf: not a readable PDF"),
    ],
)
def test_upload_refuses_bad_files_naming_them(
    client: TestClient, name: str, content: bytes, status: int, message: str
) -> None:
    resp = client.post("/v1/collections/notes/files", files=[("file", (name, content))])
    err = _error(resp)
    assert resp.status_code == status and err["param"] == "file" and message in err["message"], err
    assert "ragtune-upload-" not in err["message"]  # no temporary path in the message


def test_upload_to_an_unknown_collection_and_without_a_file(client: TestClient) -> None:
    resp = client.post("/v1/collections/nope/files", files=[("file", ("a.txt", b"text"))])
    assert resp.status_code == 404 and _error(resp)["code"] == "collection_not_found"
    resp = client.post("/v1/collections/notes/files", data={"id": "x"})
    assert resp.status_code == 400 and _error(resp)["param"] == "file"


def test_empty_question_names_messages_and_missing_adapter_names_path(client: TestClient) -> None:
    resp = client.post(
        "/v1/chat/completions", json={"model": "notes", "messages": [{"role": "user", "content": "  "}]}
    )
    assert resp.status_code == 400 and _error(resp)["param"] == "messages"
    resp = client.post("/v1/completions", json={"model": "notes", "prompt": ""})
    assert resp.status_code == 400 and _error(resp)["param"] == "prompt"
    resp = client.post("/v1/adapters", json={"name": "house", "path": "no-such-folder"})
    err = _error(resp)
    assert 400 <= resp.status_code < 500 and err["param"] == "path" and "does not exist" in err["message"]


def test_unknown_filter_field_over_http_is_a_400(client: TestClient) -> None:
    resp = client.post("/v1/collections/notes/search", json={"query": "cat", "filter": {"source": "x"}})
    err = _error(resp)
    assert resp.status_code == 400 and err["code"] == "invalid_filter" and "document field" in err["message"]
    resp = client.post(
        "/v1/chat/completions",
        json={
            "model": "notes",
            "messages": [{"role": "user", "content": "cat?"}],
            "rag": {"filter": {"knd": "pet"}},
        },
    )
    assert resp.status_code == 400 and "unknown filter field 'knd'" in _error(resp)["message"]
    resp = client.post("/v1/collections/notes/search", json={"query": "cat", "filter": {"kind": "pet"}})
    assert [h["document_id"] for h in resp.json()["data"]] == ["cat"]


def test_playground_page_and_its_files_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        resp = client.get(asset)
        assert resp.status_code == 200 and resp.content, asset
    assert "http://" not in page.text and "https://" not in page.text  # nothing fetched from elsewhere
    js = client.get("/static/app.js").text
    assert "/v1/chat/completions" in js and "/files" in js and "Authorization" in js
    assert client.get("/static/nope.js").status_code == 404


def test_readme_python_example_bounds_the_answer() -> None:
    """The README's openai example must set temperature and max_tokens: without them a model
    with no adapter rambled for 2,000 tokens. (It runs against a live server in test_chat_cli.)"""
    code = readme_python_example()
    assert re.search(r"temperature\s*=\s*0", code) and re.search(r"max_tokens\s*=\s*\d+", code), code


def readme_python_example() -> str:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    return next(b for b in blocks if "chat.completions.create" in b)


# -- against the live server (the real engine) -----------------------------------------------------
@pytest.mark.engine
def test_server_log_says_ready_once_and_names_each_adapter(live_server) -> None:  # noqa: ANN001
    log = live_server.log.read_text()
    assert log.count(f"ragtune ready on {live_server.url}") == 1, log[-3000:]
    assert "adapter style loaded from" in log
    assert log.index("adapter style loaded from") < log.index("ragtune ready on")
    # vLLM's and torch's notices about the machine (Triton, tcmalloc, NUMA, deprecations) stay out
    start = log[: log.index("ragtune ready on")]
    for notice in ("WARNING", "Warning", "Triton", "tcmalloc", "Loading safetensors"):
        assert notice not in start, start[-3000:]


@pytest.mark.engine
def test_readme_python_example_runs_as_written(live_server) -> None:  # noqa: ANN001
    http = httpx.Client(base_url=live_server.url, timeout=60)
    assert http.post("/v1/collections", json={"name": "demo"}).status_code == 201
    docs = [
        {"id": "pier", "title": "Pier Street", "text": "Pier Street station opens at 5:15 on weekdays."},
        {"id": "bread", "title": "Bread", "text": "Bread is baked from flour, water, salt and yeast."},
    ]
    http.post("/v1/collections/demo/documents", json={"documents": docs})
    assert http.put("/v1/profiles/demo", json={"collection": "demo", "top_k": 3}).status_code == 201
    code = readme_python_example().replace("http://127.0.0.1:8000/v1", f"{live_server.url}/v1")
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    finally:
        http.delete("/v1/profiles/demo")
        http.delete("/v1/collections/demo")
        http.close()
    printed = out.getvalue()
    assert "5:15" in printed.split("\n[1] ")[0], printed  # the answer, from the document
    assert "[1] Pier Street: Pier Street station opens" in printed


@pytest.mark.engine
def test_terminal_chat_streams_answers_and_prints_their_sources(live_server) -> None:  # noqa: ANN001
    http = httpx.Client(base_url=live_server.url, timeout=60)
    assert http.post("/v1/collections", json={"name": "chat-cli"}).status_code == 201
    fact = {
        "id": "quibbleton",
        "title": "The Quibbleton lighthouse",
        "text": "The Quibbleton lighthouse was designed by the architect Ines Varga in 1902.",
    }
    http.post("/v1/collections/chat-cli/documents", json={"documents": [fact]})

    def chat(*args: str, stdin: str) -> subprocess.CompletedProcess[str]:
        cmd = [
            sys.executable,
            "-m",
            "ragtune",
            "chat",
            "--server",
            live_server.url,
            "--max-tokens",
            "32",
            *args,
        ]
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=300)

    try:
        r = chat(
            "--model", BASE, "--collection", "chat-cli", stdin="Who designed the Quibbleton lighthouse?\n"
        )
        assert r.returncode == 0, r.stderr
        assert "> Who designed the Quibbleton lighthouse?" in r.stdout and "Varga" in r.stdout
        assert "sources:" in r.stdout and "[1] The Quibbleton lighthouse (quibbleton, score" in r.stdout
        assert r.stdout.index("Varga") < r.stdout.index("sources:")  # sources under the answer
        # Extractive grounding: the one source, quoted with its marker.
        r = chat(
            "--model", BASE, "--collection", "chat-cli", "--grounding", "extractive", "--max-tokens", "48",
            stdin="Who designed the Quibbleton lighthouse?\n",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert "designed by the architect Ines Varga in 1902 [1]." in r.stdout, r.stdout
        # The `grounded` profile's relevance floor: the one source is off the question's topic.
        r = chat("--model", "grounded", "--collection", "chat-cli", stdin="What is the capital of France?\n")
        assert r.returncode == 0 and "The sources do not answer this question." in r.stdout, r.stdout
        # Without a collection it refuses rather than answer from memory.
        r = chat("--model", "grounded", stdin="What is the capital of France?\n")
        assert r.returncode == 1 and "(field: rag.collection)" in r.stderr, r.stderr
        # Any other `rag` field: --rag KEY=VALUE. A question that fails is reported on stderr, the
        # next is asked, and a pipe's exit says so.
        r = chat("--model", BASE, "--collection", "chat-cli", "--rag", "top_k=0", stdin="hi\nho\n")
        assert r.returncode == 1 and r.stderr.count("(field: rag.top_k)") == 2, r.stderr
        assert "> ho" in r.stdout, r.stdout
        # Calibration is a profile's, not a request's: the error says where it is set.
        r = chat("--model", BASE, "--collection", "chat-cli", "--rag", "min_similarity=0.67", stdin="hi\n")
        assert r.returncode == 1 and "profile setting" in r.stderr, r.stderr
        r = chat("--rag", "min_similarity", stdin="hi\n")
        assert r.returncode == 2 and "KEY=VALUE" in r.stderr, r.stderr
        r = chat("--model", BASE, "--no-rag", stdin="What is the capital of France?\n\n/quit\nnot asked\n")
        assert r.returncode == 0 and "Paris" in r.stdout and "sources:" not in r.stdout, r.stdout
        assert "not asked" not in r.stdout
        r = chat("--model", "no-such-model", stdin="hello\n")
        assert r.returncode == 2 and "no model 'no-such-model'" in r.stderr
    finally:
        http.delete("/v1/collections/chat-cli")
        http.close()


def test_terminal_chat_in_process_needs_no_server(
    tmp_path: Path, base_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ragtune chat --in-process`: the server starts in a thread of the chat's own process, on
    a loopback port, and stops with it. (The echo engine stands in for vLLM: one real engine per
    test session, and the live server holds it; the HTTP path is the real one.)"""
    from transformers import AutoTokenizer

    from ragtune.cli import app as cli
    from ragtune.serving import app as app_module

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAGTUNE_MODELS_DIR", str(base_model.parent))
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    made: list[str] = []

    def echo_app(settings, **kwargs):  # noqa: ANN001, ANN003, ANN202
        made.append(settings.serving.host)
        return create_app(settings, engine=EchoEngine(tokenizer))

    monkeypatch.setattr(app_module, "create_app", echo_app)
    threads = set(threading.enumerate())
    result = CliRunner().invoke(
        cli, ["chat", "--in-process", "--model", BASE, "--no-rag"], input="Say the word granite.\n"
    )
    assert result.exit_code == 0, result.output
    assert made == ["127.0.0.1"]  # loopback, whatever the settings say
    assert "> Say the word granite." in result.output and "granite" in result.output.split("> Say")[1]
    assert set(threading.enumerate()) <= threads  # the server's thread ended

    both = CliRunner().invoke(cli, ["chat", "--in-process", "--server", "http://127.0.0.1:9"], input="hi\n")
    assert both.exit_code == 2 and "leave out --server" in both.output, both.output
    assert made == ["127.0.0.1"]  # refused before any server started
