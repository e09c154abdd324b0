"""Read documents → indexed chunks: mask what is not content, chunk, embed, commit, one transaction per document.

Documents arrive from :mod:`nomoat.kb.ingest` already read. They are held in a *read batch* (bounded by
``IngestConfig.read_batch_docs`` / ``read_batch_chars``) so that a line repeated across the batch's documents is
recognised as site furniture before any of them is chunked: on a first ingest the navigation of a documentation
site is masked from the first batch on. The line counts live in the KB (:func:`nomoat.kb.store.line_counts`);
each batch sees the stored counts plus its own. What repeats can change as the KB grows or shrinks, so
:meth:`Indexer.refresh` re-chunks the documents whose masked lines no longer match (only those; others keep their
chunks and vectors). Several documents' chunks share one embedder call (``embed_batch``); each document is still
its own transaction, so after ``kill -9`` the KB holds whole documents only.
"""

from __future__ import annotations

import contextlib
import hashlib
import signal
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nomoat.config import IngestConfig
from nomoat.kb import cleaning, store
from nomoat.kb.chunking import Chunk, chunk, embedding_text
from nomoat.kb.readers import read_file
from nomoat.kb.readers.ocr import ProgressFn
from nomoat.kb.readers.text import Extracted, ReadError

if TYPE_CHECKING:
    from nomoat.kb.embeddings import Embedder


@dataclass
class Read:
    """A document read from its file, waiting to be cleaned and chunked."""

    record: store.DocumentRecord
    doc: Extracted
    replaces: int | None
    """Id of the done document this one replaces (an update), or None (an addition)."""


@dataclass
class _Pending:
    """A document cleaned and chunked, waiting for its vectors."""

    record: store.DocumentRecord
    chunks: list[Chunk]
    replaces: int | None
    keys: set[int]
    masked: str


class _Timeout(TimeoutError):
    """Our per-file deadline. A TimeoutError, which read_file lets through instead of wrapping in ReadError."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise _Timeout in this block after ``seconds`` (SIGALRM; main thread on POSIX only, else no limit)."""
    if seconds <= 0 or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _alarm(signum: int, frame: Any) -> None:
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def read(path: Path, cfg: IngestConfig, progress: ProgressFn | None = None) -> Extracted | str:
    """The document's text, or the reason it cannot be read (under the per-file time limit; time spent on OCR
    does not count against it: each page has its own, ``cfg.ocr.page_timeout_s``)."""
    try:
        with time_limit(cfg.file_timeout_s):
            return read_file(path, max_bytes=cfg.max_file_bytes, ocr=cfg.ocr, progress=progress, resolved=True)
    except _Timeout:
        return f"timed out after {cfg.file_timeout_s:g} s"
    except ReadError as exc:
        return str(exc) or type(exc).__name__
    except Exception as exc:  # a reader bug on one hostile file must not stop the batch
        return f"internal error: {type(exc).__name__}: {exc}"


def fingerprint(keys: set[int]) -> str:
    """What ``documents.masked`` stores: a short hash of the masked line keys ("" when none)."""
    if not keys:
        return ""
    return hashlib.sha256(",".join(map(str, sorted(keys))).encode()).hexdigest()[:16]


