"""One source of defaults: a dataclass per stage. CLI flags and config files only override these."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def default_threads() -> int:
    """CPUs this process may use. llama.cpp's own default (half the cores) leaves one of two idle here."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


@dataclass
class RuntimeConfig:
    """How a GGUF model is loaded into llama.cpp."""

    n_ctx: int = 4096
    """Context window in tokens (capped at the model's trained context length)."""
    n_threads: int = field(default_factory=default_threads)
    """CPU threads for decoding and prompt processing."""
    n_batch: int = 512
    """Prompt tokens processed per llama.cpp decode call."""
    seed: int = 0
    """Sampling seed; the same seed and prompt give the same text."""


@dataclass
class GenerationConfig:
    """Sampling settings for one answer."""

    max_tokens: int = 512
    """Upper bound on generated tokens (lowered automatically to what the context has left)."""
    temperature: float = 0.2
    """0 is greedy; small models ramble at high temperatures."""
    top_p: float = 0.95
    top_k: int = 40
    repeat_penalty: float = 1.1
    """>1 discourages loops, which 135M models fall into easily."""
    stop: tuple[str, ...] = ()
    """Extra stop strings; the model's end-of-turn tokens always stop."""
    seed: int | None = None
    """Overrides RuntimeConfig.seed for this answer."""


@dataclass
class ChatConfig:
    """Interactive chat."""

    system: str | None = None
    """System prompt; None keeps the model template's own default."""


@dataclass
class StoreConfig:
    """How a knowledge base's SQLite file is opened."""

    busy_timeout_ms: int = 5000
    """How long a writer waits for another connection's lock before SQLite raises 'database is locked'."""


@dataclass
class IngestConfig:
    """Walking, reading, chunking and embedding files into a knowledge base."""

    max_file_bytes: int = 64 * 2**20
    """Files larger than this are recorded as failed without being read (also passed to the reader)."""
    file_timeout_s: float = 30.0
    """Wall-clock limit for reading and chunking one file; a looping parser is failed with 'timed out'."""
    embed_batch: int = 256
    """Chunks embedded per embedder call; several small documents share one call for throughput."""
    target_tokens: int = 200
    """Chunk size handed to the chunker."""
    overlap_tokens: int = 30
    """Tokens shared by neighbouring chunks, so a sentence cut at a boundary is still found whole."""
    skip_dirs: tuple[str, ...] = ("node_modules", "__pycache__")
    """Directory names never descended into (hidden directories such as .git are always skipped)."""


@dataclass
class SearchConfig:
    """Fusing BM25 and vector search."""

    candidates: int = 50
    """Hits taken from each of BM25 and vector search before fusion (at least k)."""
    rrf_k: int = 60
    """Reciprocal rank fusion constant: score = sum(1 / (rrf_k + rank)); 60 from Cormack et al., SIGIR 2009."""
