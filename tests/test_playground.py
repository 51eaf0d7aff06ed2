"""The playground in a real browser: headless Chromium (Debian's package) driven by Playwright,
against the session's live server (the real vLLM engine and the real 135M model).

A newcomer's first minutes: ask and watch the answer stream in beside its sources; add a
document, ask about it and see it among the sources; delete it; load an adapter and unload it.
Screenshots go to the test's folder, and to SCREENSHOTS_DIR when set
(`make screenshots` writes the README's, docs/screenshots/).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ragtune.core.errors import InvalidDocument
from ragtune.retrieval.ingest import load_file
from ragtune.serving.routes.files import UPLOAD_SUFFIXES
from tests.conftest import LiveServer

pytestmark = pytest.mark.engine

CHROMIUM = Path("/usr/bin/chromium")
# Debian's Chromium, never a browser of Playwright's own (`playwright install` downloads one).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BASE = "smollm2-135m-instruct"
COLLECTION = "playground"
FACT = {
    "id": "quibbleton",
    "title": "The Quibbleton lighthouse",
    "text": "The Quibbleton lighthouse was designed by the architect Ines Varga in 1902.",
}
FILLER = [
    {"id": "bread", "title": "Bread", "text": "Bread is baked from flour, water, salt and yeast."},
    {"id": "danube", "title": "The Danube", "text": "The river Danube flows through ten countries."},
    {"id": "chess", "title": "Chess", "text": "Chess is played on a board of sixty-four squares."},
]
ANSWER_TIMEOUT_MS = 180_000  # a busy 2-core machine; an answer usually takes 3-15 s


def _browser_or_skip() -> Any:
    if not CHROMIUM.exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: install Debian's `chromium` package (`make test` does, as root)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (it is in the dev extra: pip install -e '.[dev]')")
    return sync_playwright


@pytest.fixture(scope="module")
def page(live_server: LiveServer) -> Iterator[Any]:
    sync_playwright = _browser_or_skip()
    http = httpx.Client(base_url=live_server.url, timeout=60)
    http.delete(f"/v1/collections/{COLLECTION}")  # a leftover from an interrupted run
    assert http.post("/v1/collections", json={"name": COLLECTION}).status_code == 201
    assert http.post(f"/v1/collections/{COLLECTION}/documents", json={"documents": FILLER}).status_code == 200
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport={"width": 1400, "height": 880})
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.goto(live_server.url + "/")
        tab.wait_for_selector(f'#model option[value="{BASE}"]', state="attached")
        tab.wait_for_selector(f'#rag-collection option[value="{COLLECTION}"]', state="attached")
        tab.errors = errors
        yield tab
        browser.close()
    http.delete(f"/v1/collections/{COLLECTION}")
    http.close()


def shot(page: Any, name: str, tmp_path: Path) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path))
    target = os.environ.get("SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)


def ask(page: Any, question: str) -> Any:
    """Type a question, send it, see the answer stream in; returns the finished turn."""
    before = page.locator(".turn").count()
    page.fill("#question", question)
    page.press("#question", "Enter")
    turn = page.locator(".turn").nth(before)
    page.wait_for_function(
        "n => document.querySelectorAll('.turn')[n].dataset.done === '1'",
        arg=before,
        timeout=ANSWER_TIMEOUT_MS,
    )
    assert not turn.locator(".error").count(), turn.locator(".error").inner_text()
    return turn


def choose(page: Any, *, model: str, collection: str, max_tokens: int = 32) -> None:
    page.select_option("#model", model)
    page.select_option("#rag-collection", collection)
    page.check("#rag-on")
    page.fill("#rag-topk", "3")
    page.fill("#max-tokens", str(max_tokens))


def test_ask_and_see_the_streamed_answer_beside_its_sources(page: Any, tmp_path: Path) -> None:
    choose(page, model=BASE, collection=COLLECTION)
    turn = ask(page, "How is bread made?")
    assert turn.locator(".answer .text").inner_text().strip()
    assert int(turn.get_attribute("data-deltas")) > 1  # drawn piece by piece as it streamed
    cards = turn.locator(".source")
    assert cards.count() == 3
    assert cards.first.locator(".title").inner_text() == "Bread"
    assert cards.first.locator(".n").inner_text() == "[1]"
    assert "first token" in turn.locator(".meta").inner_text()
    shot(page, "playground-chat.png", tmp_path)


def test_the_grounded_profile_abstains_below_its_relevance_floor(page: Any) -> None:
    """Choosing the `grounded` profile shows its calibration under the API's names (read only: it
    is the profile's, never sent per request); a question none of the documents is about gets
    the abstention sentence."""
    choose(page, model="grounded", collection=COLLECTION, max_tokens=48)
    calibration = page.inner_text("#rag-calibration")
    assert "min_similarity 0.67" in calibration
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as sent:
        turn = ask(page, "Who wrote the novel Moby-Dick?")
    assert turn.locator(".answer .text").inner_text().strip() == "The sources do not answer this question."
    rag = sent.value.post_data_json["rag"]
    assert rag["collection"] == COLLECTION and "min_similarity" not in rag
    # A model without calibration hides the line.
    page.select_option("#model", BASE)
    assert page.locator("#rag-calibration").is_hidden()


def test_citations_in_an_answer_highlight_their_sources(page: Any) -> None:
    """The page marks `[n]` in an answer and highlights source n. The 135M base model seldom
    writes `[n]` itself, so the page's own functions draw a turn that is never shown."""
    drawn = page.evaluate(
        """() => {
        const turn = document.createElement('div');
        const box = document.createElement('div');
        const text = document.createElement('div');
        turn.append(text, box);
        const src = (n) => ({index: n, document_id: 'd' + n, title: 'T', source: null, score: 1, text: 'x'});
        renderSources(box, [src(1), src(2)]);
        renderAnswerText(text, 'Flour and yeast [1].');
        markCited(turn, 'Flour and yeast [1].');
        return {
            cites: [...text.querySelectorAll('.cite')].map((c) => c.textContent),
            classes: [...box.querySelectorAll('.source')].map((c) => c.className),
        };
    }"""
    )
    assert drawn == {"cites": ["[1]"], "classes": ["source cited", "source"]}