@dataclass
class Indexer:
    """One ingest run's writer: the KB connection, the embedder (loaded on first need) and the counts reported."""

    conn: store.Connection
    config: IngestConfig
    embedder: Embedder | None
    counts: dict[str, Any]
    reads: list[Read] = field(default_factory=list)
    pending: list[_Pending] = field(default_factory=list)

    def add(self, item: Read) -> None:
        self.reads.append(item)
        chars = sum(len(r.doc.text) for r in self.reads)
        if len(self.reads) >= self.config.read_batch_docs or chars >= self.config.read_batch_chars:
            self._index_reads()

    def fail(self, record: store.DocumentRecord, error: str) -> None:
        store.mark_failed(self.conn, record, error)
        self.counts["failed"].append({"path": record.path, "error": error})

    def finish(self) -> None:
        """Index whatever is still buffered."""
        self._index_reads()
        self._flush()

    # -- furniture ---------------------------------------------------------------------------------------------
    def _furniture(self, batch: list[tuple[Read, set[int]]]) -> set[int]:
        """Line keys held by enough documents, counting the stored documents and this batch (replacing, for an
        update, the lines of the version it replaces)."""
        delta: Counter[int] = Counter()
        added = 0
        for item, keys in batch:
            delta.update(keys)
            if item.replaces is None:
                added += 1
            else:
                delta.subtract(store.document_lines(self.conn, item.replaces))
        least = self._least(store.done_documents(self.conn) + added)
        if least is None:
            return set()
        stored = store.line_counts(self.conn, {k for _, keys in batch for k in keys})
        return {k for _, keys in batch for k in keys if stored.get(k, 0) + delta[k] >= least}

    def _least(self, documents: int) -> int | None:
        return cleaning.threshold(documents, self.config.repeated_share, self.config.repeated_least)

    def _index_reads(self) -> None:
        batch = [(item, cleaning.line_keys(item.doc)) for item in self.reads]
        self.reads = []
        furniture = self._furniture(batch)
        for item, keys in batch:
            self._chunk(item, keys, keys & furniture)

    def _chunk(self, item: Read, keys: set[int], masked: set[int]) -> None:
        cfg = self.config
        doc, lines = cleaning.mask_lines(item.doc, masked)
        doc, marks = cleaning.clean_pages(doc)
        try:
            with time_limit(cfg.file_timeout_s):
                chunks = chunk(doc, target_tokens=cfg.target_tokens, overlap_tokens=cfg.overlap_tokens)
        except _Timeout:
            return self.fail(item.record, f"timed out after {cfg.file_timeout_s:g} s")
        if not chunks:
            reason = "no text to index" + (" (all of it repeats across documents)" if lines else "")
            return self.fail(item.record, reason)
        self.counts["boilerplate_lines"] += lines + marks
        self.pending.append(_Pending(item.record, chunks, item.replaces, keys, fingerprint(masked)))
        if sum(len(p.chunks) for p in self.pending) >= cfg.embed_batch:
            self._flush()

    def refresh(self, paths_ok: Any) -> list[str]:
        """Re-chunk the documents whose masked lines changed since they were chunked (what repeats across the KB
        moved as documents came and went). ``paths_ok(path)`` says whether a document's file may be read again
        (it still exists, unchanged). Returns the paths re-chunked."""
        least = self._least(store.done_documents(self.conn))
        repeated = store.repeated_lines(self.conn, least) if least is not None else {}
        redo = []
        for doc_id, (path, masked) in store.masked_fingerprints(self.conn).items():
            if fingerprint(repeated.get(doc_id, set())) != masked and paths_ok(path):
                redo.append((doc_id, path))
        self._flush()
        updated = self.counts["updated"]
        for doc_id, path in redo:
            row = store.get_document(self.conn, path)
            doc = read(Path(path), self.config)
            if isinstance(doc, str):
                self.fail(store.DocumentRecord(path, row["size"], row["mtime_ns"], row["sha256"]), doc)
                continue
            record = store.DocumentRecord(path, row["size"], row["mtime_ns"], row["sha256"], doc.kind, doc.title)
            keys = cleaning.line_keys(doc)
            self._chunk(Read(record, doc, doc_id), keys, keys & repeated.get(doc_id, set()))
        self._flush()
        # re-chunked for the KB's sake, not because the file changed: reported apart from the updates
        self.counts["recleaned"] += self.counts["updated"] - updated
        self.counts["updated"] = updated
        return [path for _, path in redo]

    # -- embedding and committing ----------------------------------------------------------------------------------
    def use_embedder(self, embedder: Embedder) -> None:
        """Make ``embedder`` the KB's: record it, re-embedding every stored chunk if the KB had another one."""
        self.embedder = embedder
        if store.embedder_of(self.conn) == (embedder.name, embedder.dim):
            return
        with store.transaction(self.conn):  # all or nothing: a kill mid-way leaves the old vectors in place
            store.set_embedder(self.conn, embedder.name, embedder.dim)
            stored = store.all_chunks_to_embed(self.conn)
            if stored:
                texts = [embedding_text(path, title, heading, text) for _, path, title, heading, text in stored]
                vectors = embed(embedder, texts, self.config.embed_batch)
                store.put_vectors(self.conn, [row[0] for row in stored], vectors)

    def _embedder(self) -> Embedder:
        if self.embedder is None:  # loaded only once a document needs vectors
            recorded = store.embedder_of(self.conn)
            self.use_embedder(_load_embedder(recorded[0] if recorded else None))
        assert self.embedder is not None
        return self.embedder

    def _flush(self) -> None:
        """Embed the pending documents' chunks together, then commit each document in its own transaction."""
        if not self.pending:
            return
        embedder = self._embedder()
        texts = [
            embedding_text(p.record.path, p.record.title, c.heading, c.text) for p in self.pending for c in p.chunks
        ]
        vectors = embed(embedder, texts, self.config.embed_batch)
        offset = 0
        for p in self.pending:
            n = len(p.chunks)
            store.write_document(self.conn, p.record, p.chunks, vectors[offset : offset + n], line_keys=p.keys,
                                 masked=p.masked)  # fmt: skip
            offset += n
            self.counts["updated" if p.replaces is not None else "added"] += 1
            self.counts["chunks"] += n
        self.pending.clear()


def _load_embedder(name: str | None) -> Embedder:
    """The embedder called ``name``, or the default one. Imported here: an unchanged re-run never pays for it."""
    from nomoat.kb import embeddings

    return embeddings.load_embedder(name) if name else embeddings.default_embedder()


def embed(embedder: Embedder, texts: Sequence[str], batch: int) -> np.ndarray:
    """(len(texts), dim) float32, embedding ``batch`` texts per call."""
    parts = [embedder.embed(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    vectors = np.concatenate(parts) if parts else np.zeros((0, embedder.dim), np.float32)
    if vectors.shape != (len(texts), embedder.dim):
        raise RuntimeError(f"embedder {embedder.name} returned shape {vectors.shape} for {len(texts)} texts")
    return vectors
