"""ingest.py: counts across runs, skipping, limits, symlinks, hostile files, and crash safety under SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import nomoat
from fakes import FakeEmbedder
from nomoat.config import IngestConfig
from nomoat.errors import UserError
from nomoat.kb import catalog, indexer, ingest, store

TESTS = Path(__file__).resolve().parent


class Counting:
    """Wraps an embedder and counts the texts it embeds (to prove finished documents are not re-embedded)."""

    def __init__(self, inner=None, name: str | None = None):
        self.inner = inner or FakeEmbedder()
        self.name = name or self.inner.name
        self.dim = self.inner.dim
        self.calls = 0
        self.texts = 0

    def embed(self, texts):
        self.calls += 1
        self.texts += len(texts)
        return self.inner.embed(texts)


def _write(path: Path, text: str, bump_mtime: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.stat().st_mtime_ns if path.exists() else None
    path.write_text(text)
    if bump_mtime and old is not None:  # never rely on the clock's granularity to see an edit
        os.utime(path, ns=(old + 10**9, old + 10**9))
    return path


def _para(seed: int, n: int = 3) -> str:
    rnd = random.Random(seed)
    words = ["apple", "river", "stone", "cloud", "engine", "garden", "violin", "planet", "copper", "lantern"]
    return "\n\n".join(" ".join(rnd.choice(words) for _ in range(40)) + f" marker{seed}x{i}." for i in range(n))


def _run(root, **kw):
    kw.setdefault("embedder", Counting())
    kw.setdefault("progress", False)
    return ingest.run([root], "t", **kw)


def _kb_rows(kb: str = "t"):
    conn = store.open_kb(kb, create=False)
    try:
        assert store.verify(conn) == []
        docs = {r["path"]: r["status"] for r in conn.execute("SELECT path, status FROM documents")}
        n_chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        return docs, n_chunks
    finally:
        conn.close()


def test_counts_across_runs_edit_touch_delete_add(tmp_path, monkeypatch):
    root = tmp_path / "notes"
    a, b, c = _write(root / "a.txt", _para(1)), _write(root / "b.md", _para(2)), _write(root / "sub/c.txt", _para(3))
    first = _run(root)
    assert (first["added"], first["updated"], first["unchanged"], first["removed"], first["failed"]) == (3, 0, 0, 0, [])
    docs, n_chunks = _kb_rows()
    assert set(docs) == {str(a), str(b), str(c)} and first["chunks"] == n_chunks > 0

    emb = Counting()
    again = _run(root, embedder=emb)
    assert (again["unchanged"], again["added"], again["chunks"], emb.texts) == (3, 0, 0, 0)

    _write(a, _para(10))  # edited
    b.unlink()  # deleted
    os.utime(c, ns=(1, 1))  # touched, same bytes: hashed, found equal, not re-read
    emb = Counting()
    third = _run(root, embedder=emb)
    assert {k: third[k] for k in ("added", "updated", "unchanged", "removed")} == dict(
        added=0, updated=1, unchanged=1, removed=1
    )
    assert emb.texts == third["chunks"] > 0
    docs, _ = _kb_rows()
    assert set(docs) == {str(a), str(c)}

    _write(root / "d.txt", _para(4))
    fourth = _run(root)
    assert (fourth["added"], fourth["unchanged"]) == (1, 2)
    # The touch above was remembered: an unchanged stat is enough, no file is hashed (or read) again.
    monkeypatch.setattr(ingest, "_sha256", lambda path: pytest.fail(f"hashed {path}"))
    fifth = _run(root, embedder=(emb := Counting()))
    assert (fifth["unchanged"], emb.calls) == (3, 0)


def test_unchanged_rerun_never_loads_an_embedder(tmp_path, monkeypatch):
    root = tmp_path / "notes"
    _write(root / "a.txt", _para(1))
    _run(root)
    monkeypatch.setattr(indexer, "_load_embedder", lambda name: pytest.fail("loaded an embedder"))
    assert ingest.run([root], "t", progress=False)["unchanged"] == 1


def test_recorded_embedder_is_used_when_none_is_given(tmp_path, monkeypatch):
    root = tmp_path / "notes"
    _write(root / "a.txt", _para(1))
    _run(root)
    _write(root / "b.txt", _para(2))
    asked = []
    monkeypatch.setattr(indexer, "_load_embedder", lambda name: asked.append(name) or FakeEmbedder())
    assert ingest.run([root], "t", progress=False)["added"] == 1
    assert asked == [FakeEmbedder().name]


def test_small_documents_share_embedder_calls(tmp_path):
    root = tmp_path / "notes"
    for i in range(12):
        _write(root / f"f{i:02}.txt", f"short note number {i}")
    emb = Counting()
    result = _run(root, embedder=emb)
    assert result["added"] == 12 and emb.calls == 1


def test_another_embedder_re_embeds_every_chunk(tmp_path):
    root = tmp_path / "notes"
    _write(root / "a.txt", _para(1))
    _write(root / "b.txt", _para(2))
    first = _run(root)
    other = Counting(name="other-fake@2")
    again = _run(root, embedder=other)
    assert again["unchanged"] == 2 and other.texts == first["chunks"]
    conn = store.open_kb("t")
    assert store.embedder_of(conn) == ("other-fake@2", other.dim)
    assert store.verify(conn) == []
    conn.close()


def test_failed_files_are_recorded_and_the_batch_goes_on(tmp_path, monkeypatch):
    root = tmp_path / "notes"
    _write(root / "good.txt", _para(1))
    _write(root / "loop.txt", "this one makes the parser spin")
    _write(root / "big.txt", "x" * 5000)
    _write(root / "boom.txt", "the reader has a bug")
    real = indexer.read_file

    def reader(path, **kw):
        if path.name == "loop.txt":
            while True:
                pass
        if path.name == "boom.txt":
            raise IndexError("list index out of range")
        return real(path, **kw)

    monkeypatch.setattr(indexer, "read_file", reader)
    result = _run(root, config=IngestConfig(file_timeout_s=0.3, max_file_bytes=4000))
    reasons = {Path(f["path"]).name: f["error"] for f in result["failed"]}
    assert reasons == {
        "loop.txt": "timed out after 0.3 s",
        "big.txt": "too large: 5.0 KB (limit 4.0 KB)",
        "boom.txt": "internal error: IndexError: list index out of range",
    }
    assert result["added"] == 1
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no alarm left armed after the run
    # An unchanged failed file is reported again from the KB, not re-read.
    monkeypatch.setattr(indexer, "read_file", lambda path, **kw: pytest.fail(f"re-read {path}"))
    again = _run(root, config=IngestConfig(file_timeout_s=0.3, max_file_bytes=4000))
    assert {Path(f["path"]).name: f["error"] for f in again["failed"]} == reasons
    info = catalog.kb_info("t")
    assert info["documents"] == 1 and len(info["failed"]) == 3


def test_hostile_folder_fails_each_bad_file_with_a_reason(tmp_path):
    hostile = pytest.importorskip("hostile_files")
    root = tmp_path / "hostile"
    root.mkdir()
    expected = hostile.make_hostile_folder(root)
    _write(root / "fine.txt", _para(1))
    os.mkfifo(root / "pipe.txt")  # a reader that opened it blocking would hang the run
    expected["pipe.txt"] = "not a regular file"
    result = _run(root, config=IngestConfig(file_timeout_s=10))
    reasons = {Path(f["path"]).name: f["error"] for f in result["failed"]}
    for name, keyword in expected.items():
        assert name in reasons, f"{name} not in failed: {result}"
        assert keyword.lower() in reasons[name].lower(), (name, reasons[name])
    assert result["added"] >= 1
    _kb_rows()


def test_symlinks_leaving_the_roots_hidden_dirs_and_home_are_not_followed(tmp_path, monkeypatch):
    root, outside = tmp_path / "notes", tmp_path / "outside"
    _write(root / "a.txt", _para(1))
    _write(outside / "secret.txt", "secret outside the root")
    _write(outside / "dir/deep.txt", "deep secret outside the root")
    (root / "escape.txt").symlink_to(outside / "secret.txt")
    (root / "escape_dir").symlink_to(outside / "dir", target_is_directory=True)
    (root / "alias.txt").symlink_to(root / "a.txt")  # stays inside: same file, ingested once
    _write(root / ".git/config.txt", "hidden")
    _write(root / "node_modules/x.txt", "skipped dir")
    monkeypatch.setenv("NOMOAT_HOME", str(root / "state"))  # the KB lives inside the folder being ingested
    _write(root / "state/notes.txt", "nomoat's own files")
    result = _run(root)
    assert (result["added"], result["failed"]) == (1, [])
    docs, _ = _kb_rows()
    assert list(docs) == [str((root / "a.txt").resolve())]


def test_reingesting_a_subfolder_removes_only_under_it(tmp_path):
    root = tmp_path / "notes"
    _write(root / "sub/a.txt", _para(1))
    other = _write(root / "other/b.txt", _para(2))
    _run(root)
    other.unlink()
    _write(root / "sub/c.txt", _para(3))
    result = _run(root / "sub")
    assert (result["added"], result["unchanged"], result["removed"]) == (1, 1, 0)
    assert str(other) in _kb_rows()[0]  # gone from disk, but its folder was not named this time
    assert _run(root)["removed"] == 1


def test_user_mistakes_are_one_line_user_errors(tmp_path, nomoat_home):
    with pytest.raises(UserError, match="no such file or folder"):
        _run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "empty/.hidden.txt", "x")
    with pytest.raises(UserError, match="nothing to ingest"):
        _run(tmp_path / "empty")
    assert not (nomoat_home / "kb/t.sqlite").exists()  # a mistake leaves no empty KB behind
    with pytest.raises(UserError, match="invalid knowledge base name"):
        ingest.run([tmp_path], "../x", embedder=FakeEmbedder(), progress=False)


def test_emptied_folder_removes_its_documents(tmp_path):
    root = tmp_path / "notes"
    a = _write(root / "a.txt", _para(1))
    _run(root)
    a.unlink()
    assert _run(root)["removed"] == 1


def test_package_level_call_and_string_path(tmp_path):
    root = _write(tmp_path / "notes/a.txt", _para(1)).parent
    result = nomoat.ingest(str(root), kb="t", embedder=FakeEmbedder(), progress=False)
    assert result["added"] == 1 and isinstance(result["chunks"], int)


# --- crash safety -----------------------------------------------------------------------------------------------------
_CHILD = """
import json, os, sys, time
from fakes import FakeEmbedder
import nomoat.kb.ingest
from nomoat.kb import store
from nomoat.config import IngestConfig

