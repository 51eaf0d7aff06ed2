"""File loaders, folder sync, the CLI, and crash safety under a real `kill -9`."""
# ruff: noqa: F811  (pytest fixtures imported from retrieval_fixtures are redefined as arguments)

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import typer
from retrieval_fixtures import (  # noqa: F401
    EMBEDDER,
    FIXTURES,
    CountingEmbedder,
    HashEmbedder,
    embedder,
    library,
    settings,
)
from typer.testing import CliRunner

from ragtune.core.errors import InvalidDocument
from ragtune.retrieval import Document, Library
from ragtune.retrieval.ingest import collect, load_beir, load_file, plan_sync, sync_documents, upsert_batches

FILES = FIXTURES / "files"
BAD = FIXTURES / "bad"


def test_loaders_read_every_supported_type() -> None:
    docs = {d.id: d for d in collect([FILES])}
    assert set(docs) == {"guide.md", "inlet.pdf", "notes.txt", "page.html"}
    assert docs["guide.md"].title == "Shock waves"
    assert docs["page.html"].title == "Jet engines"
    assert "bypass duct" in docs["page.html"].text and "secret" not in docs["page.html"].text
    assert "color" not in docs["page.html"].text
    assert "Supersonic inlets" in docs["inlet.pdf"].text
    assert docs["notes.txt"].title == "notes" and docs["notes.txt"].metadata["type"] == "txt"
    beir = list(load_beir(FIXTURES / "beir" / "corpus.jsonl"))
    assert (
        len(beir) == 16 and beir[0].title == "Wind tunnel testing" and beir[0].metadata == {"topic": "aero"}
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [("latin1.txt", "not UTF-8 text \\(byte 3 is 0xe9\\)"), ("empty.md", "no text in this file")],
)
def test_bad_files_are_refused_with_the_reason(name: str, message: str) -> None:
    with pytest.raises(InvalidDocument, match=message):
        load_file(BAD / name, name)
    with pytest.raises(InvalidDocument, match=message):
        collect([FILES, BAD / name])  # one bad file refuses the whole batch before any write


def test_malformed_beir_lines_and_missing_paths(tmp_path: Path) -> None:
    bad = tmp_path / "corpus.jsonl"
    bad.write_text('{"_id": "1", "text": "ok"}\n{"_id": "2"}\n')
    with pytest.raises(InvalidDocument, match="corpus.jsonl:2: a BEIR corpus line needs"):
        list(load_beir(bad))
    bad.write_text("{not json\n")
    with pytest.raises(InvalidDocument, match="corpus.jsonl:1: not JSON"):
        list(load_beir(bad))
    with pytest.raises(InvalidDocument, match="no such file"):
        collect([tmp_path / "missing"])
    (tmp_path / "x.docx").write_text("?")
    with pytest.raises(InvalidDocument, match="unsupported file type"):
        load_file(tmp_path / "x.docx", "x")


def test_sync_embeds_only_changed_files_and_deletes_gone_ones(
    tmp_path: Path, library: Library, embedder: CountingEmbedder
) -> None:
    folder = tmp_path / "docs"
    shutil.copytree(FILES, folder)
    c = library.create("kb")

    def sync() -> tuple[int, int, int]:
        plan = plan_sync(c, folder)
        totals = upsert_batches(c, sync_documents(folder, plan.changed))
        return totals["added"] + totals["updated"], len(plan.unchanged), c.delete(plan.gone)

    assert sync() == (4, 0, 0)
    embedder.embedded.clear()
    assert sync() == (0, 4, 0) and embedder.embedded == []
    (folder / "notes.txt").write_text("Transition to turbulence depends on surface roughness too.\n")
    (folder / "guide.md").unlink()
    assert sync() == (1, 2, 1)
    assert len(embedder.embedded) == 1
    assert sorted(c.metadata_where(None)) == ["inlet.pdf", "notes.txt", "page.html"]
    assert c.search("surface roughness", mode="sparse")[0].document_id == "notes.txt"


