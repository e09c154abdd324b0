"""One knowledge base = one SQLite file: schema, numbered migrations, and the document-level write API.

Schema (``PRAGMA user_version`` counts the migrations applied)::

    meta(key PRIMARY KEY, value)                      embedder name and dimension, creation time
    documents(id, path UNIQUE, size, mtime_ns, sha256, kind, title,
              status 'done'|'failed', error, n_chunks, ingested_at)
    chunks(id AUTOINCREMENT, doc_id -> documents ON DELETE CASCADE, ord,
           text, char_start, char_end, location, heading)
    chunks_fts    FTS5 over chunks(text, heading), external content, kept in sync by triggers
    chunk_vectors(id = chunks.id, embedding float32 BLOB)   exact vectors; created with the embedder
    chunks_vec    sqlite-vec vec0(embedding bit[dim]): the vectors' signs, a 32x smaller index to scan

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import sqlean
import sqlite_vec

from nomoat import paths
from nomoat.config import StoreConfig
from nomoat.errors import UserError

Connection = sqlean.Connection

# --- migrations: append only; never edit a released one (the simonw/llm migrations.py habit) ---------------
_MIGRATIONS: list[Callable[[Connection], None]] = []


def _migration(fn: Callable[[Connection], None]) -> Callable[[Connection], None]:
    _MIGRATIONS.append(fn)
    return fn


@_migration
def m001_initial(conn: Connection) -> None:
    statements = [
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE documents (
            id INTEGER PRIMARY KEY,
            path TEXT NOT NULL UNIQUE,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            sha256 TEXT,
            kind TEXT NOT NULL DEFAULT '',
            title TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
            error TEXT,
            n_chunks INTEGER NOT NULL DEFAULT 0,
            ingested_at REAL NOT NULL
        )""",
        """CREATE TABLE chunks (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            doc_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
            ord INTEGER NOT NULL,
            text TEXT NOT NULL,
            char_start INTEGER NOT NULL,
            char_end INTEGER NOT NULL,
            location TEXT NOT NULL DEFAULT '',
            heading TEXT NOT NULL DEFAULT '',
            UNIQUE (doc_id, ord)
        )""",
        # External content: the text is stored once (in chunks); the triggers keep the index equal to it.
        """CREATE VIRTUAL TABLE chunks_fts USING fts5(
            text, heading, content='chunks', content_rowid='id', tokenize='porter unicode61')""",
        """CREATE TRIGGER chunks_fts_ai AFTER INSERT ON chunks BEGIN
            INSERT INTO chunks_fts(rowid, text, heading) VALUES (new.id, new.text, new.heading);
        END""",
        # Cascaded deletes from documents fire this too (checked in tests/test_store.py).
        """CREATE TRIGGER chunks_fts_ad AFTER DELETE ON chunks BEGIN
            INSERT INTO chunks_fts(chunks_fts, rowid, text, heading) VALUES ('delete', old.id, old.text, old.heading);
        END""",
        """CREATE TRIGGER chunks_fts_au AFTER UPDATE ON chunks BEGIN
            INSERT INTO chunks_fts(chunks_fts, rowid, text, heading) VALUES ('delete', old.id, old.text, old.heading);
            INSERT INTO chunks_fts(rowid, text, heading) VALUES (new.id, new.text, new.heading);
        END""",
        "INSERT INTO meta(key, value) VALUES ('created_at', strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))",
    ]
    for sql in statements:  # not executescript(): it would COMMIT the migration's transaction half-way
        conn.execute(sql)


@_migration
def m002_exact_vectors_and_sign_bits(conn: Connection) -> None:
    """vec0 float[dim] (a full scan per query, ~130 ms at 100k chunks) -> exact float vectors in a plain table
    plus a vec0 bit[dim] index of their signs (~16 ms to scan at 100k, then an exact re-rank)."""
    info = embedder_of(conn)
    if info is None:
        return
    old = conn.execute("SELECT rowid, embedding FROM chunks_vec").fetchall()
    conn.execute("DROP TRIGGER IF EXISTS chunks_vec_ad")
    conn.execute("DROP TABLE chunks_vec")
    _create_vector_tables(conn, info[1])
    ids = [r[0] for r in old]
    vectors = np.frombuffer(b"".join(r[1] for r in old), np.float32).reshape(len(old), info[1])
    _insert_vectors(conn, ids, vectors)


