"""What runs in the worker thread for each route: ``work(emit, stop) -> result`` (see :mod:`.engine`).

Each returns ``{"prompt_tokens", "completion_tokens", "finish_reason"}`` (+ ``"nomoat"`` for knowledge-base
answers). Plain generation holds the model's lock itself; :func:`nomoat.rag.ask` takes it on its own.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from nomoat.config import GenerationConfig

Emit = Callable[[str], None]


def _stoppable(generation: Any, stop: threading.Event) -> Iterator[str]:
    """The generation's pieces until ``stop`` is set; closing its generator ends llama.cpp's sampling loop."""
    pieces = iter(generation)
    try:
        for piece in pieces:
            yield piece
            if stop.is_set():
                break
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()


def _usage(generation: Any) -> dict[str, Any]:
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "finish_reason": generation.finish_reason or "stop",
    }


def _drain(generation: Any, emit: Emit, stop: threading.Event) -> dict[str, Any]:
    with contextlib.closing(_stoppable(generation, stop)) as pieces:
        for piece in pieces:
            emit(piece)
    return _usage(generation)


def chat(model: Any, messages: list[dict[str, str]], gen: GenerationConfig) -> Callable[[Emit, threading.Event], Any]:
    def work(emit: Emit, stop: threading.Event) -> dict[str, Any]:
        with model.lock:
            return _drain(model.chat(messages, gen), emit, stop)

    return work


def complete(model: Any, prompt: str, gen: GenerationConfig) -> Callable[[Emit, threading.Event], Any]:
    def work(emit: Emit, stop: threading.Event) -> dict[str, Any]:
        with model.lock:
            if hasattr(model, "complete"):  # a backend (serving/backend.py): it tokenizes the text itself
                return _drain(model.complete(prompt, gen), emit, stop)
            # Special-token parsing off: a prompt spelling "<|im_end|>" gets those characters, not the control token.
            return _drain(model.generate(model.tokenize(prompt), gen), emit, stop)

    return work


class _Counted:
    """The model as rag sees it, counting tokens of the generations it runs and stopping them on ``stop``."""

    def __init__(self, model: Any, stop: threading.Event) -> None:
        self._model, self._stop = model, stop
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0, "finish_reason": "stop"}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def chat(self, messages: Sequence[dict[str, str]], gen: GenerationConfig | None = None, **kw: Any) -> Any:
        return self._pieces(self._model.chat(messages, gen, **kw))

    def _pieces(self, generation: Any) -> Iterator[str]:
        try:
            yield from _stoppable(generation, self._stop)
        finally:
            for key in ("prompt_tokens", "completion_tokens"):
                self.usage[key] += getattr(generation, key)
            self.usage["finish_reason"] = generation.finish_reason or "stop"


def grounded(
    model: Any,
    messages: list[dict[str, str]],
    kb: str,
    gen: GenerationConfig | None,
    retrieve: Callable[..., list[dict[str, Any]]] | None,
    policy: Any = None,
) -> Callable[[Emit, threading.Event], Any]:
    """A knowledge-base answer (:func:`nomoat.rag.ask`): the last message is the question, earlier turns the
    history. The answer is checked before it is shown, so it arrives as one piece (never withdrawn text)."""
    from nomoat.answer import rag

    question = messages[-1]["content"]
    history = [m for m in messages[:-1] if m["role"] in ("user", "assistant")]

    def work(emit: Emit, stop: threading.Event) -> dict[str, Any]:
        counted = _Counted(model, stop)
        result = rag.ask(question, kb, model=counted, history=history, gen=gen, retrieve=retrieve, policy=policy)
        emit(result["answer"])  # citations carry their chunk_id: the UI opens the cited chunk by it
        extra = {"kb": kb, "grounded": result["grounded"], "mode": result["mode"], "citations": result["citations"]}
        if "policy" in result:  # the owner's answer policy acted; nomoat.policy.streams decides what the client sees
            extra["policy"] = result["policy"]
        return {**counted.usage, "nomoat": extra}

    return work


def embed(embedder: Any, texts: list[str]) -> Callable[[Emit, threading.Event], Any]:
    def work(emit: Emit, stop: threading.Event) -> Any:
        return embedder.embed(texts)

    return work