def test_the_file_picker_offers_the_types_the_upload_takes(page: Any, tmp_path: Path) -> None:
    """The page's list of upload types (the picker's `accept` and the hint beside it) is the
    server's UPLOAD_SUFFIXES, and those are the types the upload's loader reads: a BEIR corpus
    (.jsonl) is for `ragtune ingest`, not for upload."""
    assert page.get_attribute("#upload-file", "accept").split(",") == list(UPLOAD_SUFFIXES)
    assert "upload a file (" + " ".join(UPLOAD_SUFFIXES) + ")" in page.inner_text("#upload-form label")
    assert "{{" not in page.content()  # every placeholder of index.html filled in
    for suffix in (*UPLOAD_SUFFIXES, ".jsonl", ".docx"):
        path = tmp_path / ("note" + suffix)
        path.write_text("hello", encoding="utf-8")
        try:
            load_file(path, "note")
            unsupported = False
        except InvalidDocument as exc:  # an unreadable PDF is refused as such, not for its type
            unsupported = "unsupported file type" in exc.message
        assert unsupported == (suffix not in UPLOAD_SUFFIXES), suffix


def test_add_a_document_ask_again_see_it_cited_then_delete_it(
    page: Any, live_server: LiveServer, tmp_path: Path
) -> None:
    page.click('.tab[data-tab="documents"]')
    page.select_option("#doc-collection", COLLECTION)
    page.click("#add-text-box summary")
    page.fill("#doc-id", FACT["id"])
    page.fill("#doc-title", FACT["title"])
    page.fill("#doc-text", FACT["text"])
    page.click("#add-text")
    item = page.locator(f'#doc-list li[data-document="{FACT["id"]}"]')
    item.wait_for()
    assert "Ines Varga" in item.inner_text()

    choose(page, model=BASE, collection=COLLECTION, max_tokens=40)
    turn = ask(page, "Who designed the Quibbleton lighthouse?")
    first = turn.locator(".source").first
    assert first.get_attribute("data-document") == FACT["id"] and first.locator(".n").inner_text() == "[1]"
    assert "Varga" in turn.locator(".answer .text").inner_text()  # the fact came from the document
    shot(page, "playground-document.png", tmp_path)

    page.fill("#doc-search", "lighthouse architect")
    page.click('#search-form button[type="submit"]')
    page.locator(f'#doc-list li[data-document="{FACT["id"]}"]').wait_for()
    page.click("#search-clear")
    item.locator("button").click()
    item.wait_for(state="detached")
    gone = httpx.get(f"{live_server.url}/v1/collections/{COLLECTION}/documents/{FACT['id']}", timeout=30)
    assert gone.status_code == 404


def test_load_and_unload_an_adapter(page: Any, tmp_path: Path) -> None:
    page.click('.tab[data-tab="adapters"]')
    page.fill("#adapter-name", "pw-style")
    page.fill("#adapter-path", "style-v2")
    page.click("#load-adapter")
    row = page.locator('#adapter-list li[data-adapter="pw-style"]')
    row.wait_for(timeout=ANSWER_TIMEOUT_MS)  # loading checks the adapter and runs the engine
    assert "rank 8" in row.inner_text()
    page.wait_for_selector('#model option[value="pw-style"]', state="attached")
    shot(page, "playground-adapters.png", tmp_path)
    row.locator("button").click()
    row.wait_for(state="detached")
    page.wait_for_selector('#model option[value="pw-style"]', state="detached")
    assert not page.errors, page.errors  # no uncaught JavaScript error in the whole session
