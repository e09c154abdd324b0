"""store.py: schema, migrations, the one-transaction document writes, and the row-count invariants."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from nomoat.errors import UserError
from nomoat.kb import catalog, schema, store


@dataclass(frozen=True)
class C:
    text: str
    start: int = 0
    end: int = 0
    location: str = "lines 1-2"
    heading: str = ""


def _doc(path: str, sha: str = "h") -> store.DocumentRecord:
    return store.DocumentRecord(path=path, size=10, mtime_ns=1, sha256=sha, kind="txt", title="t")


def _vecs(n: int, dim: int = 4, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).random((n, dim), dtype=np.float32) + 0.01
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _counts(conn) -> tuple[int, int, int]:
    exact = conn.execute("SELECT count(*) FROM chunk_vectors").fetchone()[0]
    bits = conn.execute("SELECT count(*) FROM chunks_vec").fetchone()[0]
    assert exact == bits, "exact vectors and their sign-bit index must stay equal"
    return (
        conn.execute("SELECT count(*) FROM chunks").fetchone()[0],
        conn.execute("SELECT count(*) FROM chunks_fts_docsize").fetchone()[0],
        bits,
    )


@pytest.fixture
def kb():
    conn = store.open_kb("t")
    with store.transaction(conn):
        store.set_embedder(conn, "fake@1", 4)
    yield conn
    conn.close()


def test_open_creates_wal_schema_and_is_idempotent(nomoat_home):
    conn = store.open_kb("t")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(schema.MIGRATIONS)
    conn.close()
    store.open_kb("t").close()  # migrations are not re-applied ("table already exists" would raise)
    assert (nomoat_home / "kb" / "t.sqlite").exists()


def test_unknown_kb_and_bad_names_are_user_errors():
    with pytest.raises(UserError, match=r"no knowledge base 'nope'.*nomoat ingest"):
        store.open_kb("nope", create=False)
    with pytest.raises(UserError, match="invalid knowledge base name"):
        store.open_kb("../escape")
    with pytest.raises(UserError, match="no knowledge base 'nope'"):
        catalog.remove_kb("nope")
    with pytest.raises(UserError):
        catalog.kb_info("nope")


def test_newer_schema_and_non_sqlite_file_are_user_errors(nomoat_home):
    conn = store.open_kb("t")
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    with pytest.raises(UserError, match="newer nomoat"):
        store.open_kb("t")
    (nomoat_home / "kb" / "junk.sqlite").write_bytes(b"not a database" * 100)
    with pytest.raises(UserError, match="not a usable nomoat knowledge base"):
        store.open_kb("junk")
    assert [k["name"] for k in catalog.list_kbs()] == []  # neither the future KB nor junk is listed


def test_write_replace_delete_keep_fts_and_vectors_equal_to_chunks(kb):
    a = store.write_document(kb, _doc("/x/a.txt"), [C("alpha one"), C("alpha two")], _vecs(2))
    store.write_document(kb, _doc("/x/b.txt"), [C("beta")], _vecs(1))
    assert _counts(kb) == (3, 3, 3)
    # Replacing keeps the document id and swaps all rows at once.
    assert store.write_document(kb, _doc("/x/a.txt", "h2"), [C("gamma")], _vecs(1, seed=1)) == a
    assert _counts(kb) == (2, 2, 2)
    assert store.fts_search(kb, '"alpha"', 10) == []
    assert len(store.fts_search(kb, '"gamma"', 10)) == 1
    # Cascaded deletes fire the chunk triggers, so FTS rows and vectors go too.
    store.delete_documents(kb, [a])
    assert _counts(kb) == (1, 1, 1)
    assert store.verify(kb) == []


def test_chunk_ids_are_never_reused(kb):
    store.write_document(kb, _doc("/x/a.txt"), [C("one"), C("two")], _vecs(2))
    first = {r[0] for r in kb.execute("SELECT id FROM chunks")}
    store.write_document(kb, _doc("/x/a.txt"), [C("one"), C("two")], _vecs(2))
    assert first.isdisjoint({r[0] for r in kb.execute("SELECT id FROM chunks")})


def test_failed_write_leaves_the_old_document_whole(kb):
    store.write_document(kb, _doc("/x/a.txt"), [C("old")], _vecs(1))
    with pytest.raises(ValueError):  # wrong vector count: raised inside the transaction
        store.write_document(kb, _doc("/x/a.txt"), [C("new 1"), C("new 2")], _vecs(3))
    assert [r[0] for r in kb.execute("SELECT text FROM chunks")] == ["old"]
    assert store.verify(kb) == []


def test_mark_failed_drops_old_chunks_and_shows_in_info(kb):
    store.write_document(kb, _doc("/x/a.txt"), [C("old")], _vecs(1))
    store.mark_failed(kb, _doc("/x/a.txt"), "binary file")
    assert _counts(kb) == (0, 0, 0)
    info = catalog.kb_info("t")
    assert info["failed"] == [{"path": "/x/a.txt", "error": "binary file"}]
    assert (info["documents"], info["chunks"], info["embedder"], info["dim"]) == (0, 0, "fake@1", 4)


def test_changing_embedder_resets_vectors_in_one_transaction(kb):
    store.write_document(kb, _doc("/x/a.txt"), [C("one"), C("two")], _vecs(2))
    with store.transaction(kb):
        store.set_embedder(kb, "other@1", 3)
        ids = [i for i, _ in store.all_chunk_texts(kb)]
        store.put_vectors(kb, ids, _vecs(2, dim=3))
    assert store.embedder_of(kb) == ("other@1", 3)
    assert store.verify(kb) == []
    store.delete_documents(kb, [kb.execute("SELECT id FROM documents").fetchone()[0]])  # new trigger works
    assert _counts(kb) == (0, 0, 0)


def test_documents_under_is_a_path_prefix_not_a_like(kb):
    for p in ["/r/a.txt", "/r/sub/b.txt", "/r2/c.txt", "/r_x/d.txt", "/r%/e.txt"]:
        store.mark_failed(kb, _doc(p), "x")
    assert sorted(r["path"] for r in store.documents_under(kb, "/r")) == ["/r/a.txt", "/r/sub/b.txt"]
    assert [r["path"] for r in store.documents_under(kb, "/r%")] == ["/r%/e.txt"]


def test_vector_search_orders_by_cosine(kb):
    vecs = np.eye(4, dtype=np.float32)
    store.write_document(kb, _doc("/x/a.txt"), [C(f"c{i}") for i in range(4)], vecs)
    ids = store.vector_search(kb, np.array([0, 0, 1, 0.1], np.float32), 2)
    rows = store.get_chunks(kb, ids)
    assert [rows[i]["text"] for i in ids] == ["c2", "c3"]
    assert rows[ids[0]]["path"] == "/x/a.txt"


def test_vector_search_reranks_sign_bit_candidates_by_exact_cosine(kb):
    vecs = np.random.default_rng(3).standard_normal((300, 4)).astype(np.float32)
    store.write_document(kb, _doc("/x/many.txt"), [C(f"c{i}") for i in range(300)], vecs)
    query = vecs[17] + 0.01
    ids = store.vector_search(kb, query, 5)
    exact = store.cosines(kb, query, ids)
    assert store.get_chunks(kb, ids[:1])[ids[0]]["text"] == "c17"
    assert [exact[i] for i in ids] == sorted(exact.values(), reverse=True)
    want = float(vecs[17] @ query / np.linalg.norm(vecs[17]) / np.linalg.norm(query))
    assert exact[ids[0]] == pytest.approx(want, abs=1e-6)


def test_schema_1_float_vectors_migrate_to_exact_vectors_and_sign_bits(nomoat_home):
    import sqlean
    import sqlite_vec

    from nomoat import paths

    path = paths.kb_path("old")
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = sqlean.connect(str(path), isolation_level=None)
    raw.enable_load_extension(True)
    sqlite_vec.load(raw)
    schema.m001_initial(raw)  # the schema as released in version 1, with its float vec0 table
    raw.execute("INSERT INTO meta VALUES ('embedder', 'fake@1'), ('embedder_dim', '4')")
    raw.execute("CREATE VIRTUAL TABLE chunks_vec USING vec0(embedding float[4] distance_metric=cosine)")
    raw.execute(
        "INSERT INTO documents(path, size, mtime_ns, status, n_chunks, ingested_at) VALUES ('/a', 1, 1, 'done', 2, 0)"
    )
    vecs = _vecs(2)
    for i in (1, 2):
        raw.execute("INSERT INTO chunks(doc_id, ord, text, char_start, char_end) VALUES (1, ?, ?, 0, 1)", (i, f"c{i}"))
        raw.execute("INSERT INTO chunks_vec(rowid, embedding) VALUES (?, ?)", (i, vecs[i - 1].tobytes()))
    raw.execute("PRAGMA user_version = 1")
    raw.close()

    conn = store.open_kb("old", create=False)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(schema.MIGRATIONS)
    assert store.verify(conn) == [] and _counts(conn) == (2, 2, 2)
    assert store.cosines(conn, vecs[1], [1, 2])[2] == pytest.approx(1.0, abs=1e-6)
    assert store.vector_search(conn, vecs[0], 1) == [1]
    conn.close()


def test_list_info_remove(kb, nomoat_home):
    store.write_document(kb, _doc("/x/a.txt"), [C("one"), C("two")], _vecs(2))
    store.open_kb("other").close()
    listed = catalog.list_kbs()
    assert [(k["name"], k["documents"], k["chunks"]) for k in listed] == [("other", 0, 0), ("t", 1, 2)]
    assert all(k["bytes"] > 0 for k in listed)
    kb.close()
    removed = catalog.remove_kb("t")
    assert removed.endswith("t.sqlite")
    assert not list((nomoat_home / "kb").glob("t.sqlite*"))
    assert [k["name"] for k in catalog.list_kbs()] == ["other"]


def test_remove_refuses_while_an_ingest_holds_the_lock(kb):
    with store.kb_lock("t"), pytest.raises(UserError, match="another nomoat process"):
        catalog.remove_kb("t")