class Logged(FakeEmbedder):
    def embed(self, texts):
        time.sleep(0.01)  # slow enough that kills land between commits
        fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, f"{len(texts)}\\n".encode())
        os.close(fd)
        return super().embed(texts)

put_vectors = store.put_vectors
def slow_put_vectors(*args):  # ... and inside them: chunks and FTS rows written, vectors and COMMIT not yet
    time.sleep(0.005)
    put_vectors(*args)
store.put_vectors = slow_put_vectors

print("ready", flush=True)
config = IngestConfig(embed_batch=8)
result = nomoat.kb.ingest.run([sys.argv[1]], "crash", embedder=Logged(), progress=False, config=config)
print(json.dumps(result))
"""


def _child(corpus: Path, log: Path) -> subprocess.Popen:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent / "src"), os.environ.get("PYTHONPATH", "")]),
    )
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(corpus), str(log)], env=env, stdout=subprocess.PIPE)


def _check_after_crash(kb: str) -> None:
    conn = store.open_kb(kb, create=False)
    try:
        assert store.verify(conn) == []  # integrity_check ok, FTS == vectors == chunks, done docs whole
    finally:
        conn.close()


@pytest.mark.integration  # ~25 s on 2 shared cores: 20+ fresh interpreters
def test_sigkill_at_random_points_then_resume(tmp_path, nomoat_home):
    corpus = tmp_path / "corpus"
    for i in range(60):
        _write(corpus / f"d{i // 10}/f{i:02}.md", f"# Note {i}\n\n" + _para(i, n=2 + i % 4))
    rnd = random.Random(1234)
    kills = rounds = 0
    while kills < 20 and rounds < 60:
        rounds += 1
        for i in rnd.sample(range(60), 12):  # edits between runs: kills also land in updates, every run has work
            _write(corpus / f"d{i // 10}/f{i:02}.md", f"# Note {i} v{rounds}\n\n" + _para(1000 * rounds + i, n=3))
        proc = _child(corpus, tmp_path / "embed.log")
        assert proc.stdout.readline() == b"ready\n"  # imports done: the kill lands inside run()
        time.sleep(rnd.uniform(0.0, 0.5))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if (nomoat_home / "kb/crash.sqlite").exists():
            _check_after_crash("crash")
    assert kills >= 20

    conn = store.open_kb("crash", create=False)
    finished = {r[0]: r[1] for r in conn.execute("SELECT path, n_chunks FROM documents WHERE status = 'done'")}
    current = {p: n for p, n in finished.items() if store.get_document(conn, p)["sha256"] == ingest._sha256(Path(p))}
    conn.close()
    log = tmp_path / "final.log"
    proc = _child(corpus, log)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    result = json.loads(out.decode().removeprefix("ready\n"))
    embedded = sum(int(n) for n in log.read_text().split()) if log.exists() else 0
    assert result["failed"] == []
    assert result["unchanged"] == len(current), (result, len(current))
    assert result["added"] + result["updated"] + result["unchanged"] == 60
    assert embedded == result["chunks"]  # only unfinished documents were embedded
    _check_after_crash("crash")

    # The resumed KB holds exactly what one clean run produces: no duplicates, nothing missing.
    clean = ingest.run([corpus], "clean", embedder=FakeEmbedder(), progress=False)
    assert clean["added"] == 60

    def content(kb):
        conn = store.open_kb(kb, create=False)
        try:
            sql = "SELECT d.path, c.ord, c.text FROM chunks c JOIN documents d ON d.id = c.doc_id ORDER BY 1, 2"
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    assert [tuple(r) for r in content("crash")] == [tuple(r) for r in content("clean")]