@pytest.fixture
def cli(tmp_path: Path, embedder: CountingEmbedder, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """The retrieval and eval commands on a root app like ragtune.cli's, with the test embedder
    injected."""
    from ragtune.evaluation import cli as evaluation_cli
    from ragtune.retrieval import cli as retrieval_cli
    from ragtune.retrieval import library as library_module

    real = library_module.Library

    def with_embedder(root, settings, **kw):  # noqa: ANN001, ANN202
        return real(root, settings, embedders={EMBEDDER: embedder})

    monkeypatch.setattr(library_module, "Library", with_embedder)
    app = typer.Typer()

    @app.callback()
    def main(ctx: typer.Context) -> None:
        ctx.obj = SimpleNamespace(retrieval=settings(), indexes_dir=tmp_path / "indexes")

    retrieval_cli.register(app)
    evaluation_cli.register(app)
    runner = CliRunner()
    return lambda *args: runner.invoke(app, [str(a) for a in args])


def test_cli_tour(cli) -> None:  # noqa: ANN001
    assert cli("collections", "create", "kb").exit_code == 0
    r = cli("ingest", FILES, FIXTURES / "beir" / "corpus.jsonl", "--collection", "kb")
    assert r.exit_code == 0, r.output
    assert "20 added" in r.output
    assert "20 unchanged" in cli("ingest", FILES, FIXTURES / "beir" / "corpus.jsonl", "-C", "kb").output
    r = cli("search", "why does a wing stall", "-C", "kb", "--json", "--k", "2")
    hits = json.loads(r.stdout)["hits"]
    assert r.exit_code == 0 and hits[0]["document_id"] == "d2" and len(hits) == 2
    r = cli(
        "search", "turbofan bypass", "-C", "kb", "--mode", "sparse", "--filter", '{"type": "html"}', "--json"
    )
    assert [h["document_id"] for h in json.loads(r.stdout)["hits"]] == ["page.html"]
    stats = json.loads(cli("collections", "stats", "kb", "--json").stdout)
    assert stats["documents"] == 20 and stats["consistent"]
    assert json.loads(cli("collections", "get", "kb", "d4", "--json").stdout)["title"] == "Sourdough bread"
    assert "deleted 3" in cli("collections", "delete", "kb", "--filter", '{"topic": "aero"}').output
    assert "kb" in cli("collections", "list").output
    assert cli("collections", "drop", "kb", "--yes").exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "x", "-C", "nope"], "no collection 'nope'"),
        (["search", "x", "-C", "kb", "--filter", "{bad"], "--filter: filter is not valid JSON"),
        (["search", "x", "-C", "kb", "--mode", "fuzzy"], "mode must be one of"),
        (["ingest", str(BAD / "latin1.txt"), "-C", "kb"], "not UTF-8"),
        (["collections", "create", "kb"], "already exists"),
        (["collections", "delete", "kb"], "name document ids, or give --filter"),
        (["eval", "retrieval", "--dataset", str(FILES)], "is not a BEIR data set"),
        (["search", "x", "-C", "kb", "--fusion", "max"], "fusion must be one of convex, rrf"),
        (["eval", "retrieval", "--dataset", str(FILES), "--fusion", "max"], "--fusion must be one of"),
    ],
)
def test_cli_errors_exit_2_with_a_message(cli, args: list[str], message: str) -> None:  # noqa: ANN001
    cli("collections", "create", "kb")
    r = cli(*args)
    assert r.exit_code == 2 and message in " ".join(r.output.split()), r.output


def test_cli_eval_retrieval_compare_json_table_and_plot(cli, tmp_path: Path) -> None:  # noqa: ANN001
    png = tmp_path / "chart" / "compare.png"
    r = cli("eval", "retrieval", "--dataset", FIXTURES / "beir", "--compare", "--json", "--plot", png)
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    runs = [(x["mode"], x["fusion"]) for x in report["results"]]
    assert runs == [("dense", None), ("sparse", None), ("hybrid", "convex"), ("hybrid", "rrf")]
    assert report["default_fusion"] == "convex" and report["queries"] == 16
    for x in report["results"]:
        assert x["ndcg@10"] > 0.8 and (x["recall@100"] == 1.0 or x["mode"] == "sparse"), x
        assert set(x["latency_ms"]) == {"p50", "p95", "p99"}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    # the table; the collection is reused (nothing re-embedded)
    r = cli("eval", "retrieval", "--dataset", FIXTURES / "beir", "--mode", "hybrid", "--fusion", "rrf")
    assert r.exit_code == 0, r.output
    out = " ".join(r.output.split())
    assert "hybrid (rrf)" in out and "hybrid (convex)" not in out and "default fusion: convex" in out
    assert "0 added" in out and "16 unchanged" in out


def test_an_empty_query_in_a_set_counts_as_a_miss(cli, tmp_path: Path) -> None:  # noqa: ANN001
    """DisflQA holds a query with no text: the evaluation scores it 0 instead of stopping."""
    beir = tmp_path / "beir"
    shutil.copytree(FIXTURES / "beir", beir)
    with (beir / "queries.jsonl").open("a") as fh:
        fh.write(json.dumps({"_id": "q-empty", "text": "  "}) + "\n")
    with (beir / "qrels" / "test.tsv").open("a") as fh:
        fh.write("q-empty\td1\t1\n")
    r = cli("eval", "retrieval", "--dataset", beir, "--mode", "dense", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    [result] = report["results"]
    assert report["queries"] == 17 and result["recall@100"] == round(16 / 17, 4)


WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[2])
    from pathlib import Path
    from retrieval_fixtures import HashEmbedder, settings
    from ragtune.retrieval import Document, Library

    lib = Library(Path(sys.argv[1]), settings(), embedders={"hash": HashEmbedder()})
    c = lib.open("kb")
    words = "lift drag wing shock flow heat boundary layer pressure nozzle".split()
    for batch in range(10_000):
        docs = [Document(f"b{batch}-{i}", " ".join(words[(batch + i + j) % 10] for j in range(120)))
                for i in range(10)]
        c.upsert(docs)
        print(batch, flush=True)
    """
)


def test_kill_9_mid_ingest_loses_at_most_the_open_batch(tmp_path: Path) -> None:
    lib = Library(tmp_path, settings(), embedders={"hash": HashEmbedder()})
    watcher = lib.create("kb", embedder="hash")  # a server holding the collection open
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path), str(Path(__file__).parent)],
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
    # the open collection notices the other process's writes and catches up from the store
    stats = watcher.stats()
    assert stats["consistent"] and stats["documents"] % 10 == 0 and stats["documents"] >= 10 * (committed + 1)
    lib.close()
    lib = Library(tmp_path, settings(), embedders={"hash": HashEmbedder()})
    c = lib.open("kb")
    stats = c.stats()
    assert stats["consistent"] and c.check(), stats
    assert stats["documents"] % 10 == 0 and stats["chunks"] == stats["vectors"] == stats["fts_rows"]
    assert c.search("nozzle pressure", mode="sparse", k=3)
    c.upsert([Document("after", "the collection still takes writes after the crash")])  # lock released
    assert c.get("after").text.startswith("the collection")
    lib.close()
