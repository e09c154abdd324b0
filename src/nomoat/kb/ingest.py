"""Files → knowledge base: walk, diff against the KB, read, chunk, embed, commit; incremental and resumable.

Per file, in order (the first that applies decides):

1. size and mtime_ns equal to the stored row → unchanged (not even read; a failed file stays failed until it
   changes, and is listed in ``failed`` again with its stored reason);
2. larger than ``IngestConfig.max_file_bytes`` → failed;
3. same sha256 as the stored done row → unchanged (only the new stat is remembered, so next time is step 1);
4. read + chunk under a wall-clock limit, embed, and commit the whole document in one transaction.

Several documents' chunks share one embedder call (``embed_batch``), but each document is written by its own
transaction, so after ``kill -9`` at any moment the KB holds whole documents only, and the next run redoes just
the ones that were not committed. Documents under a named folder whose file is gone are removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import stat
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nomoat.config import IngestConfig
from nomoat.errors import UserError
from nomoat.kb import store
from nomoat.kb.chunking import Chunk, chunk, embedding_text
from nomoat.kb.readers import read_file, supported
from nomoat.kb.readers.text import Extracted, ReadError, human_size
from nomoat.paths import home, kb_path

if TYPE_CHECKING:
    from nomoat.kb.embeddings import Embedder


@dataclass
class _Pending:
    """A document read and chunked, waiting for its vectors."""

    record: store.DocumentRecord
    chunks: list[Chunk]
    replaces_done: bool


@dataclass
class _Run:
    """State of one ingest run: the KB, the embedder (loaded on first need) and the counts reported."""

    conn: store.Connection
    config: IngestConfig
    embedder: Embedder | None
    pending: list[_Pending] = field(default_factory=list)
    counts: dict[str, Any] = field(
        default_factory=lambda: {"added": 0, "updated": 0, "unchanged": 0, "removed": 0, "failed": [], "chunks": 0}
    )


def run(
    paths: Sequence[str | Path],
    kb: str = "default",
    *,
    embedder: Embedder | None = None,
    progress: bool = True,
    config: IngestConfig | None = None,
) -> dict[str, Any]:
    """Bring knowledge base ``kb`` up to date with the files under ``paths`` (files or folders).

    Returns ``{"added", "updated", "unchanged", "removed", "failed": [{"path", "error"}], "chunks", "skipped"}``:
    counts of files; ``removed`` counts documents dropped because their file is gone; ``chunks`` is the number of
    chunks written by this run (for added and updated files); ``skipped`` counts files found in folders whose type
    nomoat does not read (a file named explicitly is tried anyway, and lands in ``failed`` if unreadable).
    ``embedder`` defaults to the KB's recorded one (or the default for a new KB); passing a different one
    re-embeds every stored chunk first. Raises UserError for a missing path or when nothing is ingestible.
    """
    config = config or IngestConfig()
    kb_file = kb_path(kb)  # validates the name before any work
    roots = _resolve_roots(paths)
    files, skipped = _walk(roots, config)
    folders = [r for r in roots if r.is_dir()]
    if not files and not (kb_file.exists() and _known_under(kb, folders)):
        names = ", ".join(str(r) for r in roots)
        raise UserError(
            f"nothing to ingest under {names}: no files nomoat reads (text, markdown, html, pdf, docx, ...)"
        )
    with store.kb_lock(kb), store.connect(kb, create=True) as conn:
        state = _Run(conn, config, embedder)
        if embedder is not None:
            _use_embedder(state, embedder)  # re-embed now if the caller asked for another embedder
        _ingest_files(state, files, kb, progress)
        state.counts["removed"] = _remove_gone(conn, folders, {str(f) for f in files})
    state.counts["skipped"] = skipped
    return state.counts


# --- walking -------------------------------------------------------------------------------------------------------
def _resolve_roots(raw: Sequence[str | Path]) -> list[Path]:
    if isinstance(raw, str | Path):  # run("notes") would otherwise walk "n", "o", "t", ...
        raw = [raw]
    if not raw:
        raise UserError("name at least one file or folder to ingest")
    roots: list[Path] = []
    for p in raw:
        path = Path(p).expanduser()
        if not path.exists():
            raise UserError(f"no such file or folder: {p}")
        resolved = path.resolve()  # a root the user named may itself be a symlink: follow it
        if resolved not in roots:
            roots.append(resolved)
    return roots


def _inside(path: str, roots: Sequence[Path]) -> bool:
    return any(path == str(r) or path.startswith(str(r).rstrip(os.sep) + os.sep) for r in roots)


def _walk(roots: Sequence[Path], config: IngestConfig) -> tuple[list[Path], int]:
    """Regular files to consider (absolute, resolved, de-duplicated, sorted) and the unsupported ones skipped.

    Hidden entries, ``config.skip_dirs`` and the nomoat home are not entered. Symlinked folders are not followed
    (one inside the roots is walked anyway; one outside must not be). A symlinked file counts only when its
    target is a regular file inside the named roots.
    """
    nomoat_home = str(home().expanduser().resolve())
    found: set[str] = set()
    skipped = 0
    for root in roots:
        if not root.is_dir():
            found.add(str(root))  # named explicitly: always tried, even with an unknown extension
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames[:] = sorted(
                d
                for d in dirnames
                if not d.startswith(".") and d not in config.skip_dirs and os.path.join(dirpath, d) != nomoat_home
            )
            for name in filenames:
                if name.startswith("."):
                    continue
                path = os.path.join(dirpath, name)
                if os.path.islink(path):
                    path = os.path.realpath(path)
                    if not _inside(path, roots):
                        continue
                    if not os.path.exists(path):  # dangling
                        continue
                if supported(Path(path)):
                    found.add(path)
                else:
                    skipped += 1
    return [Path(p) for p in sorted(found)], skipped


def _known_under(kb: str, folders: Sequence[Path]) -> bool:
    with store.connect(kb) as conn:
        return any(store.documents_under(conn, str(f)) for f in folders)


def _remove_gone(conn: store.Connection, folders: Sequence[Path], seen: set[str]) -> int:
    """Delete documents under the named folders whose file no longer exists. Returns how many."""
    known = {r["path"]: r["id"] for f in folders for r in store.documents_under(conn, str(f))}
    gone = [doc_id for p, doc_id in known.items() if p not in seen and not os.path.isfile(p)]
    if gone:
        store.delete_documents(conn, gone)
    return len(gone)


# --- per file -------------------------------------------------------------------------------------------------------
def _ingest_files(state: _Run, files: Sequence[Path], kb: str, progress: bool) -> None:
    from tqdm import tqdm  # lazy: only a run with files to look at needs it

    show = progress and sys.stderr.isatty()
    with tqdm(total=len(files), desc=f"ingest {kb}", unit="file", file=sys.stderr, disable=not show) as bar:
        for path in files:
            _ingest_one(state, path)
            bar.update(1)
        _flush(state)


def _ingest_one(state: _Run, path: Path) -> None:
    cfg, counts = state.config, state.counts
    try:
        st = path.stat()
    except OSError as exc:
        counts["failed"].append({"path": str(path), "error": f"cannot stat: {exc.strerror or exc}"})
        return
    row = store.get_document(state.conn, str(path))
    if row is not None and (row["size"], row["mtime_ns"]) == (st.st_size, st.st_mtime_ns):
        if row["status"] == "done":
            counts["unchanged"] += 1
        else:
            counts["failed"].append({"path": str(path), "error": row["error"]})
        return
    record = store.DocumentRecord(str(path), st.st_size, st.st_mtime_ns, None)
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device: hashing it would block or never end
        return _fail(state, record, "not a regular file")
    if st.st_size > cfg.max_file_bytes:
        return _fail(state, record, f"too large: {human_size(st.st_size)} (limit {human_size(cfg.max_file_bytes)})")
    try:
        digest = _sha256(path)
    except OSError as exc:
        return _fail(state, record, f"cannot read: {exc.strerror or exc}")
    record = store.DocumentRecord(str(path), st.st_size, st.st_mtime_ns, digest)
    if row is not None and row["status"] == "done" and row["sha256"] == digest:
        store.touch_document(state.conn, row["id"], st.st_size, st.st_mtime_ns)
        counts["unchanged"] += 1
        return
    result = _extract(path, cfg)
    if isinstance(result, str):
        return _fail(state, record, result)
    doc, chunks = result
    record = store.DocumentRecord(str(path), st.st_size, st.st_mtime_ns, digest, doc.kind, doc.title)
    state.pending.append(_Pending(record, chunks, replaces_done=row is not None and row["status"] == "done"))
    if sum(len(p.chunks) for p in state.pending) >= cfg.embed_batch:
        _flush(state)


def _fail(state: _Run, record: store.DocumentRecord, error: str) -> None:
    store.mark_failed(state.conn, record, error)
    state.counts["failed"].append({"path": record.path, "error": error})


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    # O_NONBLOCK + fstat: a FIFO swapped in since the stat must not block us.
    with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise OSError("not a regular file")
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class _Timeout(TimeoutError):
    """Our per-file deadline. A TimeoutError, which read_file lets through instead of wrapping in ReadError."""


@contextlib.contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
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


def _extract(path: Path, cfg: IngestConfig) -> tuple[Extracted, list[Chunk]] | str:
    """The document and its chunks, or the reason it cannot be ingested."""
    try:
        with _time_limit(cfg.file_timeout_s):
            doc = read_file(path, max_bytes=cfg.max_file_bytes)
            chunks = chunk(doc, target_tokens=cfg.target_tokens, overlap_tokens=cfg.overlap_tokens)
    except _Timeout:
        return f"timed out after {cfg.file_timeout_s:g} s"
    except ReadError as exc:
        return str(exc) or type(exc).__name__
    except Exception as exc:  # a reader bug on one hostile file must not stop the batch
        return f"internal error: {type(exc).__name__}: {exc}"
    if not chunks:
        return "no text to index"
    return doc, chunks


# --- embedding and committing -------------------------------------------------------------------------------------
def _use_embedder(state: _Run, embedder: Embedder) -> None:
    """Make ``embedder`` the KB's: record it, re-embedding every stored chunk if the KB had another one."""
    state.embedder = embedder
    if store.embedder_of(state.conn) == (embedder.name, embedder.dim):
        return
    with store.transaction(state.conn):  # all or nothing: a kill mid-way leaves the old vectors in place
        store.set_embedder(state.conn, embedder.name, embedder.dim)
        stored = store.all_chunks_to_embed(state.conn)
        if stored:
            texts = [embedding_text(path, title, heading, text) for _, path, title, heading, text in stored]
            vectors = _embed(embedder, texts, state.config.embed_batch)
            store.put_vectors(state.conn, [row[0] for row in stored], vectors)