def _migrate(conn: Connection, path: Path) -> None:
    if conn.execute("PRAGMA user_version").fetchone()[0] == len(_MIGRATIONS):
        return  # the usual case, without the write lock: `kb list` must not wait for a running ingest
    while True:
        # Re-read the version inside the write lock: two processes may open a new KB at the same moment.
        with transaction(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(_MIGRATIONS):
                raise UserError(f"{path} was written by a newer nomoat (schema {version}); upgrade nomoat")
            if version == len(_MIGRATIONS):
                return
            _MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")


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
        _migrate(conn, path)
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


# --- meta and vectors -------------------------------------------------------------------------------------------
def get_meta(conn: Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def _set_meta(conn: Connection, key: str, value: str) -> None:
    sql = "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"
    conn.execute(sql, (key, value))


def embedder_of(conn: Connection) -> tuple[str, int] | None:
    """``(name, dim)`` of the embedder this KB's vectors were made with, or None before the first vector."""
    name, dim = get_meta(conn, "embedder"), get_meta(conn, "embedder_dim")
    return None if name is None or dim is None else (name, int(dim))


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
    _create_vector_tables(conn, dim)
    _set_meta(conn, "embedder", name)
    _set_meta(conn, "embedder_dim", str(int(dim)))


def _create_vector_tables(conn: Connection, dim: int) -> None:
    bits = -(-int(dim) // 8) * 8  # vec0 bit vectors are whole bytes; np.packbits pads the same way
    conn.execute("CREATE TABLE chunk_vectors (id INTEGER PRIMARY KEY, embedding BLOB NOT NULL)")
    conn.execute(f"CREATE VIRTUAL TABLE chunks_vec USING vec0(embedding bit[{bits}])")
    conn.execute(
        """CREATE TRIGGER chunks_vec_ad AFTER DELETE ON chunks BEGIN
            DELETE FROM chunks_vec WHERE rowid = old.id;
            DELETE FROM chunk_vectors WHERE id = old.id;
        END"""
    )


def _insert_vectors(conn: Connection, chunk_ids: Sequence[int], vectors: np.ndarray) -> None:
    signs = np.packbits(vectors > 0, axis=1)
    conn.executemany(
        "INSERT INTO chunk_vectors(id, embedding) VALUES (?, ?)",
        ((int(i), v.tobytes()) for i, v in zip(chunk_ids, vectors, strict=True)),
    )
    conn.executemany(
        "INSERT INTO chunks_vec(rowid, embedding) VALUES (?, vec_bit(?))",
        ((int(i), b.tobytes()) for i, b in zip(chunk_ids, signs, strict=True)),
    )


def put_vectors(conn: Connection, chunk_ids: Sequence[int], vectors: np.ndarray) -> None:
    """Insert one vector per chunk id (``vectors``: (n, dim) float32). Call inside ``transaction()``."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    info = embedder_of(conn)
    if info is None or vectors.ndim != 2 or vectors.shape != (len(chunk_ids), info[1]):
        raise ValueError(f"vectors of shape {vectors.shape} for {len(chunk_ids)} chunks, KB embedder {info}")
    _insert_vectors(conn, chunk_ids, vectors)


def all_chunk_texts(conn: Connection) -> list[tuple[int, str]]:
    """``(chunk id, text)`` of every chunk."""
    return [(r[0], r[1]) for r in conn.execute("SELECT id, text FROM chunks ORDER BY id")]


def all_chunks_to_embed(conn: Connection) -> list[tuple[int, str]]:
    """``(chunk id, text to embed)`` of every chunk (see :func:`nomoat.chunking.embedding_text`), for re-embedding
    with another embedder."""
    from nomoat.chunking import embedding_text

    sql = """SELECT c.id, d.path, d.title, c.heading, c.text FROM chunks c JOIN documents d ON d.id = c.doc_id
             ORDER BY c.id"""
    return [(r[0], embedding_text(r[1], r[2], r[3], r[4])) for r in conn.execute(sql)]


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
    return int(row[0])


def write_document(conn: Connection, doc: DocumentRecord, chunks: Sequence[ChunkLike], vectors: np.ndarray) -> int:
    """Replace whatever is stored for ``doc.path`` by these chunks and vectors, status 'done'. Returns the doc id.

    One transaction: the old chunks, FTS rows and vectors go and the new ones arrive together, or nothing changes.
    """
    if not chunks:
        raise ValueError("a done document needs at least one chunk; use mark_failed")
    with transaction(conn):
        doc_id = _upsert(conn, doc, "done", None, len(chunks))
        conn.executemany(
            """INSERT INTO chunks(doc_id, ord, text, char_start, char_end, location, heading)
               VALUES (?, ?, ?, ?, ?, ?, ?)""",
            ((doc_id, i, c.text, c.start, c.end, c.location, c.heading) for i, c in enumerate(chunks)),
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


def documents_under(conn: Connection, root: str) -> list[sqlean.Row]:
    """Documents whose path is inside folder ``root`` (an absolute, resolved path)."""
    prefix = root.rstrip(os.sep) + os.sep
    # A range instead of LIKE: paths may hold '%' and '_'. sep+1 is the first string past every "root/..." path.
    upper = prefix[:-1] + chr(ord(os.sep) + 1)
    return conn.execute("SELECT id, path FROM documents WHERE path >= ? AND path < ?", (prefix, upper)).fetchall()


# --- reads for search -----------------------------------------------------------------------------------------------
def fts_search(conn: Connection, match: str, n: int) -> list[int]:
    """Chunk ids best first by BM25 for an FTS5 MATCH expression (already sanitised by the caller)."""
    sql = "SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ? ORDER BY bm25(chunks_fts, 1.0, 0.5) LIMIT ?"
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
    return problems


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())


def _stats(conn: Connection, name: str) -> dict[str, Any]:
    path = paths.kb_path(name)
    docs = conn.execute("SELECT count(*) FROM documents WHERE status = 'done'").fetchone()[0]
    chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
    return {"name": name, "documents": docs, "chunks": chunks, "path": str(path), "bytes": _bytes(path)}


def list_kbs() -> list[dict[str, Any]]:
    """Every knowledge base under NOMOAT_HOME: ``[{"name", "documents", "chunks", "path", "bytes"}]``."""
    found = []
    for file in sorted(paths.kb_dir().glob("*.sqlite")):
        with contextlib.suppress(UserError):  # a stray file that is not a KB (or has a bad name) is not listed
            conn = open_kb(paths.check_name(file.stem), create=False)
            try:
                found.append(_stats(conn, file.stem))
            finally:
                conn.close()
    return found


def kb_info(name: str) -> dict[str, Any]:
    """``{"name", "documents", "chunks", "failed": [{"path", "error"}], "embedder", "dim", "path", "bytes", ...}``.

    Raises UserError for an unknown KB.
    """
    conn = open_kb(name, create=False)
    try:
        info = _stats(conn, name)
        failed = conn.execute("SELECT path, error FROM documents WHERE status = 'failed' ORDER BY path")
        info["failed"] = [{"path": r[0], "error": r[1]} for r in failed]
        emb = embedder_of(conn)
        info["embedder"], info["dim"] = emb if emb else (None, None)
        info["created_at"] = get_meta(conn, "created_at")
        info["schema"] = conn.execute("PRAGMA user_version").fetchone()[0]
    finally:
        conn.close()
    return info


def remove_kb(name: str) -> str:
    """Delete knowledge base ``name`` (its SQLite file with -wal/-shm). Returns the path removed.

    Raises UserError for an unknown KB, or while an ingest is writing to it.
    """
    path = paths.kb_path(name)
    if not path.exists():
        raise UserError(f"no knowledge base '{name}' (see `nomoat kb list`)")
    with kb_lock(name):
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    with contextlib.suppress(FileNotFoundError):
        path.with_suffix(".lock").unlink()
    return str(path)
