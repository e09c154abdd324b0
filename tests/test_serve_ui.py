"""The web UI in headless Chromium (Debian's `chromium`, driven by Playwright) against a live server with fakes:
streamed text appears piece by piece, knowledge-base answers show citations that open to the cited passage.

Skipped with a reason where no Chromium is installed; `.ci/run` installs it and sets NOMOAT_REQUIRE_BROWSER=1,
which turns that skip into a failure.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fakes import FakeEmbedder
from pictures import SANS, draw_text, image_pdf
from test_serve import FakeModel, live

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _browser_or_skip() -> str:
    if CHROMIUM:
        return CHROMIUM
    if os.environ.get("NOMOAT_REQUIRE_BROWSER"):
        pytest.fail("NOMOAT_REQUIRE_BROWSER is set but no chromium is installed (apt-get install -y chromium)")
    pytest.skip("no chromium on PATH: install Debian's chromium (apt-get install -y chromium) to test the web UI")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _browser_or_skip()
    playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (dev extra)")
    with playwright_api.sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


def playwright_expect() -> Any:
    from playwright.sync_api import expect

    return expect


class StepGate:
    """Lets the fake model produce one piece per ``step()``: the test sees text while generation is still going."""

    def __init__(self) -> None:
        self._steps = threading.Semaphore(0)

    def wait(self) -> None:
        self._steps.acquire()

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self._steps.release()


@pytest.fixture
def kb(tmp_path: Path) -> int:
    """Knowledge base 'default' with one document (fake embedder); returns its chunk id."""
    from nomoat.kb import ingest, store

    (tmp_path / "office.md").write_text("# Office\n\nThe office wifi password is hunter42. The router is in 3B.\n")
    ingest.run([str(tmp_path)], kb="default", embedder=FakeEmbedder(), progress=False)
    conn = store.open_kb("default", create=False)
    try:
        return int(conn.execute("SELECT min(id) FROM chunks").fetchone()[0])
    finally:
        conn.close()


def test_chat_streams_and_knowledge_base_answers_show_openable_citations(browser: Any, kb: int, tmp_path: Path) -> None:
    from nomoat.kb import store

    gate = StepGate()
    model = FakeModel("Hello there, friend.", gate=gate)
    conn = store.open_kb("default", create=False)
    row = store.get_chunks(conn, [kb])[kb]
    conn.close()
    hit = {"path": row["path"], "location": row["location"], "text": row["text"], "chunk_id": kb, "cosine": 0.9}

    token = "ui-test-token-0123456789abcdef"
    with live(model, retrieve=lambda query, kb="default", k=5: [dict(hit)], api_key=token) as url:
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#key-box.shown")  # without the token: nothing but the key prompt
        assert "1 document" not in (page.text_content("#kbs") or "")
        page.goto(f"{url}/?token={token}")  # the URL `nomoat serve` prints: the UI takes the token from it
        page.wait_for_selector("#kbs li strong")
        assert "token" not in page.url  # and takes it out of the address bar
        assert page.text_content("#kbs") and "1 document, 1 chunk" in page.text_content("#kbs")
        assert page.input_value("#mode") == "kb:default"  # knowledge-base answers by default when one exists

        # plain chat: text appears while the model is still generating
        page.select_option("#mode", "plain")
        page.fill("#message", "Say hello")
        page.press("#message", "Enter")
        gate.step()
        expect = playwright_expect()
        expect(page.locator(".msg.assistant .text")).to_have_text("Hello ")  # waits; no eval (the CSP forbids it)
        assert page.get_attribute(".msg.assistant", "aria-busy") == "true"
        gate.step(2)
        page.wait_for_selector(".msg.assistant:not([aria-busy])")
        assert page.text_content(".msg.assistant .text") == "Hello there, friend."

        # knowledge-base answer: checked, then shown with its sources
        model.text = "The office wifi password is hunter42 [1]."
        page.select_option("#mode", "kb:default")
        page.fill("#message", "What is the office wifi password?")
        page.click("#send")
        gate.step(10)
        citation = page.wait_for_selector(".msg.assistant >> nth=1 >> .citation button")
        assert "office.md" in citation.text_content()
        answer = page.locator(".msg.assistant").nth(1).locator(".text").text_content()
        assert "hunter42" in answer
        citation.click()
        source = page.wait_for_selector(".source mark")
        assert "hunter42" in source.text_content()
        assert "router is in 3B" in page.text_content(".source")  # the whole cited passage, not just the quote
        page.close()


def test_a_cited_passage_read_by_ocr_says_so(browser: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nomoat.kb import ingest, store
    from nomoat.kb.readers import ocr

    class Scanner:  # the OCR engine's stand-in: this "scan" reads as a sentence (tests/test_ocr.py has the real one)
        def read(self, image: Any) -> str:
            return "The office wifi password is hunter42. The router is in 3B."

    (tmp_path / "scan.pdf").write_bytes(image_pdf([draw_text([("scan", SANS, 30)])]))
    monkeypatch.setitem(ocr.ENGINES, "rapidocr", Scanner)
    ocr.engine.cache_clear()
    ingest.run([str(tmp_path)], kb="default", embedder=FakeEmbedder(), progress=False)
    ocr.engine.cache_clear()
    with store.connect("default") as conn:
        (chunk_id,) = [r[0] for r in conn.execute("SELECT id FROM chunks")]
        row = store.get_chunks(conn, [chunk_id])[chunk_id]
    assert row["location"] == "page 1, scanned (OCR)"
    hit = {"path": row["path"], "location": row["location"], "text": row["text"], "chunk_id": chunk_id, "cosine": 0.9}
    model = FakeModel("The office wifi password is hunter42 [1].")
    with live(model, retrieve=lambda query, kb="default", k=5: [dict(hit)]) as url:
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#kbs li strong")
        page.fill("#message", "What is the office wifi password?")
        page.click("#send")
        citation = page.wait_for_selector(".citation button")
        assert "page 1, scanned (OCR)" in citation.text_content()
        citation.click()
        page.wait_for_selector(".source mark")
        assert "Read from a picture by OCR" in page.text_content(".source .ocr")
        assert "hunter42" in page.text_content(".source mark")
        page.close()


def test_a_question_the_policy_denies_is_refused_in_the_ui(browser: Any, tmp_path: Path) -> None:
    from nomoat.policy.rules import parse

    policy = parse('[[deny]]\nname = "salaries"\nwords = ["salary"]\n')
    model = FakeModel("Hello there, friend.")
    with live(model, policy=policy) as url:
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("#kbs")
        page.select_option("#mode", "plain")
        page.fill("#message", "What is the CEO's S A L A R Y?")
        page.press("#message", "Enter")
        note = page.wait_for_selector(".msg.assistant .note")
        assert "answer policy" in note.text_content() and not model.calls  # refused before any generation
        page.fill("#message", "Say hello")
        page.press("#message", "Enter")
        expect = playwright_expect()
        expect(page.locator(".msg.assistant").nth(1).locator(".text")).to_have_text("Hello there, friend.")
        (_, messages, _) = model.calls[0]
        assert "A L A R Y" not in str(messages)  # the refused turn is not sent again as history
        page.close()
