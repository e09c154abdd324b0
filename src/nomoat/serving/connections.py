"""Connections that only wait for their client cannot starve the ones that send requests (slowloris).

uvicorn (0.3x-0.5x, h11) has no timeout for a connection that opens and sends nothing, or sends half a request
head, or announces a body and never sends it: only the keep-alive timer, armed after a response. And its
``limit_concurrency`` counts every open connection, so 64 silent sockets make every request, ``/health``
included, get 503 for as long as they stay open. This protocol adds:

* a header deadline (``header_timeout``) from the first byte of a request head (or from connecting);
* a body deadline (``body_timeout``) from the end of the head to the end of the body;
* shedding: when a new connection would reach ``max_connections``, the oldest connections that are only waiting
  for their client (idle, head or body incomplete) are closed to make room. Requests the server is working on
  are never closed; when all connections are such, uvicorn answers 503 as before.

A connection closed here while its request awaits the body reaches the app as a client disconnect (one log line,
see :mod:`nomoat.serving.app`). Imported only when a server starts (it imports uvicorn).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from nomoat.config import ServeConfig

log = logging.getLogger("nomoat.serving")


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with read deadlines and shedding of connections that wait for their client."""

    header_timeout = 10.0
    body_timeout = 30.0
    max_connections = 64

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._deadline: asyncio.TimerHandle | None = None
        self._phase = "head"
        self.opened_at = self.loop.time()
        super().connection_made(transport)
        self._arm("head", self.header_timeout)
        if len(self.connections) >= self.max_connections:
            self._shed()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    def waiting_for_client(self) -> bool:
        """Idle, or in the middle of sending a request head or body: nothing the server owes it yet."""
        if self.transport.is_closing():
            return False
        state = self.conn.their_state
        if state is h11.IDLE:
            return self.cycle is None or self.cycle.response_complete
        return state is h11.SEND_BODY

    # -- internals ------------------------------------------------------------------------------------------------
    def _track(self) -> None:
        """Arm the deadline that fits where the client is: sending a head, sending a body, or neither."""
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if (
            state is h11.IDLE
            and self.timeout_keep_alive_task is None
            and (self.cycle is None or self.cycle.response_complete)
        ):
            if self._phase != "head":
                self._arm("head", self.header_timeout)  # bytes of a next request head, or nothing yet
        elif state is h11.SEND_BODY:
            if self._phase != "body":
                self._arm("body", self.body_timeout)
        else:
            self._disarm()
            self._phase = "app"

    def _arm(self, phase: str, seconds: float) -> None:
        self._disarm()
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._expired, phase)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, phase: str) -> None:
        self._deadline = None
        if not self.transport.is_closing() and self.waiting_for_client():
            # a cut-off body is logged once, by the app (the request sees a disconnect); a head here
            (log.info if phase == "head" else log.debug)("closed a connection from %s: its request %s took too "
                                                         "long", _peer(self), phase)  # fmt: skip
            self._close()

    def _close(self) -> None:
        self._disarm()
        self.connections.discard(self)  # counts at once (connection_lost runs on the next loop turn)
        self.transport.close()

    def _shed(self) -> None:
        waiting = sorted(
            (c for c in list(self.connections) if c is not self and getattr(c, "waiting_for_client", None)),
            key=lambda c: c.opened_at,
        )
        for other in waiting:
            if len(self.connections) < self.max_connections:
                break
            if other.waiting_for_client():
                other._close()
        if len(self.connections) >= self.max_connections:
            log.warning("connection limit (%d) reached with every connection busy", self.max_connections)


def _peer(protocol: Any) -> str:
    client = getattr(protocol, "client", None)
    return f"{client[0]}:{client[1]}" if client else "a client"


def protocol(config: ServeConfig) -> type[GuardedH11]:
    """The protocol class for ``config``'s limits (uvicorn builds one instance per connection)."""
    limits = {
        "header_timeout": config.header_timeout,
        "body_timeout": config.body_timeout,
        "max_connections": config.max_connections,
    }
    return type("GuardedH11", (GuardedH11,), limits)


def uvicorn_config(app: Any, config: ServeConfig) -> Any:
    """uvicorn's settings for ``app``: our protocol, its limits, small logs, no Server header."""
    import uvicorn

    return uvicorn.Config(
        app,
        http=protocol(config),
        log_level="warning",
        limit_concurrency=config.max_connections,
        timeout_keep_alive=config.keep_alive,  # type: ignore[arg-type]  (used as seconds; a float works)
        timeout_graceful_shutdown=5,
        h11_max_incomplete_event_size=64 * 1024,  # the largest request head (h11's default 16 KiB is fine too)
        server_header=False,
    )
