"""One knowledge base = one SQLite file (tables: :mod:`.schema`): connections, and every read and write.

Vector search scans the sign bits by Hamming distance in sqlite-vec, then re-ranks the best candidates by exact
cosine from ``chunk_vectors`` (migration 2; measured at 100k chunks: docs/benchmarks.md).

Invariants every write keeps (``verify()`` checks them): FTS rows == vector rows == chunk rows, and a ``done``
document has exactly ``n_chunks`` chunks. Each write function is one transaction, so a reader (or the next run
after ``kill -9``) sees a document either whole or not at all. Chunk ids never get reused (AUTOINCREMENT), so
ids kept elsewhere (dataset provenance) can't silently point at a different text later.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Protocol

import numpy as np
import sqlean
import sqlite_vec

from nomoat import paths
from nomoat.config import SearchConfig, StoreConfig
from nomoat.errors import UserError
from nomoat.kb import schema
from nomoat.kb.schema import Connection, embedder_of


# --- connections ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def transaction(conn: Connection) -> Iterator[Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; ``ROLLBACK`` on any exception. Connections are in autocommit mode."""
    conn.execute("BEGIN IMMEDIATE")  # take the write lock now, not at the first write (no upgrade deadlocks)
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def open_kb(name: str, *, create: bool = True, config: StoreConfig | None = None) -> Connection:
    """Open (and, with ``create``, make) knowledge base ``name``; migrations are applied on open.

    Raises UserError for an unknown KB when ``create`` is false, an invalid name, or a file that is not a KB.
    """
    config = config or StoreConfig()
    path = paths.kb_path(name)
    if not create and not path.exists():
        raise UserError(f"no knowledge base '{name}': run `nomoat ingest PATH` first")
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a document's writes are one transaction.
    conn = sqlean.connect(str(path), isolation_level=None, timeout=config.busy_timeout_ms / 1000)
    try:
        conn.row_factory = sqlean.Row
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        conn.execute(f"PRAGMA busy_timeout = {int(config.busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")  # readers never block the ingest writer, and vice versa
        conn.execute("PRAGMA synchronous = NORMAL")  # safe in WAL: a crash loses at most the last commits
        conn.execute("PRAGMA foreign_keys = ON")
        schema.migrate(conn, path, transaction)
    except sqlean.OperationalError as exc:
        conn.close()
        if "locked" in str(exc):
            raise UserError(f"knowledge base '{name}' is busy (locked by another process); try again") from exc
        raise UserError(f"cannot open knowledge base {path}: {exc}") from exc
    except sqlean.DatabaseError as exc:
        conn.close()
        raise UserError(f"{path} is not a usable nomoat knowledge base ({exc}); remove it or use another --kb") from exc
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def connect(name: str, *, create: bool = False, config: StoreConfig | None = None) -> Iterator[Connection]:
    """``with connect(name) as conn:``: :func:`open_kb`, closed however the block ends. Every caller uses this."""
    conn = open_kb(name, create=create, config=config)
    try:
        yield conn
    finally:
        conn.close()


