"""Deterministic stand-ins for the heavy models, for unit tests (no model files, no threads, microseconds)."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

_WORD = re.compile(r"\w+")


class FakeEmbedder:
    """Bag of hashed words through a fixed random projection, L2-normalised.

    Texts sharing words get similar vectors (cosine grows with word overlap); the same text always gets the
    same vector, in any process. Satisfies ``nomoat.embeddings.Embedder``.
    """

    name = "fake-hash@1"
    dim = 64

    def __init__(self, buckets: int = 4096) -> None:
        self._buckets = buckets
        # The projection depends on nothing but a fixed seed, so vectors are stable across runs and machines.
        self._proj = np.random.default_rng(1234).standard_normal((buckets, self.dim)).astype(np.float32)

    def _bucket(self, word: str) -> int:
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") % self._buckets

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)  # (n, dim)
        for i, text in enumerate(texts):
            words = _WORD.findall(text.lower()) or ["<empty>"]
            out[i] = self._proj[[self._bucket(word) for word in words]].sum(axis=0)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


class FakeGeneration:
    """Like ``runtime.Generation``: iterate for text pieces; ``completion_tokens`` counts them."""

    def __init__(self, text: str):
        self._pieces = re.findall(r"\S+\s*|\s+", text)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.notices: list[str] = []

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            self.completion_tokens += 1
            yield piece
        self.finish_reason = "stop"


class FakeChatModel:
    """The part of ``runtime.Model`` that rag uses, answering from a script and recording every prompt.

    ``answers`` are returned in order, one per ``chat`` call ("" once exhausted); ``calls`` holds the messages of
    each call. ``tokenize`` counts one token per word or punctuation mark, close to BPE counts for English.
    """

    def __init__(self, answers: str | Sequence[str] = (), *, name: str = "fake-chat", n_ctx: int = 4096):
        self.answers = [answers] if isinstance(answers, str) else list(answers)
        self.name, self.n_ctx = name, n_ctx
        self.lock = threading.Lock()
        self.calls: list[list[dict[str, str]]] = []
        self.gens: list[Any] = []  # the sampling settings of each call

    def tokenize(self, text: str, *, special: bool = False) -> list[int]:
        return [len(t) for t in re.findall(r"\w+|[^\w\s]", text)]

    def chat(self, messages: Sequence[dict[str, str]], gen: Any = None, *, on_notice: Any = None) -> FakeGeneration:
        self.calls.append([dict(m) for m in messages])
        self.gens.append(gen)
        return FakeGeneration(self.answers.pop(0) if self.answers else "")
