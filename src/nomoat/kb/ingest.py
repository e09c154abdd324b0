"""Files → knowledge base: walk, diff against the KB, read, chunk, embed, commit; incremental and resumable.

Per file, in order (the first that applies decides):

1. size and mtime_ns equal to the stored row → unchanged (not even read; a failed file stays failed until it
   changes, and is listed in ``failed`` again with its stored reason);
2. larger than ``IngestConfig.max_file_bytes`` → failed;
3. same sha256 as the stored done row → unchanged (only the new stat is remembered, so next time is step 1);
4. read under a wall-clock limit and handed to :class:`nomoat.kb.indexer.Indexer`, which masks what is not
   content, chunks, embeds and commits the whole document in one transaction.

After ``kill -9`` at any moment the KB holds whole documents only, and the next run redoes just the ones that
were not committed. Documents under a named folder whose file is gone are removed; then documents whose masked
lines changed (what repeats across the KB moved) are re-chunked.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nomoat.config import IngestConfig
from nomoat.errors import UserError
from nomoat.kb import store
from nomoat.kb.indexer import Indexer, Read, read
from nomoat.kb.readers import supported
from nomoat.kb.readers.text import human_size
from nomoat.paths import home, kb_path

if TYPE_CHECKING:
    from nomoat.kb.embeddings import Embedder


def run(
    paths: Sequence[str | Path],
    kb: str = "default",
    *,
    embedder: Embedder | None = None,
    progress: bool = True,
    config: IngestConfig | None = None,
) -> dict[str, Any]:
    """Bring knowledge base ``kb`` up to date with the files under ``paths`` (files or folders).

    Returns ``{"added", "updated", "unchanged", "removed", "failed": [{"path", "error"}], "chunks", "skipped",
    "incomplete": [{"path", "error"}]}``: counts of files; ``removed`` counts documents dropped because their file
    is gone; ``chunks`` is the number of chunks written by this run (for added and updated files); ``skipped``
    counts files found in folders whose type nomoat does not read (a file named explicitly is tried anyway, and
    lands in ``failed`` if unreadable); ``incomplete`` lists parts of ingested files that could not be read
    ("page 7: OCR timed out after 60 s").
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
    counts: dict[str, Any] = {"added": 0, "updated": 0, "unchanged": 0, "removed": 0, "failed": [], "chunks": 0,
                              "boilerplate_lines": 0, "recleaned": 0, "incomplete": []}  # fmt: skip
    with store.kb_lock(kb), store.connect(kb, create=True) as conn:
        state = Indexer(conn, config, embedder, counts)
        if embedder is not None:
            state.use_embedder(embedder)  # re-embed now if the caller asked for another embedder
        _ingest_files(state, files, kb, progress)
        counts["removed"] = _remove_gone(conn, folders, {str(f) for f in files})
        state.refresh(lambda path: _unchanged(conn, Path(path)))
    counts["skipped"] = skipped
    return counts


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
def _ingest_files(state: Indexer, files: Sequence[Path], kb: str, progress: bool) -> None:
    from tqdm import tqdm  # lazy: only a run with files to look at needs it

    show = progress and sys.stderr.isatty()
    with tqdm(total=len(files), desc=f"ingest {kb}", unit="file", file=sys.stderr, disable=not show) as bar:
        for path in files:
            with _PageBar(path.name, show) as pages:
                _ingest_one(state, path, pages)
            bar.update(1)
        state.finish()


class _PageBar:
    """A second bar, under the files one, for a file whose pages or images are being OCR'd (seconds each)."""

    def __init__(self, name: str, show: bool) -> None:
        self.name, self.show, self.bar = name, show, None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=f"  OCR {self.name[:40]}", unit="page", file=sys.stderr,
                            disable=not self.show, leave=False, position=1)  # fmt: skip
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> _PageBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def _ingest_one(state: Indexer, path: Path, pages: _PageBar | None = None) -> None:
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
        return state.fail(record, "not a regular file")
    if st.st_size > cfg.max_file_bytes:
        return state.fail(record, f"too large: {human_size(st.st_size)} (limit {human_size(cfg.max_file_bytes)})")
    try:
        digest = _sha256(path)
    except OSError as exc:
        return state.fail(record, f"cannot read: {exc.strerror or exc}")
    record = store.DocumentRecord(str(path), st.st_size, st.st_mtime_ns, digest)
    if row is not None and row["status"] == "done" and row["sha256"] == digest:
        store.touch_document(state.conn, row["id"], st.st_size, st.st_mtime_ns)
        counts["unchanged"] += 1
        return
    doc = read(path, cfg, pages)
    if isinstance(doc, str):
        return state.fail(record, doc)
    counts["incomplete"] += [{"path": str(path), "error": problem} for problem in doc.problems]
    record = store.DocumentRecord(str(path), st.st_size, st.st_mtime_ns, digest, doc.kind, doc.title)
    state.add(Read(record, doc, row["id"] if row is not None and row["status"] == "done" else None))


def _unchanged(conn: store.Connection, path: Path) -> bool:
    """Whether ``path`` still holds what the KB recorded for it (its stat), so it may be re-chunked as is."""
    row = store.get_document(conn, str(path))
    try:
        st = path.stat()
    except OSError:
        return False
    return row is not None and (row["size"], row["mtime_ns"]) == (st.st_size, st.st_mtime_ns)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    # O_NONBLOCK + fstat: a FIFO swapped in since the stat must not block us.
    with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise OSError("not a regular file")
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def format_report(r: dict[str, Any]) -> str:
    """What ``nomoat ingest`` prints: the counts, then one line per failed file."""
    line = (
        f"{r['added']} added, {r['updated']} updated, {r['unchanged']} unchanged, {r['removed']} removed, "
        f"{len(r['failed'])} failed; {r['chunks']} chunks written"
    )
    if r.get("boilerplate_lines") or r.get("recleaned"):
        line += f"; {r['boilerplate_lines']} repeated lines masked"
        line += f", {r['recleaned']} documents re-chunked as what repeats changed" if r.get("recleaned") else ""
    failed = [f"  failed: {f['path']}: {f['error']}" for f in r["failed"]]
    incomplete = [f"  not read: {f['path']}: {f['error']}" for f in r.get("incomplete", ())]
    return "\n".join([line, *failed, *incomplete])