@contextlib.contextmanager
def kb_lock(name: str) -> Iterator[None]:
    """Hold an exclusive advisory lock for writers of ``name`` (ingest); the kernel drops it if we're killed."""
    try:
        import fcntl
    except ImportError:  # Windows: SQLite's own locking still keeps the file consistent
        yield
        return
    lock_path = paths.kb_path(name).with_suffix(".lock")
    with open(lock_path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another nomoat process is writing to knowledge base '{name}'; wait for it") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def set_embedder(conn: Connection, name: str, dim: int) -> None:
    """Create the vector table for ``dim`` and record the embedder, dropping any vectors of a previous one.

    Call inside ``transaction()``; after changing embedders the caller re-inserts a vector for every chunk
    in the same transaction (``all_chunks_to_embed`` + ``put_vectors``) so the row counts stay equal.
    """
    if embedder_of(conn) == (name, dim):
        return
    conn.execute("DROP TRIGGER IF EXISTS chunks_vec_ad")
    conn.execute("DROP TABLE IF EXISTS chunks_vec")
    conn.execute("DROP TABLE IF EXISTS chunk_vectors")
    schema.create_vector_tables(conn, dim)
    schema.set_meta(conn, "embedder", name)
    schema.set_meta(conn, "embedder_dim", str(int(dim)))
    conn.execute("DELETE FROM meta WHERE key = 'query_encoder'")  # it was trained against the old vectors


def put_vectors(conn: Connection, chunk_ids: Sequence[int], vectors: np.ndarray) -> None:
    """Insert one vector per chunk id (``vectors``: (n, dim) float32). Call inside ``transaction()``."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    info = embedder_of(conn)
    if info is None or vectors.ndim != 2 or vectors.shape != (len(chunk_ids), info[1]):
        raise ValueError(f"vectors of shape {vectors.shape} for {len(chunk_ids)} chunks, KB embedder {info}")
    schema.insert_vectors(conn, chunk_ids, vectors)


def all_vectors(conn: Connection) -> tuple[list[int], np.ndarray]:
    """Every chunk id (ascending) and its stored vector: ``(ids, (n, dim) float32)``; empty without vectors."""
    info = embedder_of(conn)
    rows = conn.execute("SELECT id, embedding FROM chunk_vectors ORDER BY id").fetchall() if info else []
    dim = info[1] if info else 0
    return [r[0] for r in rows], np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), dim)


def all_chunk_texts(conn: Connection) -> list[tuple[int, str]]:
    """``(chunk id, text)`` of every chunk."""
    return [(r[0], r[1]) for r in conn.execute("SELECT id, text FROM chunks ORDER BY id")]


def all_chunks_to_embed(conn: Connection) -> list[tuple[int, str, str, str, str]]:
    """``(chunk id, document path, document title, heading, text)`` of every chunk, for re-embedding with another
    embedder (the caller builds the text the embedder sees from these fields)."""
    sql = """SELECT c.id, d.path, d.title, c.heading, c.text FROM chunks c JOIN documents d ON d.id = c.doc_id
             ORDER BY c.id"""
    return [(r[0], r[1], r[2], r[3], r[4]) for r in conn.execute(sql)]


# --- document-level writes (each one transaction) ------------------------------------------------------------------
class ChunkLike(Protocol):
    """What store needs of a chunk (``nomoat.chunking.Chunk`` fits)."""

    text: str
    start: int
    end: int
    location: str
    heading: str


@dataclass(frozen=True)
class DocumentRecord:
    """A file as seen on disk when it was read."""

    path: str
    size: int
    mtime_ns: int
    sha256: str | None
    kind: str = ""
    title: str = ""


def get_document(conn: Connection, path: str) -> sqlean.Row | None:
    return conn.execute("SELECT * FROM documents WHERE path = ?", (path,)).fetchone()


def _upsert(conn: Connection, doc: DocumentRecord, status: str, error: str | None, n_chunks: int) -> int:
    row = conn.execute(
        """INSERT INTO documents(path, size, mtime_ns, sha256, kind, title, status, error, n_chunks, ingested_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
           ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
             sha256 = excluded.sha256, kind = excluded.kind, title = excluded.title, status = excluded.status,
             error = excluded.error, n_chunks = excluded.n_chunks, ingested_at = excluded.ingested_at
           RETURNING id""",
        (doc.path, doc.size, doc.mtime_ns, doc.sha256, doc.kind, doc.title, status, error, n_chunks, time.time()),
    ).fetchone()
    conn.execute("DELETE FROM chunks WHERE doc_id = ?", (row[0],))  # triggers drop their FTS rows and vectors
    conn.execute("DELETE FROM doc_lines WHERE doc_id = ?", (row[0],))  # and triggers decrement the line counts
    return int(row[0])


def document_fields(path: str, title: str) -> str:
    """What FTS indexes as every chunk's document fields: the file's name (its stem, "git-stash") and title."""
    stem = PurePath(path).stem
    return stem if not title or title.lower() == stem.lower() else f"{stem}\n{title}"


def write_document(
    conn: Connection,
    doc: DocumentRecord,
    chunks: Sequence[ChunkLike],
    vectors: np.ndarray,
    *,
    line_keys: Iterable[int] = (),
    masked: str = "",
) -> int:
    """Replace whatever is stored for ``doc.path`` by these chunks and vectors, status 'done'. Returns the doc id.

    ``line_keys`` are the document's candidate line keys (counted across documents, see :mod:`.cleaning`) and
    ``masked`` the fingerprint of those masked when it was chunked. One transaction: the old chunks, FTS rows,
    vectors and line keys go and the new ones arrive together, or nothing changes.
    """
    if not chunks:
        raise ValueError("a done document needs at least one chunk; use mark_failed")
    fields = document_fields(doc.path, doc.title)
    with transaction(conn):
        doc_id = _upsert(conn, doc, "done", None, len(chunks))
        conn.execute("UPDATE documents SET masked = ? WHERE id = ?", (masked, doc_id))
        conn.executemany("INSERT INTO doc_lines(doc_id, key) VALUES (?, ?)", ((doc_id, k) for k in set(line_keys)))
        conn.executemany(
            """INSERT INTO chunks(doc_id, ord, text, char_start, char_end, location, heading, fields)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
            ((doc_id, i, c.text, c.start, c.end, c.location, c.heading, fields) for i, c in enumerate(chunks)),
        )
        ids = [r[0] for r in conn.execute("SELECT id FROM chunks WHERE doc_id = ? ORDER BY ord", (doc_id,))]
        put_vectors(conn, ids, vectors)
    return doc_id


def mark_failed(conn: Connection, doc: DocumentRecord, error: str) -> int:
    """Record that ``doc.path`` could not be ingested (dropping any older chunks of it). Returns the doc id."""
    with transaction(conn):
        return _upsert(conn, doc, "failed", error, 0)


def touch_document(conn: Connection, doc_id: int, size: int, mtime_ns: int) -> None:
    """Same content, new stat (e.g. the file was touched): remember it so the next run skips the hash."""
    with transaction(conn):
        conn.execute("UPDATE documents SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, doc_id))


def delete_documents(conn: Connection, doc_ids: Sequence[int]) -> None:
    """Delete documents with their chunks, FTS rows and vectors, in one transaction."""
    with transaction(conn):
        conn.executemany("DELETE FROM documents WHERE id = ?", ((int(i),) for i in doc_ids))


def done_documents(conn: Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM documents WHERE status = 'done'").fetchone()[0])


def line_counts(conn: Connection, keys: Iterable[int]) -> dict[int, int]:
    """``{key: documents holding that line}`` for the given line keys (absent keys are held by none)."""
    keys, found = list(keys), {}
    for i in range(0, len(keys), 500):  # SQLite's bound-parameter limit
        part = keys[i : i + 500]
        sql = f"SELECT key, docs FROM line_counts WHERE key IN ({','.join('?' * len(part))})"
        found.update(conn.execute(sql, part).fetchall())
    return found


def document_lines(conn: Connection, doc_id: int) -> set[int]:
    return {r[0] for r in conn.execute("SELECT key FROM doc_lines WHERE doc_id = ?", (doc_id,))}


def repeated_lines(conn: Connection, least: int) -> dict[int, set[int]]:
    """``{doc id: its line keys held by at least ``least`` documents}``, for the documents that have any."""
    sql = """SELECT l.doc_id, l.key FROM line_counts c JOIN doc_lines l ON l.key = c.key WHERE c.docs >= ?"""
    found: dict[int, set[int]] = {}
    for doc_id, k in conn.execute(sql, (least,)):
        found.setdefault(doc_id, set()).add(k)
    return found


def masked_fingerprints(conn: Connection) -> dict[int, tuple[str, str]]:
    """``{doc id: (path, masked fingerprint)}`` of every done document."""
    rows = conn.execute("SELECT id, path, masked FROM documents WHERE status = 'done'")
    return {r[0]: (r[1], r[2]) for r in rows}


def documents_under(conn: Connection, root: str) -> list[sqlean.Row]:
    """Documents whose path is inside folder ``root`` (an absolute, resolved path)."""
    prefix = root.rstrip(os.sep) + os.sep
    # A range instead of LIKE: paths may hold '%' and '_'. sep+1 is the first string past every "root/..." path.
    upper = prefix[:-1] + chr(ord(os.sep) + 1)
    return conn.execute("SELECT id, path FROM documents WHERE path >= ? AND path < ?", (prefix, upper)).fetchall()


# --- reads for search -----------------------------------------------------------------------------------------------
FTS_WEIGHTS = SearchConfig.fts_weights
"""bm25() weights of the text, heading and document-fields columns (kb/lexical.py uses the same)."""


def fts_search(conn: Connection, match: str, n: int, weights: Sequence[float] = FTS_WEIGHTS) -> list[int]:
    """Chunk ids best first by BM25 for an FTS5 MATCH expression (already sanitised by the caller); ``weights``
    scale the text, heading and document-fields columns' BM25 (FTS5's bm25() takes one weight per column).
    FTS5's plain query: it scores every matching row; :func:`.lexical.fts_search` scores far fewer."""
    w = ", ".join(f"{float(x):.6g}" for x in weights)  # numbers we format ourselves, never user text
    sql = f"SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY bm25(chunks_fts, {w}) LIMIT ?"
    return [r[0] for r in conn.execute(sql, (match, n))]


def vector_search(conn: Connection, vector: np.ndarray, n: int, *, rerank: int = 2) -> list[int]:
    """Chunk ids nearest to ``vector`` (cosine), best first; [] before the KB has vectors.

    sqlite-vec scans the sign bits (Hamming distance) for ``rerank * n`` candidates (at least 64), which are
    then ordered by exact cosine. On git-doc this keeps the same recall as an exact scan (docs/benchmarks.md).
    """
    if embedder_of(conn) is None:
        return []
    query = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
    pool = min(max(int(n) * rerank, 64), 4096)  # vec0 caps k at 4096; its cost grows with k
    sql = "SELECT rowid FROM chunks_vec WHERE embedding MATCH vec_bit(?) AND k = ? ORDER BY distance"
    candidates = [r[0] for r in conn.execute(sql, (np.packbits(query > 0).tobytes(), pool))]
    scored = cosines(conn, query, candidates)
    return sorted(scored, key=lambda i: (-scored[i], i))[: int(n)]


def cosines(conn: Connection, vector: np.ndarray, chunk_ids: Sequence[int]) -> dict[int, float]:
    """``{chunk id: cosine similarity to vector}`` for the given chunks (primary-key lookups, no scan)."""
    if embedder_of(conn) is None or not chunk_ids:
        return {}
    query = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
    query = query / max(float(np.linalg.norm(query)), 1e-12)
    marks = ",".join("?" * len(chunk_ids))
    rows = conn.execute(f"SELECT id, embedding FROM chunk_vectors WHERE id IN ({marks})", [int(i) for i in chunk_ids])
    rows = rows.fetchall()
    if not rows:
        return {}
    matrix = np.frombuffer(b"".join(r[1] for r in rows), np.float32).reshape(len(rows), -1)
    norms = np.maximum(np.linalg.norm(matrix, axis=1), 1e-12)
    return {r[0]: float(s) for r, s in zip(rows, matrix @ query / norms, strict=True)}


def get_chunks(conn: Connection, chunk_ids: Sequence[int]) -> dict[int, sqlean.Row]:
    """``{chunk id: row(id, text, location, heading, char_start, char_end, path)}`` for the given ids."""
    marks = ",".join("?" * len(chunk_ids))
    sql = f"""SELECT c.id, c.text, c.location, c.heading, c.char_start, c.char_end, d.path
              FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE c.id IN ({marks})"""
    return {r["id"]: r for r in conn.execute(sql, [int(i) for i in chunk_ids])}


def chunks_of(conn: Connection, doc_paths: Sequence[str]) -> list[str]:
    """Chunk texts of the documents at ``doc_paths``, document by document in reading order."""
    marks = ",".join("?" * len(doc_paths))
    sql = f"""SELECT c.text FROM chunks c JOIN documents d ON d.id = c.doc_id
              WHERE d.path IN ({marks}) ORDER BY d.path, c.ord"""
    return [r[0] for r in conn.execute(sql, list(doc_paths))]


def state(conn: Connection) -> str:
    """A value that changes whenever a document is added, updated or removed (keys answers drawn from the KB)."""
    row = conn.execute("SELECT count(*), coalesce(max(ingested_at), 0), coalesce(sum(n_chunks), 0) FROM documents")
    return ":".join(map(str, row.fetchone()))


# --- whole knowledge bases -------------------------------------------------------------------------------------------
def verify(conn: Connection) -> list[str]:
    """Problems found (empty list = healthy): SQLite and FTS integrity, row counts, done documents' chunks."""
    problems = [r[0] for r in conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
    try:
        conn.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")
    except sqlean.DatabaseError as exc:
        problems.append(f"fts: {exc}")
    n_chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
    n_fts = conn.execute("SELECT count(*) FROM chunks_fts_docsize").fetchone()[0]  # rows actually indexed
    n_vec = n_bits = 0
    if embedder_of(conn):
        n_vec = conn.execute("SELECT count(*) FROM chunk_vectors").fetchone()[0]
        n_bits = conn.execute("SELECT count(*) FROM chunks_vec").fetchone()[0]
    if not n_chunks == n_fts == n_vec == n_bits:
        problems.append(f"row counts differ: chunks {n_chunks}, fts {n_fts}, vectors {n_vec}, sign bits {n_bits}")
    bad = conn.execute(
        """SELECT d.path FROM documents d WHERE d.status = 'done'
           AND (d.n_chunks = 0 OR d.n_chunks != (SELECT count(*) FROM chunks c WHERE c.doc_id = d.id))"""
    ).fetchall()
    problems += [f"done document without its chunks: {r[0]}" for r in bad]
    off = conn.execute(
        """SELECT count(*) FROM (SELECT key, count(*) AS n FROM doc_lines GROUP BY key) d
           LEFT JOIN line_counts c USING (key) WHERE c.docs IS NOT d.n"""
    ).fetchone()[0]
    off += conn.execute("SELECT count(*) FROM line_counts WHERE key NOT IN (SELECT key FROM doc_lines)").fetchone()[0]
    if off:
        problems.append(f"line counts differ from the documents' lines for {off} keys")
    return problems