def _load_embedder(name: str | None) -> Embedder:
    """The embedder called ``name``, or the default one. Imported here: an unchanged re-run never pays for it."""
    from nomoat.kb import embeddings

    return embeddings.load_embedder(name) if name else embeddings.default_embedder()


def _embedder(state: _Run) -> Embedder:
    if state.embedder is None:  # loaded only once a document needs vectors
        recorded = store.embedder_of(state.conn)
        _use_embedder(state, _load_embedder(recorded[0] if recorded else None))
    assert state.embedder is not None
    return state.embedder


def _embed(embedder: Embedder, texts: Sequence[str], batch: int) -> np.ndarray:
    """(len(texts), dim) float32, embedding ``batch`` texts per call."""
    parts = [embedder.embed(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    vectors = np.concatenate(parts) if parts else np.zeros((0, embedder.dim), np.float32)
    if vectors.shape != (len(texts), embedder.dim):
        raise RuntimeError(f"embedder {embedder.name} returned shape {vectors.shape} for {len(texts)} texts")
    return vectors


def _flush(state: _Run) -> None:
    """Embed the pending documents' chunks together, then commit each document in its own transaction."""
    if not state.pending:
        return
    embedder = _embedder(state)
    texts = [embedding_text(p.record.path, p.record.title, c.heading, c.text) for p in state.pending for c in p.chunks]
    vectors = _embed(embedder, texts, state.config.embed_batch)
    offset = 0
    for p in state.pending:
        n = len(p.chunks)
        store.write_document(state.conn, p.record, p.chunks, vectors[offset : offset + n])
        offset += n
        state.counts["updated" if p.replaces_done else "added"] += 1
        state.counts["chunks"] += n
    state.pending.clear()


def format_report(r: dict[str, Any]) -> str:
    """What ``nomoat ingest`` prints: the counts, then one line per failed file."""
    line = (
        f"{r['added']} added, {r['updated']} updated, {r['unchanged']} unchanged, {r['removed']} removed, "
        f"{len(r['failed'])} failed; {r['chunks']} chunks written"
    )
    failed = [f"  failed: {f['path']}: {f['error']}" for f in r["failed"]]
    return "\n".join([line, *failed])
