"""What stands between the network and the model: bind check, Host allow-list, API key, body limit.

The threats, for a server that by default listens on loopback without a key:

* **DNS rebinding**: a web page makes its own host name resolve to 127.0.0.1 and then talks to us as
  "same origin". The browser still sends the page's host name in ``Host``, so only known names are served.
* **Cross-site requests**: a page on another origin can POST a "simple" request to 127.0.0.1 without a CORS
  preflight. An ``Origin`` that is not ours (or configured for CORS) is refused, and POST bodies must be JSON,
  which a simple cross-site request cannot send.
* **Exhaustion**: bodies are counted as they arrive, so a 100 MB upload is cut off at the limit with 413
  instead of being buffered first.

Everything here is a plain ASGI middleware (no FastAPI import), so it also guards the static UI.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from nomoat.errors import UserError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
OPEN_PATHS = ("/", "/app.js", "/health")
# A refused body is read and dropped (never kept) up to these bounds before the 413 goes out: closing a
# connection with unread upload data makes the kernel reset it, and the client then sees "connection reset"
# instead of the 413 (the lingering close of nginx and Apache). Bigger or slower uploads are just cut off.
DRAIN_BYTES = 256 * 2**20
DRAIN_SECONDS = 5.0
"""Served without the API key: the UI page (it asks for the key) and a liveness probe. No data in either."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or name to bind) only accepts connections from this machine."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name could resolve anywhere


def check_bind(host: str, api_key: str | None, allow_hosts: Iterable[str] = ()) -> None:
    """Refuse to listen beyond this machine without a key, and to drop the Host and Origin checks (``--allow-host
    '*'``) without one: that opens the server to DNS rebinding. Raises UserError with what to do."""
    if not is_loopback(host) and not api_key:
        raise UserError(
            f"refusing to serve on {host} without an API key: anyone on the network could use it; "
            "set NOMOAT_API_KEY (or --api-key-file), or bind 127.0.0.1"
        )
    if "*" in allow_hosts and not api_key:
        raise UserError("--allow-host '*' needs an API key: without one any web page could use this server")


def allowed_hosts(bind_host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """Host header names (without port, lower case, IPv6 without brackets) this server answers to."""
    names = {*LOOPBACK_NAMES, *(h.strip("[]").lower() for h in extra)}
    if bind_host not in ("0.0.0.0", "::", ""):  # a wildcard bind names no host
        names.add(bind_host.strip("[]").lower())
    return frozenset(names)


def host_name(header: str) -> str:
    """``"example.com:8000"`` -> ``"example.com"``; ``"[::1]:8000"`` -> ``"::1"``; lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else ""
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def key_matches(given: str | None, expected: str) -> bool:
    """Constant-time key comparison. Both sides are hashed first so not even the length leaks through timing."""
    if given is None:
        return False
    digest = hashlib.sha256
    return hmac.compare_digest(digest(given.encode()).digest(), digest(expected.encode()).digest())


def bearer(headers: dict[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class BodyTooLarge(Exception):
    """Raised from ``receive`` once a request body passes the limit (becomes 413)."""


async def send_error(send: Send, status: int, message: str, kind: str, headers: Iterable[tuple[str, str]] = ()) -> None:
    """An OpenAI-shaped error response: ``{"error": {"message", "type", "param", "code"}}``."""
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def discard_body(receive: Receive) -> None:
    """Read and drop the rest of a request body, at most DRAIN_BYTES for at most DRAIN_SECONDS."""
    drained = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            while drained <= DRAIN_BYTES:
                message = await receive()
                if message["type"] != "http.request":
                    return
                drained += len(message.get("body", b""))
                if not message.get("more_body"):
                    return


class Guard:
    """ASGI middleware, outermost: Host and Origin checks, the API key, and the body size limit."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        hosts: frozenset[str],
        api_key: str | None,
        max_body_bytes: int,
        cors_origins: Iterable[str] = (),
    ) -> None:
        self.app, self.hosts, self.api_key, self.max_body = app, hosts, api_key, max_body_bytes
        self.cors_origins = frozenset(o.rstrip("/") for o in cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal:
            status, message, kind = refusal
            extra = [("www-authenticate", "Bearer")] if status == 401 else []
            await send_error(send, status, message, kind, extra)
            return
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            if int(declared) <= DRAIN_BYTES:
                await discard_body(receive)
            await send_error(send, 413, self._too_large(), "invalid_request_error", [("connection", "close")])
            return
        await self._with_counted_body(scope, receive, send)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str, str] | None:
        if "*" not in self.hosts and host_name(headers.get("host", "")) not in self.hosts:
            return 403, "this Host is not served here (add it with --allow-host)", "permission_error"
        origin = headers.get("origin")
        if origin and origin.rstrip("/") not in self.cors_origins and not self._own_origin(origin):
            return 403, "cross-origin requests are not allowed (see --cors-origin)", "permission_error"
        if scope["method"] == "OPTIONS" and origin:
            return None  # a CORS preflight carries no credentials; the CORS middleware answers it
        if self.api_key and scope["path"] not in OPEN_PATHS and not key_matches(bearer(headers), self.api_key):
            return 401, "missing or wrong API key (send Authorization: Bearer KEY)", "authentication_error"
        if scope["method"] == "POST" and not headers.get("content-type", "").startswith("application/json"):
            return 415, "request bodies must be JSON (Content-Type: application/json)", "invalid_request_error"
        return None

    def _own_origin(self, origin: str) -> bool:
        # "http://localhost:8000" -> the host part must be one we serve (the UI's own requests carry it).
        _, _, rest = origin.partition("://")
        return "*" in self.hosts or host_name(rest.split("/", 1)[0]) in self.hosts

    def _too_large(self) -> str:
        return f"request body larger than {self.max_body} bytes"

    async def _with_counted_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    if message.get("more_body"):
                        await discard_body(receive)
                    raise BodyTooLarge(self._too_large())
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await send_error(send, 413, self._too_large(), "invalid_request_error", [("connection", "close")])
