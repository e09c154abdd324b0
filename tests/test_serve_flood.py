"""Issue 18: clients that only hold connections open must not take the server down (real sockets, real server).

Before: 64 idle TCP connections, or 63 POSTs announcing a body never sent, made every request (even /health)
get 503 for as long as they stayed open, and each abandoned body logged two tracebacks."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import httpx

from test_serve import CHAT, FakeModel, live


@contextmanager
def sockets(url: str, n: int, payload: bytes = b"") -> Iterator[list[socket.socket]]:
    host, port = url.removeprefix("http://").split(":")
    with ExitStack() as stack:
        opened = []
        for _ in range(n):
            s = stack.enter_context(socket.create_connection((host, int(port))))
            if payload:
                s.sendall(payload)
            opened.append(s)
        yield opened


def closed_by_server(s: socket.socket, within: float) -> bool:
    s.settimeout(within)
    try:
        while s.recv(4096):  # a 408/close or nothing: either way the server ends it
            pass
        return True
    except (TimeoutError, ConnectionResetError):
        return False


def served(url: str) -> bool:
    return httpx.get(f"{url}/health", timeout=10).status_code == 200


def test_64_idle_connections_do_not_starve_real_requests() -> None:
    with live(FakeModel(), header_timeout=2.0) as url, sockets(url, 64) as idle:
        time.sleep(0.2)
        assert all(served(url) for _ in range(5))  # each new client makes room by closing the oldest idle one
        assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
        assert closed_by_server(idle[-1], within=5)  # and idle ones are closed by the header deadline anyway


def test_63_posts_that_never_send_their_body_are_cut_off_with_one_log_line_each(caplog: Any) -> None:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    caplog.set_level(logging.INFO)
    with live(FakeModel(), body_timeout=2.0) as url, sockets(url, 63, head) as stuck:
        time.sleep(0.2)
        assert all(served(url) for _ in range(3))
        assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
        assert all(closed_by_server(s, within=6) for s in stuck[-3:])
        time.sleep(0.5)
        assert served(url)
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
    gone = [r for r in caplog.records if "before its whole body arrived" in r.getMessage()]
    assert 1 <= len(gone) <= 63  # one line per abandoned body, no more


def test_a_slow_header_sender_is_closed_at_the_header_deadline() -> None:
    with live(FakeModel(), header_timeout=1.0) as url, sockets(url, 1, b"GET /health HTTP/1.1\r\nHo") as (slow,):
        started = time.monotonic()
        for _ in range(3):  # a byte now and then does not extend the deadline
            time.sleep(0.3)
            try:
                slow.sendall(b"s")
            except OSError:
                break
        assert closed_by_server(slow, within=4)
        assert time.monotonic() - started < 4
        assert served(url)


def test_keep_alive_requests_on_one_connection_still_work() -> None:
    with live(FakeModel(), header_timeout=1.0) as url, httpx.Client(base_url=url) as c:
        for _ in range(3):
            assert c.get("/health").status_code == 200
            time.sleep(0.3)
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
