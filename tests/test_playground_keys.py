"""The playground on a server that requires API keys, in headless Chromium.

The app runs in this process under uvicorn with the echo engine (tests/doubles.py; no vLLM
needed) and a real library: the page loads without a key, says that one is needed, and works
once the key is typed into its field.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ragtune.retrieval import Document, Library
from ragtune.serving.app import create_app
from ragtune.serving.settings import load_settings
from tests.doubles import EchoEngine
from tests.test_playground import CHROMIUM_ARGS, _browser_or_skip

ADMIN_KEY = "admin-key-for-the-playground-test"


@pytest.fixture
def keyed_server(tmp_path: Path, base_model: Path) -> Iterator[str]:
    import uvicorn
    from transformers import AutoTokenizer

    settings = load_settings(
        models_dir=base_model.parent,
        adapters_dir=tmp_path / "adapters",
        indexes_dir=tmp_path / "indexes",
        admin_keys=ADMIN_KEY,
    )
    (tmp_path / "adapters").mkdir()
    library = Library(settings.indexes_dir, settings.retrieval)
    library.create("notes").upsert([Document("cat", "The keeper's cat is named Biscuit.", "Cat")])
    engine = EchoEngine(AutoTokenizer.from_pretrained(base_model), echo_tokens=12)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(settings, engine=engine, library=library)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "the test server did not start"
        time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)
    library.close()


def test_the_api_key_field_is_sent_when_the_server_requires_keys(keyed_server: str) -> None:
    sync_playwright = _browser_or_skip()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page: Any = browser.new_page()
        page.goto(keyed_server + "/")  # the page itself needs no key
        toast = page.locator("#toast")
        toast.wait_for()
        assert "needs an API key" in toast.inner_text() and "set the API key" in toast.inner_text()

        page.fill("#api-key", ADMIN_KEY)
        page.press("#api-key", "Enter")  # change event: lists are loaded again with the key
        page.wait_for_selector('#rag-collection option[value="notes"]', state="attached")
        page.select_option("#model", "smollm2-135m-instruct")
        page.select_option("#rag-collection", "notes")
        page.fill("#question", "What is the cat called?")
        page.press("#question", "Enter")
        page.wait_for_selector(".turn[data-done]")
        turn = page.locator(".turn").first
        assert not turn.locator(".error").count(), turn.locator(".error").inner_text()
        assert turn.locator('.source[data-document="cat"]').count() == 1
        assert page.evaluate("localStorage.getItem('ragtune-api-key')") == ADMIN_KEY

        page.fill("#api-key", "wrong-key")
        page.press("#api-key", "Enter")
        page.fill("#question", "And again?")
        page.press("#question", "Enter")
        page.wait_for_selector(".turn:nth-child(2)[data-done]")
        assert "API key is not valid" in page.locator(".turn").nth(1).locator(".error").inner_text()
        browser.close()
