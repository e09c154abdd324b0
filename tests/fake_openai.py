"""A small OpenAI-compatible server on a real socket, for `nomoat serve --backend-url` tests.

It streams ``reply`` word by word as chat or text-completion chunks and can misbehave on request: ``mode`` is
``"ok"``, ``"slow"`` (nothing for ``delay`` seconds), ``"drop"`` (a few pieces, then the connection closes
without ``[DONE]``), ``"status"`` (``status`` with an OpenAI error body) or ``"endless"`` (until the client
closes). Every request body and Authorization header is recorded.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeBackend:
    def __init__(self, models: tuple[dict[str, Any], ...] = ({"id": "fake-llm", "object": "model"},)) -> None:
        self.models = list(models)
        self.reply = "The office wifi password is hunter42 [1]."
        self.mode, self.status, self.delay = "ok", 500, 5.0
        self.usage = True  # send a usage chunk at the end (llama-cpp-python's server does not)
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.closed_early = threading.Event()  # an endless stream noticed its client leave
        self.together: threading.Barrier | None = None  # set: requests wait until this many are in flight
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeBackend:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def events(self, chat: bool) -> Iterator[dict[str, Any]]:
        words = self.reply.split(" ")
        for i, word in enumerate(words):
            piece = word if i == len(words) - 1 else word + " "
            choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
            yield {"object": "chunk", "choices": [{**choice, "finish_reason": None}]}
        done = {"index": 0, "delta": {}} if chat else {"index": 0, "text": ""}
        yield {"object": "chunk", "choices": [{**done, "finish_reason": "stop"}]}
        if self.usage:
            yield {"object": "chunk", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": len(words)}}


def _handler(backend: FakeBackend) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _json(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            backend.auth.append(self.headers.get("Authorization"))
            if self.path == "/v1/models":
                self._json(200, {"object": "list", "data": backend.models})
            else:
                self._json(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            backend.requests.append(body)
            backend.auth.append(self.headers.get("Authorization"))
            if backend.mode == "status":
                self._json(backend.status, {"error": {"message": "model exploded\nat /srv/secret/engine.py"}})
                return
            if backend.mode == "slow":
                time.sleep(backend.delay)
            if backend.together is not None:  # answer only once that many requests are in flight at once
                try:
                    backend.together.wait(timeout=10)
                except threading.BrokenBarrierError:
                    self._json(500, {"error": {"message": "requests did not arrive together"}})
                    return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()  # HTTP/1.0, no length: the body ends when the connection closes
            try:
                self._stream(self.path.endswith("/chat/completions"))
            except (BrokenPipeError, ConnectionResetError):
                backend.closed_early.set()

        def _stream(self, chat: bool) -> None:
            events = list(backend.events(chat))
            if backend.mode == "endless":
                while True:  # until the client closes: the write then fails
                    self._send(events[0])
                    time.sleep(0.01)
            for event in events[:2] if backend.mode == "drop" else events:
                self._send(event)
            if backend.mode != "drop":
                self.wfile.write(b"data: [DONE]\n\n")

        def _send(self, event: dict[str, Any]) -> None:
            self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            self.wfile.flush()

    return Handler
