"""Continuous batching: several generations share one llama.cpp context and every forward pass.

On a CPU one sequence's decode is matrix-vector work bound by reading the weights; B sequences decoded in one
``llama_decode`` read the weights once for all of them (raw llama.cpp on 2 cores, bundled Q4_1: 99 tok/s at B=1,
230 at B=8; docs/benchmarks.md). So ``nomoat serve --parallel N`` gives the model an :class:`Engine`: one context
with ``n_seq_max = N`` and a KV stream of the model's full context per sequence (not a unified pool: a sequence
then attends only to its own cells, and a request is never refused midway for room), driven by one thread.
Each step is one decode of every running sequence's next token plus, in the room left of ``n_batch``, the next
chunk of newly admitted prompts; requests join between steps, and a finished, stopped or abandoned sequence
frees its cells at once (``llama_memory_seq_rm``), so the next request gets it.

Sampling, stop strings, UTF-8 decoding and the counters stay in :meth:`nomoat.llm.runtime.Model.generate`: the
engine is only a different token source. Each request gets the sampler chain ``Llama.generate`` would build
(same settings, same seed), so greedy answers equal unbatched ones, except where llama.cpp's batched kernels
round a near-tie of the top two logits the other way.
"""

from __future__ import annotations

import contextlib
import heapq
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from nomoat.config import GenerationConfig
from nomoat.errors import ModelError, UserError
from nomoat.llm.llamacpp import close_at_exit
from nomoat.llm.lookup import Drafting
from nomoat.llm.runtime import Generation, Model, sampling
from nomoat.llm.templates import Message

_END = object()  # the last item of a request's queue once the engine is done with it


@dataclass(eq=False)
class _Request:
    prompt: list[int]
    gen: GenerationConfig
    max_new: int
    out: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)  # token ids, then _END or an error
    seq: int = -1  # its sequence id while it holds one
    pos: int = 0  # tokens of this sequence in the KV cache (prompt chunks, then sampled tokens)
    next: int | None = None  # sampled, sent to the reader, not yet decoded
    produced: int = 0
    sampler: Any = None
    cancelled: bool = False


