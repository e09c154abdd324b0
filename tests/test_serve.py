"""nomoat serve with fake models: OpenAI shapes, knowledge-base answers, the queue, disconnects, errors.

Security and validation cases are in test_serve_security.py. Routes are exercised through FastAPI's TestClient;
the queue and disconnect tests run a real uvicorn server in a thread (real sockets, real client disconnects).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from fakes import FakeEmbedder
from nomoat.config import ServeConfig
from nomoat.errors import UserError
from nomoat.serving import bind, create_app


class FakeGeneration:
    """Like ``runtime.Generation``: pieces, token counts, finish reason; ``closed`` is set when iteration ends
    or the generator is closed (what stopping llama.cpp's loop looks like)."""

    def __init__(self, pieces: list[str] | None, prompt_tokens: int, gate: threading.Event | None = None):
        self.prompt_tokens, self.completion_tokens, self.finish_reason = prompt_tokens, 0, None
        self.notices: list[str] = []
        self.closed = threading.Event()
        self.pieces = self._run(pieces, gate)

    def _run(self, pieces: list[str] | None, gate: threading.Event | None) -> Iterator[str]:
        try:
            i = 0
            while pieces is None or i < len(pieces):  # None: endless, until closed
                if gate is not None:
                    gate.wait()
                elif pieces is None:
                    time.sleep(0.005)
                self.completion_tokens += 1
                yield pieces[i] if pieces is not None else "la "
                i += 1
            self.finish_reason = "stop"
        finally:
            self.closed.set()

    def __iter__(self) -> Iterator[str]:
        return self.pieces


class FakeModel:
    """The part of ``runtime.Model`` the server uses. ``text`` is split into word pieces; ``gate`` holds every
    piece until set; ``endless`` generates until closed; ``error`` is raised by chat/generate."""

    name, n_ctx = "fake-model", 4096

    def __init__(self, text: str = "Paris is the capital of France.", **options: Any) -> None:
        self.text, self.options = text, options
        self.lock = threading.Lock()
        self.calls: list[Any] = []
        self.generations: list[FakeGeneration] = []

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return [len(t) for t in re.findall(r"\w+|[^\w\s]", text)]

    def _generation(self, prompt_tokens: int) -> FakeGeneration:
        if self.options.get("error"):
            raise self.options["error"]
        pieces = None if self.options.get("endless") else re.findall(r"\S+\s*", self.text)
        generation = FakeGeneration(pieces, prompt_tokens, self.options.get("gate"))
        self.generations.append(generation)
        return generation

    def chat(self, messages: Any, gen: Any = None, **kw: Any) -> FakeGeneration:
        self.calls.append(("chat", messages, gen))
        return self._generation(sum(len(self.tokenize(m["content"])) for m in messages))

    def generate(self, tokens: list[int], gen: Any = None) -> FakeGeneration:
        self.calls.append(("generate", tokens, gen))
        return self._generation(len(tokens))


def client(model: FakeModel | None = None, **config: Any) -> TestClient:
    app = create_app(model or FakeModel(), ServeConfig(**config), embedder=FakeEmbedder(), retrieve=config_retrieve)
    return TestClient(app, base_url="http://127.0.0.1:8000", raise_server_exceptions=False)


HITS = [
    {"path": "notes/office.md", "location": "lines 1-3", "text": "The office wifi password is hunter42.",
     "chunk_id": 7, "cosine": 0.9},
]  # fmt: skip


def config_retrieve(query: str, kb: str = "default", k: int = 5) -> list[dict[str, Any]]:
    return [dict(h) for h in HITS]


def sse_events(text: str) -> list[Any]:
    """Data payloads of an SSE body: JSON objects, and the final "[DONE]"."""
    out = []
    for line in text.splitlines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "What is the capital of France?"}]}


def test_chat_completion_has_openai_shape_usage_and_finish_reason() -> None:
    model = FakeModel()
    r = client(model).post("/v1/chat/completions", json={**CHAT, "max_tokens": 20, "temperature": 0.5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "Paris is the capital of France."}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13}
    _, messages, gen = model.calls[0]
    assert messages == CHAT["messages"] and (gen.max_tokens, gen.temperature) == (20, 0.5)
    assert "nomoat" not in body  # the extra field is for knowledge-base answers only


