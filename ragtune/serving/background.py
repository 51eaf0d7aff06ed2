"""The server in a thread of this process, on a free loopback port: `ragtune chat --in-process`
talks to it over HTTP exactly as to a server of its own."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from ragtune.serving.settings import Settings


def check_base_model(settings: Settings) -> str | None:
    from ragtune.core.models import check_model_dir

    problem = check_model_dir(settings.base_model_path)
    if problem is None:
        return None
    from ragtune.core.catalogue import CATALOGUE

    fix = (
        f"Run: ragtune models import {settings.base_model}"
        if settings.base_model in CATALOGUE
        else f"Import it: ragtune models import SOURCE --name {settings.base_model_path.name} "
        "(a .gguf file, a model folder, or a name from `ragtune models available`)"
    )
    return f"base model not usable: {problem}. {fix}"


def serve_in_background(settings: Settings) -> tuple[str, Callable[[], None]]:
    """The server on a free loopback port in a thread of this process: its URL once it accepts
    requests, and a function that stops it (engine included)."""
    import uvicorn

    from ragtune.serving.app import create_app

    problem = check_base_model(settings)
    if problem:
        raise RuntimeError(problem)
    local = settings.model_copy(update={"serving": settings.serving.model_copy(update={"host": "127.0.0.1"})})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(create_app(local), log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            sock.close()
            raise RuntimeError("the in-process server did not start; its error is above")
        thread.join(0.2)

    def stop() -> None:
        server.should_exit = True
        thread.join(60)
        sock.close()

    return url, stop
