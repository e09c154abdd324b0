"""nomoat serve's defences: bind check, Host allow-list, API key, Origin, content type, limits, validation."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from nomoat import cli
from nomoat.errors import UserError
from nomoat.serving.responses import scrub
from nomoat.serving.security import Guard, allowed_hosts, check_bind, host_name, is_loopback, key_matches
from test_serve import CHAT, FakeModel, client, live

KEY = "s3cret-key-for-tests"


@pytest.mark.parametrize(
    "host, loopback",
    [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("example.com", False), ("localhost.evil", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_non_loopback_bind_without_key_is_refused_before_loading_anything(capsys: Any, monkeypatch: Any) -> None:
    with pytest.raises(UserError, match="without an API key"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", KEY)
    check_bind("127.0.0.1", None)
    monkeypatch.delenv("NOMOAT_API_KEY", raising=False)
    # the model path does not exist: the refusal must come first, and as one line
    assert cli.main(["serve", "--host", "0.0.0.0", "--no-auth", "--model", "/nonexistent.gguf"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("nomoat: error: --no-auth is refused on 0.0.0.0") and "\n" not in err
    # without --no-auth there always is a key (a random token by default), so the model is what fails
    assert cli.main(["serve", "--host", "0.0.0.0", "--model", "/nonexistent.gguf"]) == 1
    assert "model not found" in capsys.readouterr().err


def test_allow_any_host_needs_a_key(capsys: Any, monkeypatch: Any) -> None:
    """Issue 18: `--allow-host '*'` turned the Host and Origin checks off even without a key (DNS rebinding)."""
    with pytest.raises(UserError, match="needs an API key"):
        check_bind("127.0.0.1", None, ("*",))
    check_bind("127.0.0.1", KEY, ("*",))
    monkeypatch.delenv("NOMOAT_API_KEY", raising=False)
    argv = ["serve", "--no-auth", "--allow-host", "*", "--model", "/nonexistent.gguf"]
    assert cli.main(argv) == 1 and "--allow-host '*' needs an API key" in capsys.readouterr().err


@pytest.mark.parametrize(
    "host", ["evil.com", "evil.com:8000", "localhost.evil.com", "127.0.0.1.nip.io", "", "127.0.0.2", "[::2]:8000"]
)
def test_unknown_host_header_is_403(host: str) -> None:
    r = client().get("/v1/models", headers={"Host": host})
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1", "LOCALHOST", "[::1]:8000", "notes.lan:9000"])
def test_known_host_headers_are_served(host: str) -> None:
    assert client(allow_hosts=("notes.lan",)).get("/v1/models", headers={"Host": host}).status_code == 200


def test_host_parsing_and_allow_list() -> None:
    assert host_name("[::1]:8000") == "::1" and host_name("Example.COM:80") == "example.com"
    assert host_name("::1") == "::1"  # a bare IPv6 address has no port to strip
    assert allowed_hosts("0.0.0.0") == {"localhost", "127.0.0.1", "::1"}  # a wildcard bind names no host
    assert "10.0.0.7" in allowed_hosts("10.0.0.7")


def test_missing_or_wrong_key_is_401_and_the_right_key_passes() -> None:
    c = client(api_key=KEY)
    assert c.post("/v1/chat/completions", json=CHAT).status_code == 401
    for wrong in (f"Bearer {KEY}x", "Bearer ", f"Basic {KEY}", KEY, f"Bearer {KEY[:-1]}"):
        r = c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": wrong})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", wrong
    for path in ("/v1/models", "/api/kbs", "/v1/nothing"):
        assert c.get(path).status_code == 401, path
    assert c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert c.get("/health").status_code == 200 and c.get("/").status_code == 200  # no data in either


def test_key_comparison() -> None:
    assert key_matches(KEY, KEY) and not key_matches(None, KEY) and not key_matches(KEY + "x", KEY)
    assert not key_matches("", KEY)


def test_cross_origin_requests_are_refused_unless_configured() -> None:
    evil = {"Origin": "https://evil.example"}
    assert client().post("/v1/chat/completions", json=CHAT, headers=evil).status_code == 403
    same = {"Origin": "http://127.0.0.1:8000"}
    assert client().post("/v1/chat/completions", json=CHAT, headers=same).status_code == 200
    c = client(cors_origins=("https://app.example",))
    r = c.post("/v1/chat/completions", json=CHAT, headers={"Origin": "https://app.example"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in client().get("/v1/models").headers  # CORS off by default


def test_post_bodies_must_be_json() -> None:
    # a cross-site <form> or text/plain fetch cannot set this type without a CORS preflight
    r = client().post("/v1/chat/completions", content=json.dumps(CHAT), headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


ABSURD: list[tuple[str, Any]] = [
    ("max_tokens", 0), ("max_tokens", -1), ("max_tokens", 10**12), ("max_tokens", "5"), ("max_tokens", 1.5),
    ("max_tokens", True), ("max_completion_tokens", 999999), ("temperature", -0.1), ("temperature", 2.5),
    ("temperature", "hot"), ("top_p", 0), ("top_p", 1.5), ("n", 2), ("n", 0), ("n", 10**6), ("stop", [""]),
    ("stop", ["a", "b", "c", "d", "e"]), ("stop", "x" * 1000), ("stop", 7), ("seed", -1), ("seed", 2**70),
    ("presence_penalty", 5), ("logprobs", True), ("tools", [{"type": "function"}]), ("messages", []),
    ("messages", [{"role": "tool", "content": "x"}]), ("messages", [{"role": "user", "content": None}]),
    ("messages", [{"role": "user", "content": [{"type": "image_url", "image_url": "file:///etc/passwd"}]}]),
    ("messages", "hello"), ("messages", [{"role": "user", "content": "x"}] * 300), ("model", None), ("stream", "yes"),
]  # fmt: skip


@pytest.mark.parametrize("param, value", ABSURD)
def test_absurd_parameters_are_400_naming_the_parameter(param: str, value: Any) -> None:
    model = FakeModel()
    c = client(model)
    r = c.post("/v1/chat/completions", json={**CHAT, param: value})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"].startswith(param)
    assert len(error["message"]) < 200  # never echoes the value
    assert model.calls == []  # rejected before any work
    assert c.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("body", [b"{", b"[]", b"null", b'{"model": "fake-model", "messages": NaN}', b"\xff\xfe"])
def test_malformed_json_is_400(body: bytes) -> None:
    r = client().post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()


def test_nan_and_infinity_are_rejected() -> None:
    for literal in ("NaN", "Infinity", "1e999"):
        body = json.dumps(CHAT)[:-1] + f', "temperature": {literal}}}'
        r = client().post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "temperature", literal


def test_completions_and_embeddings_limits() -> None:
    c = client()
    for body in ({"prompt": ""}, {"prompt": ["a", "b"]}, {"prompt": "x", "echo": True}, {"prompt": "x", "n": 3}):
        assert c.post("/v1/completions", json={"model": "fake-model", **body}).status_code == 400, body
    for texts in ([], [""], ["x"] * 257, [[1, 2, 3]]):
        assert c.post("/v1/embeddings", json={"model": "nomoat-embed", "input": texts}).status_code == 400, texts
    r = c.post("/v1/embeddings", json={"model": "nomoat-embed", "input": "x", "dimensions": 3})
    assert r.status_code == 400


def test_declared_oversize_body_is_413_without_reading_it() -> None:
    c = client(max_body_bytes=1024)
    r = c.post("/v1/chat/completions", content=b"x" * 2048, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["message"] == "request body larger than 1024 bytes"
    assert c.post("/v1/chat/completions", json=CHAT).status_code == 200


def test_an_endless_streamed_body_is_refused_at_the_limit_and_drained_within_a_bound() -> None:
    """No Content-Length (chunked upload): the guard counts bytes as they arrive and refuses at 1 MiB; the rest
    is read and dropped (so the client gets the 413, not a reset connection), never kept, and never more than
    DRAIN_BYTES of it, however much the client sends."""
    from nomoat.config import ServeConfig
    from nomoat.serving import create_app, security

    app = create_app(FakeModel(), ServeConfig())
    piece, received = b"x" * 65536, 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:  # a client that never stops sending
        nonlocal received
        received += len(piece)
        return {"type": "http.request", "body": piece, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    path = "/v1/chat/completions"
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "scheme": "http", "http_version": "1.1", "server": ("127.0.0.1", 8000),
             "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")]}  # fmt: skip
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413
    assert 2**20 < received <= 2**20 + security.DRAIN_BYTES + 2 * len(piece)


def test_guard_alone_cuts_off_any_app() -> None:
    async def reads_everything(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass

    guard = Guard(reads_everything, hosts=frozenset({"localhost"}), api_key=None, max_body_bytes=10)
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"0123456789abc", "more_body": True}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": [(b"host", b"localhost"),
             (b"content-type", b"application/json")]}  # fmt: skip
    asyncio.run(guard(scope, receive, send))
    assert sent[0]["status"] == 413


def test_scrub_cuts_absolute_paths_and_extra_lines() -> None:
    assert scrub("cannot open /home/a/b/x.sqlite: bad\nTraceback") == "cannot open x.sqlite: bad"
    assert scrub("no knowledge base 'x': run `nomoat ingest PATH`") == "no knowledge base 'x': run `nomoat ingest PATH`"
    assert scrub("see http://127.0.0.1:8000/v1/models") == "see http://127.0.0.1:8000/v1/models"


def test_a_100_mb_upload_to_a_real_server_gets_413_and_the_server_stays_healthy() -> None:
    def chunked() -> Iterator[bytes]:  # no Content-Length: only counting while reading can stop it
        piece = b"x" * 65536
        for _ in range(1600):
            yield piece

    with live(FakeModel()) as url:
        headers = {"Content-Type": "application/json"}
        for content in (chunked(), b"x" * (100 * 2**20)):
            r = httpx.post(f"{url}/v1/chat/completions", content=content, headers=headers, timeout=60)
            assert r.status_code == 413 and r.json()["error"]["message"] == "request body larger than 1048576 bytes"
            assert httpx.get(f"{url}/health").json()["status"] == "ok"
        assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=30).status_code == 200
