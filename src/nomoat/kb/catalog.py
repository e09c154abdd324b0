"""Whole knowledge bases: list them, describe one, remove one (``nomoat kb``). Each is one SQLite file of
:mod:`nomoat.kb.store` under ``$NOMOAT_HOME/kb``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from nomoat import paths
from nomoat.errors import UserError
from nomoat.kb import queryenc
from nomoat.kb.schema import Connection, embedder_of, get_meta, set_meta
from nomoat.kb.store import connect, kb_lock, transaction


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
        # a stray file that is not a KB (or has a bad name) is not listed
        with contextlib.suppress(UserError), connect(paths.check_name(file.stem)) as conn:
            found.append(_stats(conn, file.stem))
    return found


def kb_info(name: str) -> dict[str, Any]:
    """``{"name", "documents", "chunks", "failed": [{"path", "error"}], "embedder", "dim", "path", "bytes", ...}``.

    Raises UserError for an unknown KB.
    """
    with connect(name) as conn:
        info = _stats(conn, name)
        failed = conn.execute("SELECT path, error FROM documents WHERE status = 'failed' ORDER BY path")
        info["failed"] = [{"path": r[0], "error": r[1]} for r in failed]
        emb = embedder_of(conn)
        info["embedder"], info["dim"] = emb if emb else (None, None)
        info["created_at"] = get_meta(conn, "created_at")
        info["schema"] = conn.execute("PRAGMA user_version").fetchone()[0]
        info["learned_model"] = get_meta(conn, "learned_model")
        info["query_encoder"] = queryenc.describe(queryenc.record(conn)) or "stock (run `nomoat kb adapt` to adapt it)"
    return info


def set_learned_model(name: str, model: str) -> None:
    """Record ``model`` (a GGUF ``nomoat learn`` made from this KB) as the one ask/chat/serve use on it."""
    with connect(name) as conn, transaction(conn):
        set_meta(conn, "learned_model", str(model))


def learned_model(name: str | None) -> str | None:
    """The model ``nomoat learn`` recorded for knowledge base ``name``, if the KB and the file both exist."""
    if not name or not paths.kb_path(name).exists():
        return None
    with connect(name) as conn:
        model = get_meta(conn, "learned_model")
    return model if model and Path(model).is_file() else None


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
    queryenc.remove_unused(name)
    with contextlib.suppress(FileNotFoundError):
        path.with_suffix(".lock").unlink()
    return str(path)


def names() -> list[str]:
    """Names of the knowledge bases under NOMOAT_HOME, from the folder listing (nothing a request sends)."""
    folder = paths.kb_dir()
    return sorted(p.stem for p in folder.glob("*.sqlite")) if folder.is_dir() else []


def format_kbs(kbs: list[dict[str, Any]]) -> str:
    """What ``nomoat kb list`` prints."""
    if not kbs:
        return "no knowledge bases yet: nomoat ingest PATH"
    return "\n".join(f"{k['name']:20} {k['documents']:7} docs {k['chunks']:8} chunks  {k['path']}" for k in kbs)


def format_kb_info(info: dict[str, Any]) -> str:
    """What ``nomoat kb info`` prints: one ``key: value`` line each, failed files last."""
    lines = [f"{k}: {v}" for k, v in info.items() if k != "failed"]
    lines += [f"failed: {f['path']}: {f['error']}" for f in info.get("failed", [])]
    return "\n".join(lines)
