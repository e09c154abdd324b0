"""The FastAPI app: OpenAI routes, knowledge-base status for the UI, the UI page, errors in OpenAI's shape.

Model ids a request may name (``GET /v1/models`` lists them): the loaded model's name (or ``default``) for plain
generation; ``nomoat-rag`` for answers from the server's knowledge base, ``kb:<name>`` for another one it was
started with (see :mod:`.exposed`); and ``nomoat-embed`` for embeddings. Ids are only looked up, never opened:
nothing a request sends becomes a path.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from importlib import resources
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from nomoat.config import GenerationConfig, RagConfig, ServeConfig
from nomoat.errors import UserError
from nomoat.serving import responses as R
from nomoat.serving import work
from nomoat.serving.engine import Busy, Job, Slot, run_to_end
from nomoat.serving.exposed import Exposed, chunk_view
from nomoat.serving.schemas import (
    BadRequest,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    generation_config,
    parse,
)
from nomoat.serving.security import BodyTooLarge, Guard, allowed_hosts

RAG_MODEL = "nomoat-rag"
KB_PREFIX = "kb:"
EMBED_MODEL = "nomoat-embed"
log = logging.getLogger("nomoat.serving")


Chunk = Callable[[Any], Any]


class ClientGone(Exception):
    """The client disconnected before its request could start."""


# The UI is one page and one script; a strict policy means even a hostile document quoted in a citation cannot
# run code (the script also only ever sets textContent).
UI_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class Server:
    """What the routes share: the model, its slot, the embedder (loaded on first use) and the limits."""

    def __init__(self, model: Any, config: ServeConfig, embedder: Any, retrieve: Callable[..., Any] | None,
                 policy: Any = None) -> None:  # fmt: skip
        self.model, self.config, self.retrieve, self.policy = model, config, retrieve, policy
        self._embedder = embedder
        self.kbs = Exposed(config.kb, config.kbs)
        # generation: one at a time, or as many as a batch engine decodes together (llm/batching.Batched.parallel)
        # or a backend batches itself (serving/backend.BackendModel.parallel)
        self.slot = Slot(config.max_queue, getattr(model, "parallel", 1))
        self.embed_slot = Slot(config.max_queue)  # embeddings run beside generation, one batch at a time

    def knowledge_base(self, model_id: str) -> str | None:
        """None for plain generation, else the knowledge base a model id names. Raises BadRequest (404)."""
        if model_id in (self.model.name, "default"):
            return None
        if model_id == RAG_MODEL:
            return self.kbs.check(self.kbs.rag)
        if model_id.startswith(KB_PREFIX):
            return self.kbs.check(model_id[len(KB_PREFIX) :])
        raise BadRequest(f"model {model_id[:80]!r} does not exist (see GET /v1/models)", "model", 404)

    async def embedder(self) -> Any:
        if self._embedder is None:
            from nomoat.kb.embeddings import default_embedder

            self._embedder = await asyncio.to_thread(default_embedder)  # the first use may build the ONNX file
        return self._embedder

    async def start(self, slot: Slot, work_fn: Callable[..., Any], request: Request) -> Job:
        await slot.acquire()  # raises Busy (429) when the queue is full
        try:
            if await request.is_disconnected():  # left while waiting: do not spend the model on nobody
                raise ClientGone
            job = Job(slot, work_fn)
            job.start()
        except BaseException:
            slot.release()
            raise
        return job


def error_response(exc: BaseException) -> JSONResponse:
    """Any exception as an OpenAI-shaped error. Unexpected ones are logged here with their traceback and sent
    as a generic 500: tracebacks and absolute paths stay in the server's log."""
    if isinstance(exc, BadRequest):
        return JSONResponse(R.error_body(exc.message, exc.kind, exc.param), exc.status)
    if isinstance(exc, ClientGone | ClientDisconnect):
        if isinstance(exc, ClientDisconnect):
            log.info("a request ended before its whole body arrived (the client left, or sent it too slowly)")
        return JSONResponse(R.error_body("client closed the request"), 499)  # nginx's code; nobody reads it
    if isinstance(exc, Busy):
        return JSONResponse(R.error_body(str(exc), "rate_limit_error"), 429, {"Retry-After": "1"})
    if isinstance(exc, BodyTooLarge):
        return JSONResponse(R.error_body(str(exc) or "request body too large"), 413, {"Connection": "close"})
    if isinstance(exc, UserError):
        return JSONResponse(R.error_body(str(exc)), 400)
    if isinstance(exc, HTTPException):
        return JSONResponse(R.error_body(str(exc.detail)), exc.status_code)
    log.error("request failed", exc_info=exc)
    return JSONResponse(R.error_body("internal error (see the server log)", "server_error"), 500)


