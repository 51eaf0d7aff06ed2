"""Commands of the retrieval package, mounted on the root `ragtune` app by serving.cli.

`ragtune collections create|drop|list|stats|get|docs|delete`, `ragtune ingest`, `ragtune sync`,
`ragtune search` and `ragtune eval retrieval`. Settings come from the root context object
(duck-typed: `.retrieval` and `.indexes_dir`); heavy imports happen inside the commands.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from ragtune.core.console import err_console, fail
from ragtune.core.errors import RagtuneError
from ragtune.retrieval.settings import RetrievalSettings

if TYPE_CHECKING:
    from ragtune.retrieval.library import Library

console = Console()
collections_app = typer.Typer(help="Document collections under indexes/.", no_args_is_help=True)
Opt = typer.Option
Arg = typer.Argument
CollectionOpt = Annotated[str, Opt("--collection", "-C", help="collection name (a folder under indexes/)")]
JsonOpt = Annotated[bool, Opt("--json", help="print one JSON object on stdout instead of a table")]


def _settings(ctx: typer.Context) -> tuple[RetrievalSettings, Path]:
    obj = ctx.find_root().obj
    if obj is None:
        return RetrievalSettings.model_validate({}), Path(
            "indexes"
        )  # only when a command runs without the root app
    return obj.retrieval, Path(obj.indexes_dir)


@contextmanager
def _library(ctx: typer.Context) -> Iterator[Library]:
    """A library for one command; any RagtuneError becomes a clear message and exit code 2."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ragtune.retrieval.library import Library

    settings, root = _settings(ctx)
    try:
        library = Library(root, settings)  # a store that cannot be reached fails here
    except RagtuneError as exc:
        raise fail(exc.message) from None
    try:
        yield library
    except RagtuneError as exc:
        raise fail(exc.message) from None
    finally:
        library.close()


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    )