class Engine:
    """One llama.cpp context for ``model`` with ``parallel`` sequences, decoded together by one thread.

    :meth:`tokens` is a :data:`nomoat.llm.runtime.TokenSource`: any thread may call it; requests beyond
    ``parallel`` wait (in order) for a sequence. Raises ModelError when llama.cpp cannot make the context.
    """

    def __init__(self, model: Model, parallel: int) -> None:
        import llama_cpp
        from llama_cpp import _internals

        if not 1 <= parallel <= llama_cpp.llama_max_parallel_sequences():
            raise ModelError(f"parallel must be 1-{llama_cpp.llama_max_parallel_sequences()} (got {parallel})")
        self.model, self.parallel = model, parallel
        llama = model.llama
        params = type(llama.context_params).from_buffer_copy(llama.context_params)  # same settings as unbatched
        params.n_ctx = model.n_ctx * parallel
        params.n_seq_max = parallel
        params.kv_unified = False  # a KV stream of n_ctx cells per sequence
        params.n_batch = max(params.n_batch, parallel)  # a step holds at least one token of each sequence
        try:
            self.ctx = _internals.LlamaContext(model=llama._model, params=params, verbose=False)
        except ValueError:
            raise ModelError(f"llama.cpp could not make a context of {parallel} x {model.n_ctx} tokens") from None
        if llama_cpp.llama_n_ctx_seq(self.ctx.ctx) < model.n_ctx:
            raise ModelError(f"llama.cpp gave each sequence {llama_cpp.llama_n_ctx_seq(self.ctx.ctx)} tokens, "
                             f"not {model.n_ctx}")  # fmt: skip
        self.n_batch = params.n_batch
        self.batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1, verbose=False)
        self._free = list(range(parallel))  # sequence ids, a min-heap: the lowest is handed out first
        self._waiting: deque[_Request] = deque()
        self._active: list[_Request] = []  # admitted, oldest first; only the engine thread changes it
        self._cond = threading.Condition()
        self._closed = False
        self.steps = 0  # decode calls so far (tests and the bench read it)
        self._thread = threading.Thread(target=self._run, name="nomoat-batch", daemon=True)
        self._thread.start()
        close_at_exit(self)  # before the model: registered after it

    # -- the readers' side (any thread) -----------------------------------------------------------------
    def tokens(self, prompt: list[int], gen: GenerationConfig, max_new: int, drafting: Drafting) -> Iterator[int]:
        """The tokens sampled after ``prompt`` (an end-of-generation token last, if one came); closing the
        iterator before the end gives the sequence back at the next step."""
        if not prompt:
            raise UserError("the prompt is empty")
        request = _Request(list(prompt), gen, max_new)
        with self._cond:
            if self._closed:
                raise ModelError("the batch engine is closed")
            self._waiting.append(request)
            self._cond.notify()
        try:
            while (item := request.out.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            with self._cond:
                request.cancelled = True  # a no-op when finished; otherwise the engine frees it next step
                self._cond.notify()

    def close(self) -> None:
        """Stop the thread (waiting requests get an error) and free the context."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()
        self.batch.close()
        self.ctx.close()

    @property
    def running(self) -> int:
        return len(self._active)

    # -- the engine thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                self._admit()
                while not self._active and not self._closed:
                    self._cond.wait()
                    self._admit()
                if self._closed:
                    break
            try:
                self._step()
            except Exception as exc:  # a failed decode: its requests get the error, the engine goes on
                for request in list(self._active):
                    self._finish(request, exc)
        for request in [*self._active, *self._waiting]:
            self._finish(request, ModelError("the server is shutting down"))

    def _admit(self) -> None:
        """Free abandoned sequences, then hand free ones to waiting requests in order (holding ``_cond``)."""
        for request in [r for r in self._active if r.cancelled]:
            self._finish(request)
        while self._waiting and (self._free or self._waiting[0].cancelled):
            request = self._waiting.popleft()
            if request.cancelled:
                continue
            request.seq = heapq.heappop(self._free)
            llama = self.model.llama
            llama.set_seed(self.model.seed(request.gen))  # the chain Llama.generate builds, seeded the same
            request.sampler = llama._init_sampler(**sampling(request.gen))
            self._active.append(request)

    def _step(self) -> None:
        """One ``llama_decode``: each running sequence's last token, and prompt chunks in the room left.

        Rows go in sequence-id order: with one KV stream per sequence llama.cpp splits a batch into micro-batches
        of *consecutive* sequence ids (``split_equal``, sequential), so 16 sequences in a scrambled order cost 16
        forward passes instead of one (measured: 185 ms a step against 100 ms raw at B=16); the lowest free id
        is handed out first for the same reason."""
        import llama_cpp

        batch, rows = self.batch.batch, []  # rows: (request, batch index whose logits it samples from)
        decoding = sum(r.next is not None for r in self._active)
        n, room = 0, self.n_batch - decoding  # prompt tokens that fit beside every running sequence's next one
        for request in sorted(self._active, key=lambda r: r.seq):
            if request.next is not None:
                _put(batch, n, request.next, request.pos, request.seq, True)
                rows.append((request, n))
                request.pos, request.next, n = request.pos + 1, None, n + 1
                continue
            left = len(request.prompt) - request.pos
            take = min(left, room)
            if take <= 0:
                continue
            for i, token in enumerate(request.prompt[request.pos : request.pos + take]):
                _put(batch, n + i, token, request.pos + i, request.seq, False)
            request.pos, n, room = request.pos + take, n + take, room - take
            if take == left:  # the prompt's last token: its logits give the first answer token
                batch.logits[n - 1] = True
                rows.append((request, n - 1))
        batch.n_tokens = n
        code = llama_cpp.llama_decode(self.ctx.ctx, batch)
        self.steps += 1
        if code != 0:
            raise ModelError(f"llama.cpp could not decode the batch (llama_decode returned {code})")
        vocab = self.model.llama._model.vocab
        for request, i in rows:
            token = request.sampler.sample(self.ctx, i)  # also feeds the repeat penalty's history
            request.produced += 1
            request.out.put(token)
            if llama_cpp.llama_vocab_is_eog(vocab, token) or request.produced >= request.max_new:
                self._finish(request)
            else:
                request.next = token

    def _finish(self, request: _Request, error: BaseException | None = None) -> None:
        """Give the request's sequence back (its KV cells emptied now) and end its reader's queue."""
        import llama_cpp

        if request.seq >= 0:
            llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.ctx.ctx), request.seq, -1, -1)
            heapq.heappush(self._free, request.seq)
            request.seq = -1
        with contextlib.suppress(ValueError):
            self._active.remove(request)
        if request.sampler is not None:
            request.sampler.close()
            request.sampler = None
        request.out.put(error if error is not None else _END)


def _put(batch: Any, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
    batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
    batch.seq_id[i][0] = seq


class Batched:
    """A loaded :class:`~nomoat.llm.runtime.Model` whose generations run in a shared :class:`Engine`: what
    ``nomoat serve --parallel N`` hands its routes and ``rag.ask``. Everything else (tokenizing, the chat
    template, ``fit``) is the model's own; ``lock`` holds nothing, since the engine is what serializes."""

    def __init__(self, model: Model, parallel: int) -> None:
        self.model, self.parallel = model, parallel
        self.engine = Engine(model, parallel)
        self.lock = contextlib.nullcontext()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def chat(self, messages: Sequence[Message], gen: GenerationConfig | None = None, *,
             on_notice: Callable[[str], None] | None = None) -> Generation:  # fmt: skip
        return self.model.chat(messages, gen, on_notice=on_notice, source=self.engine.tokens)

    def generate(self, prompt: Sequence[int], gen: GenerationConfig | None = None, *,
                 notices: list[str] | None = None) -> Generation:  # fmt: skip
        return self.model.generate(prompt, gen, notices=notices, source=self.engine.tokens)

    def close(self) -> None:
        self.engine.close()
