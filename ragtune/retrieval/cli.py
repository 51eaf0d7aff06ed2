"""Commands of the retrieval package, mounted on the root `ragtune` app (ragtune/cli.py).

`ragtune collections create|drop|list|stats|get|docs|delete`, `ragtune ingest`, `ragtune sync`
and `ragtune search` (`ragtune eval retrieval` is evaluation's). Settings come from the root
context object (duck-typed: `.retrieval` and `.indexes_dir`); heavy imports happen inside the
commands.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ragtune.core.console import err_console, fail, progress_bar
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
def open_library(settings: RetrievalSettings, root: Path) -> Iterator[Library]:
    """A library for one command (any package's); any RagtuneError becomes a clear message and
    exit code 2."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from ragtune.retrieval.library import Library

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


def _library(ctx: typer.Context) -> AbstractContextManager[Library]:
    return open_library(*_settings(ctx))


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
    paths: Annotated[
        list[Path], Arg(help="files or folders: .txt .md .markdown .html .htm .pdf, BEIR corpus .jsonl")
    ],
    collection: CollectionOpt,
    batch_size: Annotated[int, Opt("--batch-size", min=1, help="documents per atomic batch")] = 64,
) -> None:
    """Add or update documents from files (unchanged ones are skipped; created if missing)."""
    from ragtune.retrieval.ingest import collect, upsert_batches

    with _library(ctx) as library:
        docs = collect(paths)
        if not docs:
            from ragtune.retrieval.ingest import SUFFIXES

            raise fail(f"no supported files in {', '.join(map(str, paths))} ({' '.join(SUFFIXES)})")
        c = _open_or_create(library, collection)
        with progress_bar() as bar:
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
            with progress_bar() as bar:
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

    where = _parse_filter(filter)
    with _library(ctx) as library:
        hits = library.open(collection).search(query, k=k, mode=mode, filter=where, fusion=fusion)
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


def register(app: typer.Typer) -> None:
    """Add this package's commands to the root app (ragtune/cli.py)."""
    app.add_typer(collections_app, name="collections")
    app.command("ingest")(ingest_command)
    app.command("sync")(sync_command)
    app.command("search")(search_command)