def _parse_filter(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    from ragtune.retrieval.filters import compile_filter, parse_filter

    try:
        value = parse_filter(text)
        compile_filter(value)
    except RagtuneError as exc:
        raise fail(f"--filter: {exc.message}") from None
    return value


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


# -- collections ------------------------------------------------------------------------
@collections_app.command("create")
def create_command(
    ctx: typer.Context,
    name: Annotated[str, Arg(help="collection name")],
    index_type: Annotated[str | None, Opt("--index-type", help="flat (exact), hnsw or ivf")] = None,
    chunk_tokens: Annotated[int | None, Opt("--chunk-tokens", help="chunk size in embedder tokens")] = None,
    chunk_overlap: Annotated[int | None, Opt("--chunk-overlap", help="overlap in tokens")] = None,
    embedder: Annotated[str | None, Opt("--embedder", help="sentence-transformers folder")] = None,
) -> None:
    """Create an empty collection."""
    with _library(ctx) as library:
        c = library.create(
            name,
            index_type=index_type,
            chunk_tokens=chunk_tokens,
            chunk_overlap=chunk_overlap,
            embedder=embedder,
        )
        where = c.path or library.backend.where
        console.print(f"created [bold]{c.name}[/] ({c.index_type}, {c.config['embedder']}) in {where}")


@collections_app.command("drop")
def drop_command(
    ctx: typer.Context,
    name: Annotated[str, Arg(help="collection name")],
    yes: Annotated[bool, Opt("--yes", "-y", help="do not ask")] = False,
) -> None:
    """Delete a collection and all its files."""
    if not yes and not typer.confirm(f"drop collection {name!r} and all its documents?"):
        raise typer.Exit(1)
    with _library(ctx) as library:
        library.drop(name)
        console.print(f"dropped {name}")


@collections_app.command("list")
def list_command(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """List collections with their sizes."""
    with _library(ctx) as library:
        rows = [library.open(n).stats() for n in library.names()]
    if as_json:
        print(json.dumps(rows))
        return
    _, root = _settings(ctx)
    if not rows:
        console.print(f"no collections in {root}; create one: ragtune collections create NAME")
        return
    table = Table("name", "documents", "chunks", "index", "embedder", "on disk", title=str(root))
    for s in rows:
        table.add_row(
            s["name"],
            f"{s['documents']:,}",
            f"{s['chunks']:,}",
            s["index_type"],
            s["embedder"],
            _size(s["bytes_on_disk"]),
        )
    console.print(table)


@collections_app.command("stats")
def stats_command(ctx: typer.Context, name: Annotated[str, Arg()], as_json: JsonOpt = False) -> None:
    """Counts, index type, embedder and sizes of one collection."""
    with _library(ctx) as library:
        stats = library.open(name).stats()
    if as_json:
        print(json.dumps(stats))
        return
    table = Table("field", "value", title=name)
    for key, value in stats.items():
        shown = _size(value) if key.endswith("bytes") or key.endswith("bytes_on_disk") else str(value)
        table.add_row(key, shown)
    console.print(table)


@collections_app.command("get")
def get_command(
    ctx: typer.Context, name: Annotated[str, Arg()], doc_id: Annotated[str, Arg()], as_json: JsonOpt = False
) -> None:
    """Show one document."""
    from dataclasses import asdict

    with _library(ctx) as library:
        doc = library.open(name).get(doc_id)
    if as_json:
        print(json.dumps(asdict(doc), ensure_ascii=False))
        return
    console.print(
        f"[bold]{doc.id}[/]  {doc.title or ''}\nsource: {doc.source}\nmetadata: {json.dumps(doc.metadata)}"
    )
    console.print(doc.text, highlight=False, markup=False)


@collections_app.command("docs")
def docs_command(
    ctx: typer.Context,
    name: Annotated[str, Arg()],
    offset: Annotated[int, Opt(min=0)] = 0,
    limit: Annotated[int, Opt(min=1, max=10_000)] = 20,
    as_json: JsonOpt = False,
) -> None:
    """List documents (id, title, source, size)."""
    with _library(ctx) as library:
        docs = library.open(name).list_documents(offset=offset, limit=limit)
    if as_json:
        print(
            json.dumps(
                [{"id": d.id, "title": d.title, "source": d.source, "metadata": d.metadata} for d in docs]
            )
        )
        return
    table = Table("id", "title", "source", "characters")
    for d in docs:
        table.add_row(d.id, d.title or "", d.source or "", f"{len(d.text):,}")
    console.print(table)


@collections_app.command("delete")
def delete_command(
    ctx: typer.Context,
    name: Annotated[str, Arg()],
    ids: Annotated[list[str] | None, Arg(help="document ids")] = None,
    filter: Annotated[str | None, Opt("--filter", help='metadata filter, e.g. \'{"lang": "en"}\'')] = None,
) -> None:
    """Delete documents by id and/or by metadata filter."""
    where = _parse_filter(filter)
    if not ids and where is None:
        raise fail("name document ids, or give --filter")
    with _library(ctx) as library:
        c = library.open(name)
        missing = [i for i in dict.fromkeys(ids or []) if not _has_document(c, i)]
        if missing:
            raise fail(
                f"no document {', '.join(map(repr, missing))} in collection {name!r}; nothing deleted "
                f"(`ragtune collections docs {name}` lists the ids)"
            )
        n = c.delete(ids) if ids else 0
        if where is not None:
            n += c.delete_where(where)
    console.print(f"deleted {n} document(s) from {name}")


def _has_document(collection: Any, doc_id: str) -> bool:
    from ragtune.core.errors import DocumentNotFound

    try:
        collection.get(doc_id)
    except DocumentNotFound:
        return False
    return True


# -- ingest, sync, search ----------------------------------------------------------------
def _open_or_create(library: Library, name: str) -> Any:
    from ragtune.core.errors import CollectionNotFound

    try:
        return library.open(name)
    except CollectionNotFound:
        err_console.print(f"creating collection {name!r}")
        return library.create(name)


def ingest_command(
    ctx: typer.Context,
    paths: Annotated[list[Path], Arg(help="files or folders: .txt .md .html .pdf, BEIR corpus .jsonl")],
    collection: CollectionOpt,
    batch_size: Annotated[int, Opt("--batch-size", min=1, help="documents per atomic batch")] = 64,
) -> None:
    """Add or update documents from files (unchanged ones are skipped; created if missing)."""
    from ragtune.retrieval.ingest import collect, upsert_batches

    with _library(ctx) as library:
        docs = collect(paths)
        if not docs:
            raise fail(f"no supported files in {', '.join(map(str, paths))} (.txt .md .html .pdf .jsonl)")
        c = _open_or_create(library, collection)
        with _progress() as bar:
            task = bar.add_task(f"ingest into {collection}", total=len(docs))
            totals = upsert_batches(c, docs, batch_size=batch_size, progress=lambda n: bar.advance(task, n))
    console.print(
        f"{collection}: {totals['added']} added, {totals['updated']} updated, {totals['unchanged']} unchanged"
    )


def sync_command(
    ctx: typer.Context,
    folder: Annotated[Path, Arg(help="folder to mirror into the collection", exists=True, file_okay=False)],
    collection: CollectionOpt,
    batch_size: Annotated[int, Opt("--batch-size", min=1)] = 64,
) -> None:
    """Mirror a folder: re-embed only changed files, delete documents whose files are gone."""
    from ragtune.retrieval.ingest import plan_sync, sync_documents, upsert_batches

    with _library(ctx) as library:
        c = _open_or_create(library, collection)
        plan = plan_sync(c, folder)
        docs = sync_documents(folder, plan.changed)
        totals = {"added": 0, "updated": 0, "unchanged": len(plan.unchanged)}
        if docs:
            with _progress() as bar:
                task = bar.add_task(f"sync {folder} -> {collection}", total=len(docs))
                done = upsert_batches(c, docs, batch_size=batch_size, progress=lambda n: bar.advance(task, n))
            totals["added"], totals["updated"] = done["added"], done["updated"]
            totals["unchanged"] += done["unchanged"]
        deleted = c.delete(plan.gone) if plan.gone else 0
    console.print(
        f"{collection}: {totals['added']} added, {totals['updated']} updated, "
        f"{totals['unchanged']} unchanged, {deleted} deleted"
    )


def search_command(
    ctx: typer.Context,
    query: Annotated[str, Arg(help="the question")],
    collection: CollectionOpt,
    mode: Annotated[str | None, Opt("--mode", help="dense, sparse or hybrid (default from settings)")] = None,
    k: Annotated[int | None, Opt("--k", "-k", min=1, max=1000, help="hits to return")] = None,
    filter: Annotated[
        str | None, Opt("--filter", help='metadata filter, e.g. \'{"year": {"$gte": 2020}}\'')
    ] = None,
    fusion: Annotated[
        str | None, Opt("--fusion", help="hybrid: convex or rrf (default from settings)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Search a collection."""
    from dataclasses import asdict

    settings, _ = _settings(ctx)
    where = _parse_filter(filter)
    with _library(ctx) as library:
        hits = library.open(collection).search(
            query, k=k or settings.top_k, mode=mode or settings.mode, filter=where, fusion=fusion
        )
    if as_json:
        print(json.dumps({"query": query, "hits": [asdict(h) for h in hits]}, ensure_ascii=False))
        return
    if not hits:
        console.print("no hits")
        return
    table = Table("#", "score", "document", "chars", "text", title=f"{collection}: {query}", show_lines=True)
    for n, h in enumerate(hits, start=1):
        snippet = " ".join(h.text.split())
        table.add_row(
            str(n),
            f"{h.score:.4f}",
            f"{h.document_id}\n{h.title or ''}",
            f"{h.start}-{h.end}",
            snippet[:300] + ("..." if len(snippet) > 300 else ""),
        )
    console.print(table)


# -- eval --------------------------------------------------------------------------------
MODES = ("dense", "sparse", "hybrid")
METRICS = (("ndcg@10", "nDCG@10"), ("recall@10", "R@10"), ("recall@100", "R@100"), ("mrr@10", "MRR@10"))


def eval_retrieval_command(
    ctx: typer.Context,
    dataset: Annotated[
        Path, Opt("--dataset", help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv")
    ],
    mode: Annotated[
        list[str] | None, Opt("--mode", help="dense, sparse, hybrid (repeat; default all)")
    ] = None,
    fusion: Annotated[
        list[str] | None,
        Opt("--fusion", help="hybrid fusion: convex, rrf (repeat; default from settings)"),
    ] = None,
    compare: Annotated[
        bool, Opt("--compare", help="every mode and every hybrid fusion method, in one run")
    ] = False,
    max_queries: Annotated[
        int | None, Opt("--max-queries", min=1, help="evaluate the first N queries")
    ] = None,
    collection: Annotated[
        str | None, Opt("--collection", help="collection to (re)use; default eval-<dataset name>")
    ] = None,
    fresh: Annotated[bool, Opt("--fresh", help="drop the collection first and ingest from scratch")] = False,
    plot: Annotated[Path | None, Opt("--plot", help="also write a PNG bar chart of the metrics here")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Ingest a BEIR data set (only what changed) and report nDCG@10, R@10, R@100, MRR@10, latency."""
    import time

    from ragtune.core.errors import CollectionNotFound
    from ragtune.retrieval.evaluate import evaluate, load_dataset
    from ragtune.retrieval.fusion import FUSIONS
    from ragtune.retrieval.ingest import load_beir, upsert_batches

    settings, _ = _settings(ctx)
    modes = list(MODES) if compare else list(dict.fromkeys(mode or MODES))
    fusions = list(FUSIONS) if compare else list(dict.fromkeys(fusion or [settings.fusion]))
    for m in modes:
        if m not in MODES:
            raise fail(f"--mode must be dense, sparse or hybrid, got {m!r}")
    for f in fusions:
        if f not in FUSIONS:
            raise fail(f"--fusion must be one of {', '.join(FUSIONS)}, got {f!r}")
    runs: list[tuple[str, str | None]] = [(m, None) for m in modes if m != "hybrid"]
    runs += [("hybrid", f) for f in fusions if "hybrid" in modes]
    with _library(ctx) as library:
        data = load_dataset(dataset, max_queries=max_queries)
        name = collection or f"eval-{data.name}"
        if fresh:
            with contextlib.suppress(CollectionNotFound):
                library.drop(name)
        c = _open_or_create(library, name)
        everything = list(load_beir(data.corpus))
        docs = [d for d in everything if d.text.strip()]  # BEIR sets hold a few empty documents
        quiet = as_json or not sys.stderr.isatty()
        t0 = time.perf_counter()
        with _progress() as bar:
            task = bar.add_task(f"ingest {data.name}", total=len(docs), visible=not quiet)
            totals = upsert_batches(c, docs, batch_size=256, progress=lambda n: bar.advance(task, n))
        ingest_s = time.perf_counter() - t0
        results = []
        for m, fused in runs:
            c.embedder.clear_cache()  # each run pays for its own query embeddings
            with _progress() as bar:
                task = bar.add_task(_label(m, fused), total=len(data.queries), visible=not quiet)
                step = lambda n, task=task: bar.advance(task, n)  # noqa: E731
                results.append(evaluate(c, data, mode=m, fusion=fused, progress=step))
        stats = c.stats()
    report = {
        "dataset": str(dataset),
        "collection": name,
        "documents": stats["documents"],
        "chunks": stats["chunks"],
        "queries": len(data.queries),
        "embedder": stats["embedder"],
        "embed_backend": c.embedder.label,
        "index_type": stats["index_type"],
        "default_fusion": settings.fusion,
        "ingest": {**totals, "skipped_empty": len(everything) - len(docs), "seconds": round(ingest_s, 2)},
        "machine": {"cpus": os.cpu_count(), "cpu": _cpu_model(), "python": platform.python_version()},
        "results": results,
    }
    title = (
        f"{data.name}: {len(data.queries)} queries, {stats['documents']:,} docs, {stats['chunks']:,} chunks"
    )
    if plot is not None:
        _plot(results, plot, title)
    if as_json:
        print(json.dumps(report))
        return
    table = Table(
        Column("method", no_wrap=True),
        *(label for _, label in METRICS),
        "p50 ms",
        "p95 ms",
        "p99 ms",
        title=title,
        caption=f"default fusion: {settings.fusion}; best in bold",
    )
    best = {key: max(r[key] for r in results) for key, _ in METRICS}
    for r in results:
        lat = r["latency_ms"]
        cells = [f"[bold]{r[key]:.4f}[/]" if r[key] == best[key] else f"{r[key]:.4f}" for key, _ in METRICS]
        table.add_row(
            _label(r["mode"], r["fusion"]),
            *cells,
            f"{lat['p50']:.1f}",
            f"{lat['p95']:.1f}",
            f"{lat['p99']:.1f}",
        )
    console.print(table)
    console.print(
        f"ingest: {totals['added']} added, {totals['updated']} updated, {totals['unchanged']} unchanged "
        f"in {ingest_s:.1f} s; latency is per search of 200 chunks (query embedding included)"
        + (f"; chart: {plot}" if plot is not None else "")
    )


def _label(mode: str, fusion: str | None) -> str:
    return f"hybrid ({fusion})" if mode == "hybrid" and fusion else mode


def _plot(results: list[dict[str, Any]], path: Path, title: str) -> None:
    """Grouped bars: one group per metric, one bar per mode / fusion method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(METRICS) * max(len(results), 2) / 2), 4.5))
    width = 0.8 / max(len(results), 1)
    for i, r in enumerate(results):
        offset = (i - (len(results) - 1) / 2) * width
        bars = ax.bar(
            [j + offset for j in range(len(METRICS))],
            [r[key] for key, _ in METRICS],
            width,
            label=_label(r["mode"], r["fusion"]),
        )
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2, rotation=90)
    ax.set_xticks(range(len(METRICS)), [label for _, label in METRICS])
    ax.set_ylim(0, 1.15)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", ncols=min(len(results), 4))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def register(app: typer.Typer, eval_app: typer.Typer) -> None:
    """Add this package's commands to the root app and its `eval` group."""
    app.add_typer(collections_app, name="collections")
    app.command("ingest")(ingest_command)
    app.command("sync")(sync_command)
    app.command("search")(search_command)
    eval_app.command("retrieval")(eval_retrieval_command)
