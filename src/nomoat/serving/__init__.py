"""``nomoat serve``: an OpenAI-compatible API and a small web UI over the local model and knowledge bases.

Safe by default: it binds 127.0.0.1, wants a key on every data request (a random token unless given one, see
:mod:`.auth`), refuses any other address without a key, answers only to known Host names, serves only the
knowledge bases it was started with, sends no CORS headers unless told to, bounds every request (see
:mod:`.security`) and keeps clients that only hold connections open from starving the others (:mod:`.connections`).
FastAPI and uvicorn are imported only when a server starts, so ``nomoat --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from nomoat.config import RuntimeConfig, ServeConfig
from nomoat.errors import UserError
from nomoat.serving.auth import API_KEY_ENV, forget_token, resolve_key, write_token
from nomoat.serving.security import check_bind

__all__ = ["API_KEY_ENV", "bind", "create_app", "run"]


def run(
    config: ServeConfig | None = None,
    *,
    model: str | Path | None = None,
    runtime: RuntimeConfig | None = None,
    on_ready: Callable[[str], None] | None = None,
    policy: Any = None,
) -> None:
    """Serve until interrupted. The key: see :func:`nomoat.serving.auth.resolve_key` (a new random token unless
    one is given or ``config.no_auth``); a new token is written to ``$NOMOAT_HOME/serve.token`` (mode 0600).

    Raises UserError before loading anything if the address is not loopback and there is no key, and for a
    model that cannot be loaded. ``on_ready`` receives the URL once the model is loaded; with a new token the URL
    carries it (``?token=...``: the UI takes it from there), the only place it is shown. ``policy``
    (:class:`nomoat.policy.rules.Policy`) holds every answer to the owner's rules.
    """
    config = replace(config or ServeConfig())
    if not 0 <= config.port <= 65535:
        raise UserError("--port must be between 0 and 65535")
    if config.max_queue < 0:
        raise UserError("--max-queue must be 0 or more")
    if not 0 < config.backend_timeout <= 3600:
        raise UserError("--backend-timeout must be between 0 and 3600 seconds")
    if config.parallel is None:
        config.parallel = config.backend_parallel if config.backend_url else config.local_parallel
    if not 1 <= config.parallel <= 1024:
        raise UserError("--parallel must be between 1 and 1024")
    config.api_key, generated = resolve_key(config.api_key, config.api_key_file, config.no_auth, config.host)
    check_bind(config.host, config.api_key, config.allow_hosts)
    if config.backend_url is not None:
        from nomoat.serving.backend import check_url

        check_url(config.backend_url)  # a typo fails before the port is taken
    sock = bind(config.host, config.port)  # a port in use fails at once, not after loading the model
    try:
        llm = _generator(config, model, runtime)  # a bad model or backend is a startup error, not a 500 later
    except BaseException:
        sock.close()
        raise
    app = create_app(llm, config, policy=policy)
    import uvicorn

    from nomoat.serving.connections import uvicorn_config

    host = f"[{config.host}]" if ":" in config.host else config.host
    url = f"http://{host}:{sock.getsockname()[1]}/"
    if generated and config.api_key:
        write_token(config.api_key)
        url += f"?token={config.api_key}"
    try:
        if on_ready:
            on_ready(url)
        with _exit_on_sigterm():
            uvicorn.Server(uvicorn_config(app, config)).run(sockets=[sock])
    finally:
        if generated and config.api_key:
            forget_token(config.api_key)
        if hasattr(llm, "engine"):
            llm.close()  # stops the batch thread and frees its KV cache


def _generator(config: ServeConfig, model: str | Path | None, runtime: RuntimeConfig | None) -> Any:
    """What generates: the local model, or the OpenAI-compatible server at ``config.backend_url``
    (:mod:`.backend`: the same surface, so routes and ``rag.ask`` cannot tell them apart)."""
    if config.backend_url is None:
        from nomoat.llm import runtime as rt

        llm = rt.load(model, runtime)
        if config.parallel > 1:
            from nomoat.llm.batching import Batched

            llm = Batched(llm, config.parallel)  # one context of parallel x n_ctx; --parallel 1 is the plain model
        return llm
    from nomoat.serving.backend import connect

    return connect(config.backend_url, config.backend_model, n_ctx=(runtime or RuntimeConfig()).n_ctx,
                   connect_timeout=config.backend_connect_timeout, read_timeout=config.backend_timeout,
                   parallel=config.parallel)  # fmt: skip


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """uvicorn re-raises the signal that stopped it once it is done; SIGTERM's default action would then end the
    process before ``finally`` blocks run (the token file would stay). Make it a SystemExit instead."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
