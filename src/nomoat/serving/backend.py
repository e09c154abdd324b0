"""Generation by another OpenAI-compatible server (``nomoat serve --backend-url URL``).

vLLM, llama.cpp's server, Ollama's ``/v1`` or llama-cpp-python's server generate; nomoat keeps retrieval, the
prompt, the answer check and citations. :class:`BackendModel` has the surface of :class:`nomoat.llm.runtime.Model`
that the serve routes and :func:`nomoat.answer.rag.ask` use (``name``, ``n_ctx``, ``lock``, ``tokenize``,
``chat``, plus ``complete`` for ``/v1/completions``), so nothing above it knows which one it talks to.

Every generation is a streamed request (SSE) read in the worker thread: the first piece of text is yielded as
soon as it arrives (plain chat streams through), closing the generator (the client left) closes the request,
and every failure becomes a :class:`BackendError`: a one-line 502 (unreachable, refused, malformed, cut off) or
504 (timed out), never a traceback and never the backend's key, which comes from ``$NOMOAT_BACKEND_KEY`` only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import urlsplit

from nomoat.config import GenerationConfig
from nomoat.errors import UserError
from nomoat.llm.runtime import Generation
from nomoat.serving.schemas import BadRequest

KEY_ENV = "NOMOAT_BACKEND_KEY"
_BYTES_PER_TOKEN = 3  # an over-estimate of tokens: BPE vocabularies average ~4 bytes per token on English text
_TEMPLATE_TOKENS = 8  # per message: role markers the backend's chat template adds (as rag.py counts them)
log = logging.getLogger("nomoat.serving")


class BackendError(BadRequest):
    """The backend failed: 502 (unreachable, an error status, a malformed or cut-off stream) or 504 (timed out).

    A BadRequest subclass, so the routes' one error path (``app.error_response``) sends it in OpenAI's shape,
    before the first byte as an HTTP status and mid-stream as an error event."""

    def __init__(self, message: str, status: int = 502) -> None:
        super().__init__(message, None, status, "server_error" if status != 429 else "rate_limit_error")


def check_url(url: str) -> str:
    """The backend's base URL (``http(s)://host[:port]/v1``) without a trailing slash; raises UserError.

    The URL is never echoed: a user who wrote ``https://user:key@host`` would see the key in the message."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise UserError("--backend-url is not a valid URL (e.g. http://127.0.0.1:8000/v1)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError("--backend-url must be an http:// or https:// URL with a host, e.g. http://127.0.0.1:8000/v1")
    if parts.username is not None or parts.password is not None:
        raise UserError(f"--backend-url must not carry a user or password: put the backend's key in ${KEY_ENV}")
    if parts.query or parts.fragment:
        raise UserError("--backend-url takes no ?query or #fragment: give the API's base, e.g. http://host:8000/v1")
    return url.strip().rstrip("/")


