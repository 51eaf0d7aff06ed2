"""`model: "auto"` where people see it (issue 30): `ragtune chat --model auto` prints the choice,
and the playground offers `auto` and shows where each question went (headless Chromium against
a server on the echo engine, so no model runs)."""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ragtune.retrieval import Library
from ragtune.serving.settings import load_settings
from ragtune.serving.terminal import ChatOptions, TerminalChat, route_line
from tests.test_routing import BASE, OFF_Q, PROFILES, RAIL_Q, fill


@pytest.fixture(scope="module")
def tokenizer(base_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model)


def make_app(root: Path, base_model: Path, tokenizer: Any) -> tuple[Any, Library]:
    from ragtune.serving.app import create_app
    from tests.doubles import EchoEngine

    settings = load_settings(
        models_dir=base_model.parent,
        adapters_dir=root / "adapters",
        indexes_dir=root / "indexes",
        serving={"profiles": PROFILES},
    )
    (root / "adapters").mkdir(exist_ok=True)
    library = Library(settings.indexes_dir, settings.retrieval)
    fill(library)
    return create_app(settings, engine=EchoEngine(tokenizer, echo_tokens=8), library=library), library


def test_route_line_says_where_and_why() -> None:
    chosen = {
        "chosen": "rail",
        "fallback": False,
        "reason": "confident",
        "scores": {"rail": 0.61, "tax": 0.2},
    }
    assert route_line(chosen) == "auto -> rail (rail 0.61, tax 0.20)"
    fell = {"chosen": BASE, "fallback": True, "reason": "below_floor", "scores": {"rail": 0.12}}
    assert route_line(fell) == f"auto -> {BASE} (no profile fitted; rail 0.12)"


def test_terminal_chat_prints_the_choice(
    tmp_path: Path, base_model: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app, library = make_app(tmp_path, base_model, tokenizer)
    out = io.StringIO()
    with TestClient(app) as client:
        chat = TerminalChat(ChatOptions(server="http://testserver", model="auto", max_tokens=8), out=out)
        chat.http = client  # the app in-process: TestClient is an httpx.Client
        assert chat.pick_model() == "auto"
        answer = chat.ask("auto", RAIL_Q)
        assert answer.route is not None and answer.route["chosen"] == "rail"
        chat.ask("auto", OFF_Q)
    library.close()
    printed = out.getvalue()
    assert "auto -> rail (rail 0." in printed
    assert f"auto -> {BASE} (no profile fitted;" in printed


# -- the playground ------------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture
def server_url(tmp_path: Path, base_model: Path, tokenizer: Any) -> Iterator[str]:
    import uvicorn

    app, library = make_app(tmp_path, base_model, tokenizer)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.started, "the server did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)
    library.close()


def test_the_playground_offers_auto_and_shows_the_choice(server_url: str) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's `chromium` package")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server_url + "/")
        page.wait_for_selector('#model optgroup[label="Automatic"] option[value="auto"]', state="attached")
        page.select_option("#model", "auto")
        assert "chooses a profile" in page.locator("#model-info").inner_text()
        for question, chosen in [(RAIL_Q, "rail"), (OFF_Q, BASE)]:
            before = page.locator(".turn").count()
            page.fill("#question", question)
            page.press("#question", "Enter")
            page.wait_for_function(
                "n => document.querySelectorAll('.turn')[n].dataset.done === '1'", arg=before, timeout=60_000
            )
            turn = page.locator(".turn").nth(before)
            assert turn.get_attribute("data-route") == chosen
            assert f"auto → {chosen}" in turn.locator(".meta").inner_text()
        assert page.locator(".turn").nth(0).locator(".source").count() > 0  # the rail profile retrieved
        browser.close()
    assert not errors, errors
