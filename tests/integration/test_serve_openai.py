"""`nomoat serve` with the bundled model, driven by the official `openai` client over a real socket.

Every test that talks to a server runs twice: against nomoat's own engine ("local"), and against
`nomoat serve --backend-url` in front of llama-cpp-python's OpenAI server on the same GGUF ("backend"), so
retrieval, the answer check and citations are shown to work the same with generation elsewhere.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

pytestmark = pytest.mark.integration

KEY = "integration-test-key-0123456789"
BACKEND_KEY = "backend-test-key-9876543210"  # the backend's own key: nomoat reads it from NOMOAT_BACKEND_KEY
DOCS = {
    "office.md": "# Office notes\n\nThe office wifi password is hunter42 and the router lives in room 3B.\n",
    "deploy.md": "# Deploying the billing service\n\nRun `make deploy ENV=prod` from the release branch. "
    "The deploy takes about 7 minutes.\n",
}


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "NOMOAT_HOME": str(home), "HF_HUB_OFFLINE": "1", "NOMOAT_API_KEY": KEY,
            "NOMOAT_BACKEND_KEY": BACKEND_KEY}  # fmt: skip


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home, docs = tmp_path_factory.mktemp("serve-home"), tmp_path_factory.mktemp("serve-docs")
    for name, text in DOCS.items():
        (docs / name).write_text(text)
    cmd = [sys.executable, "-m", "nomoat", "ingest", str(docs), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(home), timeout=600)
    assert proc.returncode == 0, proc.stderr
    return home


def start_server(home: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Start `nomoat serve --port 0` and return it with its URL (printed once the model is loaded)."""
    cmd = [sys.executable, "-m", "nomoat", "serve", "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(home))
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("nomoat serve: http://"):
        proc.kill()
        raise AssertionError(f"server did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}")
    return proc, line.split()[2]


def start_backend(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """llama-cpp-python's own OpenAI server on the bundled GGUF, named as nomoat names it; returns its /v1 URL.
    Its chatty log goes to ``log``: a pipe nobody reads would fill and stop the server."""
    from nomoat.llm.models import BUNDLED_NAME, bundled_path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(bundled_path()), "--model_alias", BUNDLED_NAME,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--api_key", BACKEND_KEY]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url, deadline = f"http://127.0.0.1:{port}/v1", time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url + "/models", headers={"Authorization": f"Bearer {BACKEND_KEY}"}).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"llama_cpp.server did not start: {log.read_text(errors='replace')[-2000:]}")


@pytest.fixture(scope="module", params=["local", "backend"])
def server(home: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    backend = start_backend(home / "backend.log") if request.param == "backend" else None
    args = ["--backend-url", backend[1]] if backend else []
    try:
        proc, url = start_server(home, *args)
        try:
            yield url
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        if backend:
            backend[0].terminate()
            backend[0].wait(30)


@pytest.fixture
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server + "v1", api_key=KEY, max_retries=0, timeout=300)


def test_models_lists_the_bundled_model_knowledge_base_and_embedder(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["SmolLM2-135M-Instruct-Q4_1", "nomoat-rag", "kb:default", "nomoat-embed"]


def test_chat_completion(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    out = client.chat.completions.create(model="default", messages=messages, max_tokens=30, seed=0)
    assert "Paris" in out.choices[0].message.content
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > 5 and 0 < out.usage.completion_tokens <= 30
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_streaming_chat_completion(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Count from one to five."}]
    stream = client.chat.completions.create(
        model="SmolLM2-135M-Instruct-Q4_1", messages=messages, max_tokens=24, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) >= 3  # tokens arrive one by one, not as one block
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish in (["stop"], ["length"])
    assert chunks[-1].usage.completion_tokens >= len(pieces)


def test_completion_streaming_and_not(client: openai.OpenAI) -> None:
    out = client.completions.create(model="default", prompt="The capital of France is", max_tokens=8, temperature=0)
    assert "Paris" in out.choices[0].text and out.usage.completion_tokens <= 8
    stream = client.completions.create(model="default", prompt="One, two, three,", max_tokens=8, stream=True)
    text = "".join(c.choices[0].text for c in stream if c.choices)
    assert text.strip()


def test_embeddings(client: openai.OpenAI) -> None:
    texts = ["The office wifi password", "the password for the office wireless network", "billing deploy time"]
    out = client.embeddings.create(model="nomoat-embed", input=texts)
    vectors = np.array([d.embedding for d in out.data])
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    floats = client.embeddings.create(model="nomoat-embed", input=texts[0], encoding_format="float")
    # the same text alone: int8 activations are quantised per batch, so equal up to ~0.01 (embeddings.py)
    assert np.dot(floats.data[0].embedding, vectors[0]) > 0.98
    assert out.usage.prompt_tokens > 0


def test_knowledge_base_answer_with_citations(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "What is the office wifi password?"}]
    out = client.chat.completions.create(model="nomoat-rag", messages=messages)
    assert "hunter42" in out.choices[0].message.content
    extra = out.model_extra["nomoat"]
    assert extra["grounded"] is True and extra["kb"] == "default"
    assert any(c["path"].endswith("office.md") for c in extra["citations"])
    stream = client.chat.completions.create(model="kb:default", messages=messages, stream=True)
    last = list(stream)[-1]
    assert any(c["path"].endswith("office.md") for c in last.model_extra["nomoat"]["citations"])


def test_wrong_key_and_evil_host_are_refused(server: str) -> None:
    bad = openai.OpenAI(base_url=server + "v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    r = httpx.get(server + "v1/models", headers={"Host": "attacker.example", "Authorization": f"Bearer {KEY}"})
    assert r.status_code == 403
    assert httpx.get(server + "health").json()["status"] == "ok"


def test_non_loopback_without_key_refuses_to_start(home: Path) -> None:
    env = {k: v for k, v in _env(home).items() if k != "NOMOAT_API_KEY"}
    cmd = [sys.executable, "-m", "nomoat", "serve", "--host", "0.0.0.0", "--port", "0", "--no-auth"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1 and "--no-auth is refused on 0.0.0.0" in proc.stderr
    assert json.dumps(proc.stderr).count("\\n") == 1  # one line, no traceback


def test_web_ui_with_the_real_model_asks_for_the_key_streams_and_cites(server: str) -> None:
    from test_serve_ui import _browser_or_skip

    executable = _browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(server)
        page.wait_for_selector("#key-box.shown")  # the server has a key: the UI asks for it
        page.fill("#key", KEY)
        page.click("#save-key")
        page.wait_for_selector("#kbs li strong")
        assert page.input_value("#mode") == "kb:default"
        page.fill("#message", "What is the office wifi password?")
        page.press("#message", "Enter")
        citation = page.wait_for_selector(".citation button", timeout=300_000)
        assert "office.md" in citation.text_content()
        expect(page.locator(".msg.assistant .text")).to_contain_text("hunter42")
        page.select_option("#mode", "plain")
        page.fill("#message", "Count from one to ten.")
        page.press("#message", "Enter")
        page.wait_for_selector(".msg.assistant >> nth=1 >> .text", timeout=300_000)
        page.wait_for_selector(".msg.assistant:not([aria-busy]) >> nth=1", timeout=300_000)
        assert page.locator(".msg.assistant").nth(1).locator(".text").text_content().strip()
        browser.close()


def test_parallel_server_answers_concurrent_requests_like_the_plain_one(home: Path) -> None:
    """--parallel 2 (batched engine) with three clients at once: each answer complete, greedy, and counted."""
    from concurrent.futures import ThreadPoolExecutor

    questions = ["What is the capital of France?", "What is the capital of Italy?", "Name a primary colour."]
    proc, url = start_server(home, "--parallel", "2", "--max-queue", "4")
    try:
        batched = openai.OpenAI(base_url=url + "v1", api_key=KEY, max_retries=0, timeout=300)

        def ask(c: openai.OpenAI, q: str) -> Any:
            return c.chat.completions.create(model="default", messages=[{"role": "user", "content": q}],
                                             max_tokens=24, temperature=0, seed=0)  # fmt: skip

        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda q: ask(batched, q), questions))
        kb = batched.chat.completions.create(
            model="nomoat-rag", max_tokens=60, messages=[{"role": "user", "content": "What is the wifi password?"}]
        )
    finally:
        proc.terminate()
        proc.wait(30)
    # On topic, not a fixed string: the 135M model's greedy 24 tokens are "L'Étoile, la Marseillaise. Paris is the
    # capital ..." in Q4_1 and "L'Étoile, la Cité, ... is the capital of" in the Q8_0 copy serve runs (llm/formats).
    assert "capital" in answers[0].choices[0].message.content
    from nomoat.llm import runtime

    model = runtime.load("default")  # the plain model counts the same prompt tokens
    for answer, q in zip(answers, questions, strict=True):
        assert answer.usage.prompt_tokens == len(model.encode_chat([{"role": "user", "content": q}]))
        assert 0 < answer.usage.completion_tokens <= 24 and answer.choices[0].finish_reason in ("stop", "length")
    assert "hunter42" in kb.choices[0].message.content  # knowledge-base answers go through the engine too
