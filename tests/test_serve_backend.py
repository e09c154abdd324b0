"""`nomoat serve --backend-url`: generation by another OpenAI-compatible server (serving/backend.py).

A small fake server on a real socket (tests/fake_openai.py) plays the backend, so every error path is real HTTP:
refused connections, silence past the timeout, a stream cut off mid-answer, error statuses. The real engine
(llama-cpp-python's server) is in tests/integration/test_serve_openai.py.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fake_openai import FakeBackend
from fakes import FakeEmbedder
from nomoat.config import GenerationConfig, ServeConfig
from nomoat.errors import UserError
from nomoat.serving import create_app
from nomoat.serving.backend import KEY_ENV, BackendError, BackendModel, check_url, connect, shown_name

HITS = [{"path": "notes/office.md", "location": "lines 1-3", "text": "The office wifi password is hunter42.",
         "chunk_id": 7, "cosine": 0.9}]  # fmt: skip
QUESTION = {"role": "user", "content": "What is the office wifi password?"}
SECRET = "sk-backend-secret-0123456789"


@pytest.fixture
def backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBackend]:
    monkeypatch.setenv(KEY_ENV, SECRET)
    with FakeBackend() as fake:
        yield fake


def client(model: BackendModel) -> TestClient:
    app = create_app(model, ServeConfig(), embedder=FakeEmbedder(), retrieve=lambda q, kb="default", k=5: HITS)
    return TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False)


def sse(text: str) -> list[Any]:
    data = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    return [d if d == "[DONE]" else json.loads(d) for d in data]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("url", "says"),
    [("ftp://host/v1", "http:// or https://"), ("127.0.0.1:8000/v1", "http:// or https://"),
     ("http:///v1", "with a host"), ("http://user:pw@host/v1", "NOMOAT_BACKEND_KEY"),
     ("http://host:99999/v1", "not a valid URL"), ("http://host/v1?key=x", "no ?query")],
)  # fmt: skip
def test_bad_urls_are_one_line_errors_that_do_not_echo_the_url(url: str, says: str) -> None:
    with pytest.raises(UserError, match=says.replace("?", r"\?")) as caught:
        check_url(url)
    assert "\n" not in str(caught.value) and "pw" not in str(caught.value)
    assert check_url(" https://gpu-box:8000/v1/ ") == "https://gpu-box:8000/v1"


def test_connect_finds_the_one_model_and_checks_a_named_one(backend: FakeBackend) -> None:
    assert connect(backend.url, n_ctx=4096).model_id == "fake-llm"
    assert backend.auth[-1] == f"Bearer {SECRET}"  # the key from the environment, on every request
    with pytest.raises(UserError, match=r"does not serve 'other' \(it serves fake-llm\)"):
        connect(backend.url, "other", n_ctx=4096)
    backend.models.append({"id": "/srv/models/big.gguf", "max_model_len": 2048})
    with pytest.raises(UserError, match="name the one to use with --backend-model"):
        connect(backend.url, n_ctx=4096)
    big = connect(backend.url, "/srv/models/big.gguf", n_ctx=4096)
    assert (big.name, big.n_ctx) == ("big", 2048)  # no path shown to clients; vLLM's max_model_len caps --ctx


def test_connect_errors_are_one_line(backend: FakeBackend) -> None:
    with pytest.raises(UserError, match="no /models route: does --backend-url end in /v1"):
        connect(backend.url.removesuffix("/v1"), n_ctx=4096)
    with pytest.raises(UserError, match=r"cannot reach the backend .* start it first") as caught:
        connect(f"http://127.0.0.1:{free_port()}/v1", n_ctx=4096)
    assert "\n" not in str(caught.value)


def test_shown_names_never_carry_paths() -> None:
    assert shown_name("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert shown_name("/home/me/exports/tuned") == "tuned"
    assert shown_name("C:\\models\\a.gguf") == "a" and shown_name("llama3.2:1b") == "llama3.2:1b"


def test_chat_streams_through_with_the_backends_usage_and_the_request_it_was_sent(backend: FakeBackend) -> None:
    c = client(connect(backend.url, n_ctx=4096))
    assert next(m["id"] for m in c.get("/v1/models").json()["data"]) == "fake-llm"
    messages = [{"role": "user", "content": "Hi"}]
    body = {"model": "fake-llm", "messages": messages, "max_tokens": 50, "stop": ["END"], "seed": 3}
    r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == backend.reply
    assert r.json()["usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    sent = backend.requests[-1]
    assert (sent["model"], sent["messages"], sent["stream"]) == ("fake-llm", messages, True)
    assert (sent["max_tokens"], sent["stop"], sent["seed"]) == (50, ["END"], 3)
    events = sse(c.post("/v1/chat/completions", json={**body, "stream": True}).text)
    pieces = [e["choices"][0]["delta"].get("content") for e in events[:-1] if e["choices"]]
    assert "".join(p for p in pieces if p) == backend.reply and len([p for p in pieces if p]) == 7
    assert events[-1] == "[DONE]"


def test_without_usage_from_the_backend_tokens_are_counted_and_estimated(backend: FakeBackend) -> None:
    backend.usage = False  # llama-cpp-python's server sends none when streaming
    model = connect(backend.url, n_ctx=4096)
    generation = model.chat([{"role": "user", "content": "x" * 30}], GenerationConfig(max_tokens=5000))
    assert "".join(generation) == backend.reply
    assert (generation.prompt_tokens, generation.completion_tokens, generation.finish_reason) == (18, 7, "stop")
    assert backend.requests[-1]["max_tokens"] == 4096 - 18  # never past the context: vLLM refuses that


def test_completions_go_to_the_backends_completions_route(backend: FakeBackend) -> None:
    c = client(connect(backend.url, n_ctx=4096))
    r = c.post("/v1/completions", json={"model": "default", "prompt": "The capital of France is", "max_tokens": 8})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == backend.reply
    assert backend.requests[-1]["prompt"] == "The capital of France is"


def test_knowledge_base_answer_is_checked_and_cited_by_nomoat(backend: FakeBackend, nomoat_home: Any) -> None:
    (nomoat_home / "kb").mkdir()
    (nomoat_home / "kb" / "default.sqlite").touch()
    c = client(connect(backend.url, n_ctx=4096))
    r = c.post("/v1/chat/completions", json={"model": "nomoat-rag", "messages": [QUESTION]})
    assert r.status_code == 200, r.text
    extra = r.json()["nomoat"]
    assert (extra["grounded"], extra["mode"]) == (True, "generated")
    assert extra["citations"][0]["path"] == "notes/office.md"
    prompt = backend.requests[-1]["messages"][-1]["content"]
    assert "[1] (notes/office.md, lines 1-3)" in prompt and "hunter42" in prompt  # nomoat's prompt, sources in it
    backend.reply = "The password is swordfish99 [1]."  # a fact not in the sources: the check replaces it
    extra = c.post("/v1/chat/completions", json={"model": "nomoat-rag", "messages": [QUESTION]}).json()["nomoat"]
    assert extra["mode"] == "extractive"


def test_refused_connection_is_a_502_with_one_line(backend: FakeBackend, caplog: Any) -> None:
    model = connect(backend.url, n_ctx=4096)
    model.url = f"http://127.0.0.1:{free_port()}/v1"  # the backend went away after startup
    for stream in (False, True):
        r = client(model).post("/v1/chat/completions", json={"model": "fake-llm", "messages": [QUESTION],
                                                            "stream": stream})  # fmt: skip
        assert r.status_code == 502, r.text
        assert r.json()["error"]["message"] == "cannot reach the generation backend (connection refused or no route)"
    assert SECRET not in caplog.text


def test_silent_backend_is_a_504(backend: FakeBackend) -> None:
    backend.mode, backend.delay = "slow", 2.0
    model = BackendModel(backend.url, "fake-llm", n_ctx=4096, read_timeout=0.3)
    r = client(model).post("/v1/chat/completions", json={"model": "fake-llm", "messages": [QUESTION]})
    assert r.status_code == 504 and r.json()["error"]["message"] == "the generation backend sent nothing for 0.3 s"


def test_backend_going_away_mid_stream_gives_an_error_event_not_a_hung_stream(backend: FakeBackend) -> None:
    backend.mode = "drop"  # two pieces, then the connection closes without [DONE]
    c = client(connect(backend.url, n_ctx=4096))
    r = c.post("/v1/chat/completions", json={"model": "fake-llm", "messages": [QUESTION], "stream": True})
    assert r.status_code == 200  # the stream had begun
    events = sse(r.text)
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[1:3]) == "The office "
    assert events[-2]["error"]["message"] == "the generation backend closed the stream before the answer ended"
    assert events[-1] == "[DONE]"
    r = c.post("/v1/chat/completions", json={"model": "fake-llm", "messages": [QUESTION]})
    assert r.status_code == 502  # not streaming: the same failure before any byte


@pytest.mark.parametrize(("status", "expected"), [(500, 502), (400, 502), (401, 502), (429, 429)])
def test_backend_error_statuses(backend: FakeBackend, status: int, expected: int) -> None:
    backend.mode, backend.status = "status", status
    r = client(connect(backend.url, n_ctx=4096)).post(
        "/v1/chat/completions", json={"model": "fake-llm", "messages": [QUESTION]})  # fmt: skip
    assert r.status_code == expected
    message = r.json()["error"]["message"]
    assert "\n" not in message and "/srv/secret" not in message and SECRET not in message
    assert ("NOMOAT_BACKEND_KEY" in message) == (status == 401)


def test_closing_a_generation_closes_the_backend_request(backend: FakeBackend) -> None:
    backend.mode = "endless"
    generation = connect(backend.url, n_ctx=4096).chat([QUESTION])
    pieces = iter(generation)
    assert next(pieces) and next(pieces)
    pieces.close()  # what serving/work.py does when the client leaves
    assert backend.closed_early.wait(5)


def test_errors_are_openai_shaped_backend_errors() -> None:
    error = BackendError("the generation backend sent nothing for 1 s", 504)
    assert (error.status, error.kind, error.param) == (504, "server_error", None)


def test_serve_refuses_model_with_backend_url_and_bad_timeout(backend: FakeBackend) -> None:
    import nomoat

    with pytest.raises(UserError, match="--model and --backend-url exclude each other"):
        nomoat.serve(backend_url=backend.url, model="default")
    with pytest.raises(UserError, match="--backend-timeout"):
        nomoat.serve(backend_url=backend.url, backend_timeout=0)
    with pytest.raises(UserError, match="http:// or https://"):
        nomoat.serve(backend_url="file:///etc/passwd")


def test_log_lines_never_carry_the_key(backend: FakeBackend, caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)
    backend.mode = "drop"
    model = connect(backend.url, n_ctx=4096)
    with pytest.raises(BackendError):
        "".join(model.chat([QUESTION]))
    assert SECRET not in caplog.text


def test_backend_requests_run_concurrently(backend: FakeBackend) -> None:
    backend.together = threading.Barrier(4)  # the backend answers only when all four requests are in at once
    model = BackendModel(backend.url, "fake-llm", n_ctx=4096, parallel=4)
    body = {"model": "fake-llm", "messages": [QUESTION]}
    with client(model) as c, ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda _: c.post("/v1/chat/completions", json=body).status_code, range(4)))
    assert codes == [200] * 4  # one after the other, the first would have waited in vain (500 -> 502)