class _JobStream(StreamingResponse):
    """An SSE response that stops its job however it ends, even when the client leaves before the first byte
    (then the body generator never runs, so its own ``finally`` would not)."""

    def __init__(self, content: AsyncIterator[bytes], job: Job) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._job = job

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._job.cancel()


def _rag_gen(request: ChatRequest, gen: GenerationConfig) -> GenerationConfig:
    # Knowledge-base answers keep rag's defaults (short, greedy) unless the request sets them.
    explicit = request.max_tokens is not None or request.max_completion_tokens is not None
    return replace(
        gen,
        max_tokens=gen.max_tokens if explicit else RagConfig().max_answer_tokens,
        temperature=gen.temperature if request.temperature is not None else 0.0,
    )


def create_app(
    model: Any,
    config: ServeConfig | None = None,
    *,
    embedder: Any = None,
    retrieve: Callable[..., Any] | None = None,
    policy: Any = None,
) -> FastAPI:
    """The server for ``model`` (a loaded :class:`nomoat.llm.runtime.Model`, or a fake with ``name``, ``lock``,
    ``chat``, ``generate``, ``tokenize``). ``embedder`` defaults to nomoat's, loaded on first use; ``retrieve``
    is for tests (see :func:`nomoat.answer.rag.ask`); ``policy`` (:class:`nomoat.policy.rules.Policy`) screens
    every answer, streamed or not (:mod:`nomoat.policy.streams`)."""
    config = config or ServeConfig()
    app = FastAPI(title="nomoat", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = Server(model, config, embedder, retrieve, policy)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])  # fmt: skip
    # Added last, so it runs first: nothing reaches CORS or a route before the Host, key and size checks.
    hosts = allowed_hosts(config.host, config.allow_hosts)
    app.add_middleware(Guard, hosts=hosts, api_key=config.api_key, max_body_bytes=config.max_body_bytes,
                       cors_origins=config.cors_origins)  # fmt: skip
    for kind in (BadRequest, Busy, ClientGone, ClientDisconnect, BodyTooLarge, UserError, HTTPException, Exception):
        app.add_exception_handler(kind, _on_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.include_router(routes)
    return app


async def _on_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(exc)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    where = ".".join(str(p) for p in errors[0]["loc"]) if errors else "request"
    return error_response(BadRequest(f"{where}: {errors[0]['msg'] if errors else 'invalid'}", where))


def _server(request: Request) -> Server:
    return request.app.state.server  # type: ignore[no-any-return]


routes = APIRouter()
_STATIC = resources.files("nomoat.serving") / "static"
_PAGE, _SCRIPT = (_STATIC / "index.html").read_bytes(), (_STATIC / "app.js").read_bytes()


@routes.get("/", include_in_schema=False)
async def index() -> Response:
    return Response(_PAGE, media_type="text/html; charset=utf-8", headers=UI_HEADERS)


@routes.get("/app.js", include_in_schema=False)
async def app_js() -> Response:
    return Response(_SCRIPT, media_type="text/javascript; charset=utf-8", headers=UI_HEADERS)


@routes.get("/health")
async def health(request: Request) -> dict[str, Any]:
    slot = _server(request).slot
    return {"status": "ok", "busy": slot.running > 0, "waiting": slot.waiting}


@routes.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    server = _server(request)
    ids = [server.model.name, RAG_MODEL, *(KB_PREFIX + n for n in server.kbs.available()), EMBED_MODEL]
    data = [{"id": i, "object": "model", "created": 0, "owned_by": "nomoat"} for i in ids]
    return {"object": "list", "data": data}


@routes.get("/api/kbs")
async def knowledge_bases(request: Request) -> dict[str, Any]:
    server = _server(request)
    from nomoat.kb import catalog

    served = set(server.kbs.names)
    kbs = [kb for kb in await asyncio.to_thread(catalog.list_kbs) if kb["name"] in served]
    keep = ("name", "documents", "chunks", "bytes")  # not "path": the server's folders are its own business
    data = [{**{k: kb[k] for k in keep}, "model": KB_PREFIX + kb["name"]} for kb in kbs]
    return {"rag_kb": server.config.kb, "model": server.model.name, "data": data}


@routes.get("/api/kbs/{name}/chunks/{chunk_id}")
async def chunk(request: Request, name: str, chunk_id: int) -> dict[str, Any]:
    """The whole text of a cited chunk, for the UI's citation view (served knowledge bases only)."""
    _server(request).kbs.check(name, "name")
    row = await asyncio.to_thread(chunk_view, name, chunk_id) if 0 < chunk_id < 2**63 else None
    if row is None:
        raise BadRequest(f"no chunk {chunk_id} in {name!r}", "chunk_id", 404)
    return row


@routes.post("/v1/chat/completions", response_model=None)
async def chat_completions(request: Request) -> Any:
    server = _server(request)
    body = parse(ChatRequest, await request.body())
    gen = generation_config(body, server.config)
    messages = body.chat_messages()
    kb = server.knowledge_base(body.model)
    if kb is None:
        job_work = work.chat(server.model, messages, gen)
    elif messages[-1]["role"] != "user":
        raise BadRequest("messages: the last message must be the user's question", "messages")
    else:
        retrieve = server.kbs.retriever(server.retrieve)  # sources named below the ingested folder
        job_work = work.grounded(server.model, messages, kb, _rag_gen(body, gen), retrieve, server.policy)
    job_work = _policed(server, job_work, [m["content"] for m in messages], plain=kb is None)
    rid, name = R.new_id("chatcmpl"), body.model
    return await _respond(
        server, request, body, job_work,
        whole=lambda text, result: R.chat_completion(rid, name, text, result),
        opening=R.chat_chunk(rid, name, {"role": "assistant", "content": ""}),
        piece=lambda text: R.chat_chunk(rid, name, {"content": text}),
        final=lambda result: R.with_extra(R.chat_chunk(rid, name, {}, result["finish_reason"]), result),
        usage=lambda result: R.usage_chunk(rid, name, "chat.completion.chunk", result),
    )  # fmt: skip


@routes.post("/v1/completions", response_model=None)
async def completions(request: Request) -> Any:
    server = _server(request)
    body = parse(CompletionRequest, await request.body())
    gen = generation_config(body, server.config)
    if server.knowledge_base(body.model) is not None:
        raise BadRequest("knowledge-base models answer chat requests: use /v1/chat/completions", "model")
    prompt = body.prompt_text()
    if not prompt:
        raise BadRequest("prompt: must not be empty", "prompt")
    rid, name = R.new_id("cmpl"), body.model
    return await _respond(
        server, request, body, _policed(server, work.complete(server.model, prompt, gen), [prompt], plain=True),
        whole=lambda text, result: R.text_completion(rid, name, text, result),
        piece=lambda text: R.text_chunk(rid, name, text),
        final=lambda result: R.text_chunk(rid, name, "", result["finish_reason"]),
        usage=lambda result: R.usage_chunk(rid, name, "text_completion", result),
    )  # fmt: skip


def _policed(server: Server, job_work: Callable[..., Any], inputs: list[str], *, plain: bool) -> Callable[..., Any]:
    """The work under the owner's answer policy, if there is one: questions checked first, answers screened."""
    if server.policy is None:
        return job_work
    from nomoat.policy.streams import guard_work

    return guard_work(server.policy, job_work, inputs, plain=plain)


async def _respond(server: Server, request: Request, body: Any, job_work: Callable[..., Any], *,
                   whole: Callable[[str, Any], Any], piece: Chunk, final: Chunk, usage: Chunk,
                   opening: Any = None) -> Any:  # fmt: skip
    """How both completion routes end: run the job, then one JSON body, or server-sent events when streaming."""
    job = await server.start(server.slot, job_work, request)
    if not body.stream:
        text = await run_to_end(job, request.is_disconnected)
        return whole(text, job.result)
    first = await _first(job, request)
    wants_usage = body.stream_options is not None and body.stream_options.include_usage
    events = _events(job, first, opening=opening, piece=piece, final=final, usage=usage if wants_usage else None)
    return _JobStream(events, job)


@routes.post("/v1/embeddings")
async def embeddings(request: Request) -> dict[str, Any]:
    server, config = _server(request), _server(request).config
    body = parse(EmbeddingRequest, await request.body())
    if body.model != EMBED_MODEL:
        raise BadRequest(f"model {body.model[:80]!r} does not embed; use {EMBED_MODEL!r}", "model", 404)
    texts = body.texts()
    if not 1 <= len(texts) <= config.max_embedding_inputs or not all(t.strip() for t in texts):
        raise BadRequest(f"input: 1-{config.max_embedding_inputs} non-empty strings", "input")
    emb = await server.embedder()  # loaded on first use: plain chat never pays for it
    if body.dimensions not in (None, emb.dim):
        raise BadRequest(f"dimensions: this model gives {emb.dim}", "dimensions")
    job = await server.start(server.embed_slot, work.embed(emb, texts), request)
    await run_to_end(job, request.is_disconnected)
    vectors = job.result
    data = []
    for i, vector in enumerate(vectors):
        value: Any = vector.tolist()
        if body.encoding_format == "base64":  # what the official client asks for: float32 little-endian
            value = base64.b64encode(vector.astype("<f4").tobytes()).decode()
        data.append({"object": "embedding", "index": i, "embedding": value})
    count = getattr(emb, "count_tokens", None)  # the default embedder's word pieces; fakes: words
    tokens = count(texts) if count else sum(len(t.split()) for t in texts)
    return {"object": "list", "data": data, "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip


async def _first(job: Job, request: Request) -> tuple[str, Any]:
    """The first event of a streaming job, before any byte is sent: a request that fails at once (a prompt that
    does not fit, say) still gets a proper HTTP error instead of a 200 stream that breaks."""
    try:
        return await job.next(request.is_disconnected)
    except BaseException:
        job.cancel()
        raise


async def _events(job: Job, first: tuple[str, Any], *, piece: Chunk, final: Chunk, usage: Chunk | None,
                  opening: Any = None) -> AsyncIterator[bytes]:  # fmt: skip
    """A streaming job as server-sent events: ``opening``, a ``piece(text)`` chunk per piece, ``final(result)``,
    the usage chunk when asked for, ``[DONE]``; an error after the stream began is sent as an error event."""
    if opening is not None:
        yield R.sse(opening)
    async for kind, value in _rest(job, first):
        if kind == "text":
            yield R.sse(piece(value))
        elif kind == "done":
            yield R.sse(final(value))
            if usage is not None:
                yield R.sse(usage(value))
        else:
            yield R.sse(value)
    yield R.sse("[DONE]")


async def _rest(job: Job, first: tuple[str, Any]) -> AsyncIterator[tuple[str, Any]]:
    """``first`` and the job's later events; an error after the stream began becomes an ``("error", body)``."""
    kind, value = first
    yield kind, value
    while kind == "text":
        try:
            kind, value = await job.next()
        except Exception as exc:
            response = error_response(exc)
            yield "error", bytes(response.body).decode()
            return
        yield kind, value
