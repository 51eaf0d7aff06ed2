"""Start the server: take the address first, then build the app and run uvicorn on that socket.

`ragtune serve` and `ragtune demo` (serving.cli) end here.
"""

from __future__ import annotations

import errno
import logging
import signal
import socket
from typing import Any

from rich.console import Console

from ragtune.core.console import fail
from ragtune.retrieval.storage import hide_password
from ragtune.serving.settings import Settings, SettingsError

console = Console()
log = logging.getLogger("ragtune.serving")


def bind(settings: Settings) -> socket.socket:
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


def serve(settings: Settings, sock: socket.socket) -> None:
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