def estimate_tokens(text: str) -> int:
    """Tokens ``text`` may take in the backend's tokenizer, rounded up: UTF-8 bytes / 3.

    nomoat cannot see the backend's vocabulary (vLLM, llama.cpp and Ollama each have their own tokenize route,
    or none), so prompts are sized with an over-estimate: real tokenizers average ~4 bytes per token on English
    and about 3 on code and CJK text, so a prompt sized this way fits the context it was sized for.
    """
    return -(-len(text.encode("utf-8")) // _BYTES_PER_TOKEN)


def shown_name(model_id: str) -> str:
    """The id nomoat shows for a backend model: vLLM names a model after the folder it was started with, and an
    absolute path must not reach clients, so a path becomes its last part (``.gguf`` dropped)."""
    if model_id.startswith("/") or PureWindowsPath(model_id).drive:
        last = PureWindowsPath(model_id).name if "\\" in model_id else PurePosixPath(model_id).name
        return last.removesuffix(".gguf") or "backend"
    return model_id


class BackendModel:
    """A model behind an OpenAI-compatible URL, used like a loaded :class:`nomoat.llm.runtime.Model`.

    ``model_id`` is what the backend calls it (sent in every request); ``name`` is what nomoat's clients see
    and send. ``lock`` serialises nothing: the backend schedules concurrent requests itself, and the server
    admits up to ``parallel`` of them at once.
    """

    def __init__(self, url: str, model_id: str, *, n_ctx: int, key: str | None = None, connect_timeout: float = 5.0,
                 read_timeout: float = 120.0, name: str | None = None, parallel: int = 8) -> None:  # fmt: skip
        import httpx

        self.url, self.model_id, self.n_ctx = url, model_id, n_ctx
        self.name = name or shown_name(model_id)
        self.lock = contextlib.nullcontext()
        self.parallel = parallel  # generations sent at once (engine.Slot admits them); the backend batches them
        self.read_timeout = read_timeout
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        # read = the longest silence between two bytes: prompt processing before the first token counts.
        timeout = httpx.Timeout(connect=connect_timeout, read=read_timeout, write=30.0, pool=connect_timeout)
        limits = httpx.Limits(max_connections=parallel + 4, max_keepalive_connections=parallel)
        self._client = httpx.Client(timeout=timeout, limits=limits, follow_redirects=False)

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        """Placeholder ids, as many as :func:`estimate_tokens` counts: rag only ever counts them."""
        return [0] * estimate_tokens(text)

    def prompt_tokens(self, messages: Sequence[dict[str, str]]) -> int:
        return sum(estimate_tokens(m["content"]) + _TEMPLATE_TOKENS for m in messages)

    def chat(self, messages: Sequence[dict[str, str]], gen: GenerationConfig | None = None, **_: Any) -> Generation:
        """Stream the backend's reply to ``messages`` (``on_notice`` and the like are the local model's)."""
        gen = gen or GenerationConfig()
        prompt = self.prompt_tokens(messages)
        body = {"messages": [{"role": m["role"], "content": m["content"]} for m in messages]}
        return self._generation("/chat/completions", body, gen, prompt, _chat_text)

    def complete(self, prompt: str, gen: GenerationConfig | None = None) -> Generation:
        """Stream a plain text completion of ``prompt`` (``/v1/completions``)."""
        gen = gen or GenerationConfig()
        return self._generation("/completions", {"prompt": prompt}, gen, estimate_tokens(prompt), _completion_text)

    def close(self) -> None:
        self._client.close()

    # -- one streamed request ---------------------------------------------------------------------------------
    def _generation(self, path: str, body: dict[str, Any], gen: GenerationConfig, prompt: int,
                    text_of: Callable[[dict[str, Any]], str]) -> Generation:  # fmt: skip
        if prompt >= self.n_ctx:
            raise UserError(f"the prompt (about {prompt} tokens) does not fit the {self.n_ctx}-token context")
        request = {"model": self.model_id, **body, **self._sampling(gen, prompt), "stream": True,
                   "stream_options": {"include_usage": True}}  # fmt: skip
        result = Generation(iter(()), prompt_tokens=prompt)
        result.pieces = self._stream(path, request, result, text_of)
        return result

    def _sampling(self, gen: GenerationConfig, prompt: int) -> dict[str, Any]:
        # Engines refuse prompt + max_tokens past their context (vLLM does); the prompt count is an over-estimate.
        sampling: dict[str, Any] = {
            "max_tokens": max(1, min(gen.max_tokens, self.n_ctx - prompt)),
            "temperature": gen.temperature,
            "top_p": gen.top_p,
            # Not OpenAI's own: llama.cpp and llama-cpp-python read top_k and repeat_penalty, vLLM top_k and
            # repetition_penalty (the same rule); each engine ignores the names it does not know.
            "top_k": gen.top_k,
            "repeat_penalty": gen.repeat_penalty,
            "repetition_penalty": gen.repeat_penalty,
        }
        if gen.stop:
            sampling["stop"] = list(gen.stop)
        if gen.seed is not None:
            sampling["seed"] = gen.seed
        return sampling

    def _stream(self, path: str, request: dict[str, Any], result: Generation,
                text_of: Callable[[dict[str, Any]], str]) -> Iterator[str]:  # fmt: skip
        import httpx

        counted = 0
        try:
            with self._client.stream("POST", self.url + path, json=request, headers=self._headers) as response:
                if response.status_code != 200:
                    raise status_error(response.status_code, response.read())
                for chunk in _chunks(response.iter_lines()):
                    text = text_of(chunk)
                    counted += bool(text)  # a piece is about a token: the count when the backend sends no usage
                    _account(result, chunk, counted)
                    if text:
                        yield text
        except httpx.TimeoutException as exc:
            raise timeout_error(exc, self.read_timeout) from None
        except httpx.HTTPError as exc:
            log.warning("generation backend: %s: %s", type(exc).__name__, exc)
            raise transport_error(exc) from None
        result.finish_reason = result.finish_reason or "stop"


def _chunks(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON events of an OpenAI SSE stream up to ``data: [DONE]``; a stream that ends before it was cut off
    (the backend went away), and an ``{"error": ...}`` event is the backend's own failure."""
    for line in lines:
        if not line.startswith("data:"):
            continue  # comments (": ping"), event names and the blank lines between events
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except ValueError:
            raise BackendError("the generation backend sent a malformed event") from None
        if not isinstance(chunk, dict):
            raise BackendError("the generation backend sent a malformed event")
        if "error" in chunk:
            raise BackendError(f"the generation backend failed: {_message(chunk)}")
        yield chunk
    raise BackendError("the generation backend closed the stream before the answer ended")


def _account(result: Generation, chunk: dict[str, Any], counted: int) -> None:
    """Finish reason and token counts from one event; the backend's usage (when it sends it) wins."""
    choices = chunk.get("choices") or [{}]
    reason = choices[0].get("finish_reason") if isinstance(choices[0], dict) else None
    if reason:
        result.finish_reason = "length" if reason == "length" else "stop"
    usage = chunk.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        result.completion_tokens = usage["completion_tokens"]
        if isinstance(usage.get("prompt_tokens"), int):
            result.prompt_tokens = usage["prompt_tokens"]
    else:
        result.completion_tokens = max(result.completion_tokens, counted)


def _chat_text(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or [{}]
    delta = choices[0].get("delta") if isinstance(choices[0], dict) else None
    text = delta.get("content") if isinstance(delta, dict) else None
    return text if isinstance(text, str) else ""


def _completion_text(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or [{}]
    text = choices[0].get("text") if isinstance(choices[0], dict) else None
    return text if isinstance(text, str) else ""


def _message(body: Any) -> str:
    """The first line of an error body's message (OpenAI's ``{"error": {"message"}}``, or ``{"detail"}``)."""
    error = body.get("error", body) if isinstance(body, dict) else body
    text = error.get("message") or error.get("detail") if isinstance(error, dict) else error
    return " ".join(str(text or "no details").split())[:300]


def status_error(status: int, content: bytes) -> BackendError:
    """An error status from the backend: 429 stays a 429 (the client should retry), anything else is a 502."""
    try:
        detail = _message(json.loads(content))
    except ValueError:
        detail = " ".join(content.decode("utf-8", "replace").split())[:300] or "no details"
    if status == 429:
        return BackendError(f"the generation backend is busy: {detail}", 429)
    if status in (401, 403):
        return BackendError(f"the generation backend refused nomoat's key (HTTP {status}; see ${KEY_ENV})")
    return BackendError(f"the generation backend answered HTTP {status}: {detail}")


def timeout_error(exc: Exception, read_timeout: float) -> BackendError:
    import httpx

    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return BackendError("the generation backend did not accept a connection in time", 504)
    return BackendError(f"the generation backend sent nothing for {read_timeout:g} s", 504)


def transport_error(exc: Exception) -> BackendError:
    import httpx

    if isinstance(exc, httpx.ConnectError):
        return BackendError("cannot reach the generation backend (connection refused or no route)")
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError):
        return BackendError("the generation backend closed the connection before the answer ended")
    return BackendError(f"the generation backend failed ({type(exc).__name__})")


def backend_key() -> str | None:
    return os.environ.get(KEY_ENV) or None


# -- at startup ---------------------------------------------------------------------------------------------------
def connect(url: str, model: str | None = None, *, n_ctx: int, connect_timeout: float = 5.0,
            read_timeout: float = 120.0, parallel: int = 8) -> BackendModel:  # fmt: skip
    """The backend's model, checked once before the server starts: reachable, the key accepted, the model served.

    ``model`` may be left out when the backend serves exactly one. The context nomoat sizes prompts for is
    ``n_ctx`` (``--ctx``), capped at the backend's ``max_model_len`` when it reports one (vLLM does). Raises
    UserError (one line) for a bad URL, an unreachable backend, a refused key, a model it does not serve.
    """
    base, key = check_url(url), backend_key()
    entries = _models(base, key, connect_timeout)
    ids = [e["id"] for e in entries if isinstance(e.get("id"), str)]
    if model is None:
        if len(ids) != 1:
            served = f"serves {', '.join(ids[:8])}" if ids else "lists no model"
            raise UserError(f"the backend at {base} {served}: name the one to use with --backend-model")
        model = ids[0]
    elif ids and model not in ids and f"{model}:latest" not in ids:  # Ollama lists "name:latest", takes "name"
        raise UserError(f"the backend at {base} does not serve {model!r} (it serves {', '.join(ids[:8])})")
    entry = next((e for e in entries if e.get("id") in (model, f"{model}:latest")), {})
    longest = entry.get("max_model_len")  # vLLM's; llama.cpp and Ollama do not say, so --ctx is trusted
    if isinstance(longest, int) and longest > 0:
        n_ctx = min(n_ctx, longest)
    return BackendModel(base, model, n_ctx=n_ctx, key=key, connect_timeout=connect_timeout,
                        read_timeout=read_timeout, parallel=parallel)  # fmt: skip


def _models(base: str, key: str | None, timeout: float) -> list[dict[str, Any]]:
    """The entries of the backend's ``GET /models`` (``{"data": [{"id", ...}]}``); raises UserError."""
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(base + "/models", headers=headers, timeout=max(timeout, 10.0))
    except httpx.HTTPError as exc:
        reason = "timed out" if isinstance(exc, httpx.TimeoutException) else _reason(exc)
        message = f"cannot reach the backend at {base} ({reason}): start it first, or check --backend-url"
        raise UserError(message) from None
    if response.status_code in (401, 403):
        raise UserError(f"the backend at {base} refused the key (HTTP {response.status_code}): set ${KEY_ENV}")
    if response.status_code == 404:
        raise UserError(f"the backend at {base} has no /models route: does --backend-url end in /v1?")
    if response.status_code != 200:
        raise UserError(f"the backend at {base} answered HTTP {response.status_code} to GET /models")
    try:
        data = response.json().get("data")
    except (ValueError, AttributeError):
        data = None
    if not isinstance(data, list):
        raise UserError(f"the backend at {base} does not answer like an OpenAI-compatible server (GET /models)")
    return [e for e in data if isinstance(e, dict)]


def _reason(exc: Exception) -> str:
    """A short cause without the errno noise: 'Connection refused', 'Name or service not known'."""
    text = str(exc) or type(exc).__name__
    return text.split("] ")[-1].strip()[:120]
