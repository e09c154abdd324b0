"""The tables of a knowledge base and their numbered migrations (``PRAGMA user_version`` counts those applied)::

    meta(key PRIMARY KEY, value)                      embedder name and dimension, creation time
    documents(id, path UNIQUE, size, mtime_ns, sha256, kind, title,
              status 'done'|'failed', error, n_chunks, ingested_at)
    chunks(id AUTOINCREMENT, doc_id -> documents ON DELETE CASCADE, ord,
           text, char_start, char_end, location, heading, fields = the document's file name and title)
    doc_lines(doc_id, key), line_counts(key, docs)      candidate lines per document, documents per line
    chunks_fts    FTS5 over chunks(text, heading, fields), external content, kept in sync by triggers
    chunk_vectors(id = chunks.id, embedding float32 BLOB)   exact vectors; created with the embedder
    chunks_vec    sqlite-vec vec0(embedding bit[dim]): the vectors' signs, a 32x smaller index to scan

Migrations are append only: never edit a released one (the simonw/llm migrations.py habit). :mod:`.store` opens
connections (applying them) and owns every read and write.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import sqlean

from nomoat.errors import UserError

Connection = sqlean.Connection

MIGRATIONS: list[Callable[[Connection], None]] = []


def _migration(fn: Callable[[Connection], None]) -> Callable[[Connection], None]:
    MIGRATIONS.append(fn)
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
    create_vector_tables(conn, info[1])
    ids = [r[0] for r in old]
    vectors = np.frombuffer(b"".join(r[1] for r in old), np.float32).reshape(len(old), info[1])
    insert_vectors(conn, ids, vectors)


@_migration
def m003_repeated_lines(conn: Connection) -> None:
    """Lines repeated across documents (site navigation, footers) are masked before chunking (kb/cleaning.py). Each
    done document's candidate line keys, and how many documents hold each key (kept by triggers, so a cascaded
    delete of a document decrements its lines too); ``documents.masked`` fingerprints the lines masked when the
    document was chunked, so a change in what repeats re-chunks only the documents it touches."""
    conn.execute(
        """CREATE TABLE doc_lines (
            doc_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
            key INTEGER NOT NULL,
            PRIMARY KEY (doc_id, key)
        ) WITHOUT ROWID"""
    )
    conn.execute("CREATE INDEX doc_lines_key ON doc_lines(key)")
    conn.execute("CREATE TABLE line_counts (key INTEGER PRIMARY KEY, docs INTEGER NOT NULL)")
    conn.execute(
        """CREATE TRIGGER doc_lines_ai AFTER INSERT ON doc_lines BEGIN
            INSERT INTO line_counts(key, docs) VALUES (new.key, 1)
            ON CONFLICT(key) DO UPDATE SET docs = docs + 1;
        END"""
    )
    conn.execute(
        """CREATE TRIGGER doc_lines_ad AFTER DELETE ON doc_lines BEGIN
            UPDATE line_counts SET docs = docs - 1 WHERE key = old.key;
            DELETE FROM line_counts WHERE key = old.key AND docs <= 0;
        END"""
    )
    conn.execute("ALTER TABLE documents ADD COLUMN masked TEXT NOT NULL DEFAULT ''")
    # Documents chunked before this have no line keys: forget their stat and hash so the next ingest reads them again.
    conn.execute("UPDATE documents SET size = -1, sha256 = NULL")


@_migration
def m004_document_fields_in_fts(conn: Connection) -> None:
    """FTS5 gets a third column, the chunk's document fields (file name and title), so a page named git-stash.html
    is evidence for every chunk of it; bm25() weighs text, heading and these fields separately (SearchConfig)."""
    conn.execute("ALTER TABLE chunks ADD COLUMN fields TEXT NOT NULL DEFAULT ''")
    for trigger in ("chunks_fts_ai", "chunks_fts_ad", "chunks_fts_au"):
        conn.execute(f"DROP TRIGGER {trigger}")
    conn.execute("DROP TABLE chunks_fts")
    conn.execute(
        """CREATE VIRTUAL TABLE chunks_fts USING fts5(
            text, heading, fields, content='chunks', content_rowid='id', tokenize='porter unicode61')"""
    )
    conn.execute(
        """CREATE TRIGGER chunks_fts_ai AFTER INSERT ON chunks BEGIN
            INSERT INTO chunks_fts(rowid, text, heading, fields) VALUES (new.id, new.text, new.heading, new.fields);
        END"""
    )
    conn.execute(
        """CREATE TRIGGER chunks_fts_ad AFTER DELETE ON chunks BEGIN
            INSERT INTO chunks_fts(chunks_fts, rowid, text, heading, fields)
            VALUES ('delete', old.id, old.text, old.heading, old.fields);
        END"""
    )
    conn.execute(
        """CREATE TRIGGER chunks_fts_au AFTER UPDATE ON chunks BEGIN
            INSERT INTO chunks_fts(chunks_fts, rowid, text, heading, fields)
            VALUES ('delete', old.id, old.text, old.heading, old.fields);
            INSERT INTO chunks_fts(rowid, text, heading, fields) VALUES (new.id, new.text, new.heading, new.fields);
        END"""
    )
    conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild')")  # existing chunks: fields filled on re-ingest


def migrate(conn: Connection, path: Path, transaction: Callable) -> None:
    """Apply the migrations ``conn`` lacks, each in ``transaction(conn)`` (store's BEGIN IMMEDIATE)."""
    if conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS):
        return  # the usual case, without the write lock: `kb list` must not wait for a running ingest
    while True:
        # Re-read the version inside the write lock: two processes may open a new KB at the same moment.
        with transaction(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise UserError(f"{path} was written by a newer nomoat (schema {version}); upgrade nomoat")
            if version == len(MIGRATIONS):
                return
            MIGRATIONS[version](conn)
            conn.execute(f"PRAGMA user_version = {version + 1}")


# --- meta and vectors -------------------------------------------------------------------------------------------
def get_meta(conn: Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else row[0]


def set_meta(conn: Connection, key: str, value: str) -> None:
    sql = "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"
    conn.execute(sql, (key, value))


def embedder_of(conn: Connection) -> tuple[str, int] | None:
    """``(name, dim)`` of the embedder this KB's vectors were made with, or None before the first vector."""
    name, dim = get_meta(conn, "embedder"), get_meta(conn, "embedder_dim")
    return None if name is None or dim is None else (name, int(dim))


def create_vector_tables(conn: Connection, dim: int) -> None:
    bits = -(-int(dim) // 8) * 8  # vec0 bit vectors are whole bytes; np.packbits pads the same way
    conn.execute("CREATE TABLE chunk_vectors (id INTEGER PRIMARY KEY, embedding BLOB NOT NULL)")
    conn.execute(f"CREATE VIRTUAL TABLE chunks_vec USING vec0(embedding bit[{bits}])")
    conn.execute(
        """CREATE TRIGGER chunks_vec_ad AFTER DELETE ON chunks BEGIN
            DELETE FROM chunks_vec WHERE rowid = old.id;
            DELETE FROM chunk_vectors WHERE id = old.id;
        END"""
    )


def insert_vectors(conn: Connection, chunk_ids: Sequence[int], vectors: np.ndarray) -> None:
    signs = np.packbits(vectors > 0, axis=1)
    conn.executemany(
        "INSERT INTO chunk_vectors(id, embedding) VALUES (?, ?)",
        ((int(i), v.tobytes()) for i, v in zip(chunk_ids, vectors, strict=True)),
    )
    conn.executemany(
        "INSERT INTO chunks_vec(rowid, embedding) VALUES (?, vec_bit(?))",
        ((int(i), b.tobytes()) for i, b in zip(chunk_ids, signs, strict=True)),
    )
