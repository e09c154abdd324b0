"""``nomoat serve``: an OpenAI-compatible API and a small web UI over the local model and knowledge bases.

Safe by default: it binds 127.0.0.1, refuses any other address without an API key, answers only to known Host
names, sends no CORS headers unless told to, and bounds every request (see :mod:`nomoat.serve.security`).
FastAPI and uvicorn are imported only when a server starts, so ``nomoat --help`` stays fast.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from nomoat.config import RuntimeConfig, ServeConfig
from nomoat.errors import UserError
from nomoat.serving.security import check_bind

API_KEY_ENV = "NOMOAT_API_KEY"


def run(
    config: ServeConfig | None = None,
    *,
    model: str | Path | None = None,
    runtime: RuntimeConfig | None = None,
    on_ready: Callable[[str], None] | None = None,
    policy: Any = None,
) -> None:
    """Serve until interrupted. The key comes from ``config.api_key`` or ``$NOMOAT_API_KEY``.

    Raises UserError before loading anything if the address is not loopback and there is no key, and for a
    model that cannot be loaded. ``on_ready`` receives the URL once the model is loaded; ``policy``
    (:class:`nomoat.policy.rules.Policy`) holds every answer to the owner's rules.
    """
    config = replace(config or ServeConfig())
    if not 0 <= config.port <= 65535:
        raise UserError("--port must be between 0 and 65535")
    if config.max_queue < 0:
        raise UserError("--max-queue must be 0 or more")
    config.api_key = config.api_key or os.environ.get(API_KEY_ENV) or None
    check_bind(config.host, config.api_key)
    from nomoat.llm import runtime as rt

    sock = bind(config.host, config.port)  # a port in use fails at once, not after loading the model
    try:
        llm = rt.load(model, runtime)  # a bad model is a startup error, not a 500 later
    except BaseException:
        sock.close()
        raise
    app = create_app(llm, config, policy=policy)
    import uvicorn

    settings = uvicorn.Config(
        app,
        log_level="warning",
        limit_concurrency=config.max_connections,
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    host = f"[{config.host}]" if ":" in config.host else config.host
    if on_ready:
        on_ready(f"http://{host}:{sock.getsockname()[1]}/")
    uvicorn.Server(settings).run(sockets=[sock])


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0 = any free port). Raises UserError when the address cannot be used."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except (OSError, OverflowError) as exc:
        sock.close()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UserError(f"cannot listen on {host}:{port}: {reason} (try another --port)") from None
    return sock


def create_app(*args: Any, **kwargs: Any) -> Any:
    """See :func:`nomoat.serve.app.create_app` (imported lazily: it pulls in FastAPI)."""
    from nomoat.serving.app import create_app as create

    return create(*args, **kwargs)