def test_streaming_chat_sends_role_pieces_finish_usage_and_done() -> None:
    r = client().post("/v1/chat/completions", json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "Paris is the capital of France."
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    assert len({c["id"] for c in chunks}) == 1


def test_developer_role_and_text_parts_are_accepted() -> None:
    model = FakeModel()
    parts = [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": parts}]
    r = client(model).post("/v1/chat/completions", json={"model": "default", "messages": messages})
    assert r.status_code == 200
    assert model.calls[0][1] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


def test_completions_stream_and_not_with_stop_strings() -> None:
    model = FakeModel("Paris. Rome.")
    c = client(model)
    r = c.post("/v1/completions", json={"model": "fake-model", "prompt": "Capital:", "max_tokens": 5, "stop": ["\n"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == "Paris. Rome."
    assert body["usage"]["prompt_tokens"] == 2
    kind, tokens, gen = model.calls[0]
    assert kind == "generate" and tokens == model.tokenize("Capital:") and gen.stop == ("\n",)
    r = c.post("/v1/completions", json={"model": "fake-model", "prompt": ["Capital:"], "stream": True})
    events = sse_events(r.text)
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == "Paris. Rome." and events[-1] == "[DONE]"


def test_embeddings_float_and_base64_agree_with_the_embedder() -> None:
    c = client()
    texts = ["the office wifi", "billing deploy"]
    floats = c.post("/v1/embeddings", json={"model": "nomoat-embed", "input": texts}).json()
    b64 = c.post("/v1/embeddings", json={"model": "nomoat-embed", "input": texts, "encoding_format": "base64"}).json()
    expected = FakeEmbedder().embed(texts)
    assert [d["index"] for d in floats["data"]] == [0, 1]
    np.testing.assert_allclose(np.array([d["embedding"] for d in floats["data"]]), expected, rtol=1e-6)
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in b64["data"]])
    np.testing.assert_array_equal(decoded, expected)
    assert floats["usage"]["prompt_tokens"] == 5


def test_models_lists_the_model_rag_the_served_knowledge_bases_and_embedder(nomoat_home: Any) -> None:
    (nomoat_home / "kb").mkdir()
    for name in ("notes", "private"):
        (nomoat_home / "kb" / f"{name}.sqlite").touch()
    ids = [m["id"] for m in client(kbs=("notes", "absent")).get("/v1/models").json()["data"]]
    assert ids == ["fake-model", "nomoat-rag", "kb:notes", "nomoat-embed"]  # not kb:private: not served
    ids = [m["id"] for m in client().get("/v1/models").json()["data"]]
    assert ids == ["fake-model", "nomoat-rag", "nomoat-embed"]  # only the default KB, and it does not exist


def test_only_the_knowledge_bases_a_server_was_started_with_are_reachable(nomoat_home: Any, tmp_path: Any) -> None:
    """Issue 18: `kb:<name>` and the chunk route used to open any KB under NOMOAT_HOME (chunk ids are sequential)."""
    from nomoat.kb import ingest

    for name in ("notes", "private"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.md").write_text(f"# {name}\n\nThe {name} secret is hunter42.\n")
        ingest.run([str(tmp_path / name)], kb=name, embedder=FakeEmbedder(), progress=False)
    question = {"role": "user", "content": "What is the secret?"}
    with client(FakeModel("The notes secret is hunter42 [1]."), kb="notes") as c:  # one event loop throughout
        r = c.post("/v1/chat/completions", json={"model": "kb:private", "messages": [question]})
        assert r.status_code == 404 and "hunter42" not in r.text
        assert c.get("/api/kbs/private/chunks/1").status_code == 404
        assert [kb["name"] for kb in c.get("/api/kbs").json()["data"]] == ["notes"]
        assert c.post("/v1/chat/completions", json={"model": "kb:notes", "messages": [question]}).status_code == 200
        assert c.post("/v1/chat/completions", json={"model": "nomoat-rag", "messages": [question]}).status_code == 200
        assert c.get("/api/kbs/notes/chunks/1").status_code == 200


def test_knowledge_base_answer_carries_checked_citations(nomoat_home: Any) -> None:
    (nomoat_home / "kb").mkdir()
    (nomoat_home / "kb" / "notes.sqlite").touch()
    model = FakeModel("The office wifi password is hunter42 [1].")
    question = {"role": "user", "content": "What is the office wifi password?"}
    r = client(model, kbs=("notes",)).post("/v1/chat/completions", json={"model": "kb:notes", "messages": [question]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "hunter42" in body["choices"][0]["message"]["content"]
    extra = body["nomoat"]
    assert (extra["kb"], extra["grounded"], extra["mode"]) == ("notes", True, "generated")
    assert extra["citations"][0]["path"] == "notes/office.md"
    assert extra["citations"][0]["quote"] in HITS[0]["text"]
    assert extra["citations"][0]["chunk_id"] == 7  # what the UI opens the cited passage by
    assert body["usage"]["completion_tokens"] == 7  # counted from the model's generation inside rag
    # streamed: the checked answer in one piece, the citations on the last chunk
    body = {"model": "kb:notes", "messages": [question], "stream": True}
    r = client(model, kbs=("notes",)).post("/v1/chat/completions", json=body)
    chunks = sse_events(r.text)[:-1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["nomoat"]["citations"][0]["path"] == "notes/office.md"


def test_answers_name_sources_below_the_ingested_folder_never_by_absolute_path(tmp_path: Any) -> None:
    from nomoat.kb import ingest, store

    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "sub" / "office.md").write_text("# Office\n\nThe office wifi password is hunter42.\n")
    (tmp_path / "docs" / "other.md").write_text("# Other\n\nNothing to see.\n")
    ingest.run([str(tmp_path / "docs")], kb="default", embedder=FakeEmbedder(), progress=False)
    with store.connect("default") as conn:
        rows = store.get_chunks(conn, [r[0] for r in conn.execute("SELECT id FROM chunks")])
    hit = next({**dict(r), "chunk_id": i, "cosine": 0.9} for i, r in rows.items() if "hunter42" in r["text"])
    assert hit["path"].startswith(str(tmp_path))  # the store keeps absolute paths; replies must not
    model = FakeModel("The office wifi password is hunter42 [1].")
    app = create_app(model, ServeConfig(), embedder=FakeEmbedder(), retrieve=lambda q, kb="default", k=5: [hit])
    c = TestClient(app, base_url="http://127.0.0.1:8000")
    question = {"role": "user", "content": "What is the office wifi password?"}
    r = c.post("/v1/chat/completions", json={"model": "nomoat-rag", "messages": [question]})
    assert r.json()["nomoat"]["citations"][0]["path"] == "sub/office.md"
    assert str(tmp_path) not in r.text
    assert str(tmp_path) not in json.dumps(model.calls[-1][1])  # nor in the prompt the model saw
    assert c.get(f"/api/kbs/default/chunks/{hit['chunk_id']}").json()["path"] == "sub/office.md"


def test_unknown_model_and_missing_knowledge_base_are_404() -> None:
    c = client()
    for name in ("gpt-4o", "kb:nothere", "nomoat-rag", "kb:../../etc/passwd"):
        r = c.post("/v1/chat/completions", json={**CHAT, "model": name})
        assert r.status_code == 404 and r.json()["error"]["param"] == "model", name
    r = c.post("/v1/embeddings", json={"model": "fake-model", "input": "x"})
    assert r.status_code == 404


def test_a_prompt_that_does_not_fit_is_a_400_even_when_streaming() -> None:
    model = FakeModel(error=UserError("the prompt (5000 tokens) does not fit the 4096-token context"))
    for stream in (False, True):
        r = client(model).post("/v1/chat/completions", json={**CHAT, "stream": stream})
        assert r.status_code == 400
        assert r.json()["error"]["message"] == "the prompt (5000 tokens) does not fit the 4096-token context"


def test_internal_errors_hide_paths_and_tracebacks() -> None:
    model = FakeModel(error=RuntimeError("/home/alice/secret/model.gguf: tensor blk.0 broke\nTraceback ..."))
    r = client(model).post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 500
    assert r.json() == {"error": {"message": "internal error (see the server log)", "type": "server_error",
                                  "param": None, "code": None}}  # fmt: skip
    model = FakeModel(error=UserError("cannot open knowledge base /home/alice/.local/share/nomoat/kb/x.sqlite: bad"))
    r = client(model).post("/v1/chat/completions", json=CHAT)
    assert r.status_code == 400 and r.json()["error"]["message"] == "cannot open knowledge base x.sqlite: bad"
    r = client().get("/no/such/route")
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_ui_page_and_script_are_served_with_a_strict_policy() -> None:
    c = client(api_key="k" * 20)  # the page itself needs no key: it asks for one
    page = c.get("/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert c.get("/app.js").status_code == 200


def test_kb_status_and_chunk_view_never_expose_server_paths(nomoat_home: Any, tmp_path: Any) -> None:
    from nomoat.kb import ingest

    (tmp_path / "a.md").write_text("# Office\n\nThe office wifi password is hunter42.\n")
    ingest.run([str(tmp_path)], kb="notes", embedder=FakeEmbedder(), progress=False)
    c = client(kbs=("notes",))
    status = c.get("/api/kbs").json()
    assert status["rag_kb"] == "default" and status["data"][0]["name"] == "notes"
    assert status["data"][0]["documents"] == 1 and "path" not in status["data"][0]
    assert str(nomoat_home) not in json.dumps(status)
    r = c.get("/api/kbs/notes/chunks/1")
    assert r.status_code == 200 and "hunter42" in r.json()["text"]
    assert r.json()["path"] == "a.md" and str(tmp_path) not in r.text  # below the ingested folder, not absolute
    assert c.get("/api/kbs/notes/chunks/999").status_code == 404
    assert c.get("/api/kbs/nope/chunks/1").status_code == 404
    assert c.get("/api/kbs/notes/chunks/99999999999999999999999").status_code in (400, 404)


# -- a real server in a thread: queue and disconnects ------------------------------------------------------------
@contextlib.contextmanager
def live(model: FakeModel, retrieve: Any = None, policy: Any = None, **config: Any) -> Iterator[str]:
    """A real uvicorn server on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    from nomoat.serving.connections import uvicorn_config

    sock = bind("127.0.0.1", 0)
    settings = ServeConfig(**config)
    app = create_app(model, settings, embedder=FakeEmbedder(), retrieve=retrieve, policy=policy)
    server = uvicorn.Server(uvicorn_config(app, settings))  # the settings `nomoat serve` runs with
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)


def wait_until(check: Any, what: str) -> None:
    for _ in range(1000):  # up to ~10 s; a bound on waiting, not a timing assertion
        if check():
            return
        time.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def test_full_queue_gives_429_and_waiting_requests_still_complete() -> None:
    gate = threading.Event()
    model = FakeModel("one two", gate=gate)
    with live(model, max_queue=1) as url:
        results: dict[str, int] = {}

        def post(name: str) -> None:
            results[name] = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=30).status_code

        def health() -> dict[str, Any]:
            return httpx.get(f"{url}/health").json()

        running = threading.Thread(target=post, args=("running",))
        running.start()
        wait_until(lambda: health()["busy"], "first request running")
        waiting = threading.Thread(target=post, args=("waiting",))
        waiting.start()
        wait_until(lambda: health()["waiting"] == 1, "second request queued")
        refused = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=30)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "rate_limit_error"
        gate.set()
        running.join(30)
        waiting.join(30)
        assert results == {"running": 200, "waiting": 200}
        assert health() == {"status": "ok", "busy": False, "waiting": 0}


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_stops_generation_and_frees_the_slot(stream: bool) -> None:
    model = FakeModel(endless=True)
    with live(model) as url:
        body = {**CHAT, "stream": stream, "max_tokens": 2048}
        if stream:
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as r:
                assert r.status_code == 200
                next(r.iter_lines())  # text is flowing; now hang up
        else:
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{url}/v1/chat/completions", json=body, timeout=0.5)
        wait_until(lambda: model.generations and model.generations[0].closed.is_set(), "generation closed")
        wait_until(lambda: not httpx.get(f"{url}/health").json()["busy"], "slot freed")
        assert model.generations[0].finish_reason is None  # stopped, not finished
        model.options["endless"] = False
        assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=30).status_code == 200


def test_a_client_that_leaves_while_queued_never_reaches_the_model() -> None:
    gate = threading.Event()
    model = FakeModel("one two", gate=gate)
    with live(model) as url:
        running = threading.Thread(target=httpx.post, args=(f"{url}/v1/chat/completions",),
                                   kwargs={"json": CHAT, "timeout": 30})  # fmt: skip
        running.start()
        wait_until(lambda: httpx.get(f"{url}/health").json()["busy"], "first request running")
        with pytest.raises(httpx.ReadTimeout):  # queued behind the first, then gives up
            httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=0.5)
        gate.set()
        running.join(30)
        wait_until(lambda: httpx.get(f"{url}/health").json() == {"status": "ok", "busy": False, "waiting": 0}, "idle")
        assert len(model.generations) == 1


def test_slot_serves_waiters_in_order_and_newcomers_wait_their_turn() -> None:
    from nomoat.serving.engine import Busy, Slot

    async def scenario() -> list[str]:
        slot, order = Slot(max_queue=3), []
        await slot.acquire()  # "first" holds it

        async def request(name: str) -> None:
            await slot.acquire()
            order.append(name)

        waiters = [asyncio.ensure_future(request(n)) for n in ("a", "b", "c")]
        await asyncio.sleep(0)
        assert slot.waiting == 3
        with pytest.raises(Busy):
            await slot.acquire()
        waiters[1].cancel()  # "b" gives up: leaves the line
        await asyncio.sleep(0)
        slot.release()  # to "a"; a newcomer arriving now must queue behind "c"
        late = asyncio.ensure_future(request("late"))
        await asyncio.sleep(0)
        for _ in range(3):
            slot.release()
            await asyncio.sleep(0)
        await asyncio.gather(waiters[0], waiters[2], late)
        return order

    assert asyncio.run(scenario()) == ["a", "c", "late"]
