"""A knowledge base's own query encoder (``nomoat kb adapt``): its record in the KB, its files, loading it.

The record is one ``meta`` row (JSON): the folder next to the KB's file, the sha256 of its ``model.onnx``, the
document embedder it was trained against and the held-out numbers that earned it its place. It is honoured only
while the KB's vectors still come from that embedder (``store.set_embedder`` drops it when they change), so a
question's vector and the chunks' vectors always belong together.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nomoat import paths
from nomoat.errors import UserError
from nomoat.kb.schema import Connection, embedder_of, get_meta, set_meta

if TYPE_CHECKING:
    from nomoat.kb.embeddings import Embedder

KEY = "query_encoder"
_warned: set[str] = set()


def folder(kb: str, sha256: str) -> Path:
    """Where the encoder with this model hash lives: ``$NOMOAT_HOME/kb/<kb>.query-<sha16>/``."""
    return paths.kb_dir() / f"{kb}.query-{sha256[:16]}"


def folders(kb: str) -> list[Path]:
    """Every query-encoder folder of ``kb`` on disk (the recorded one and any a killed run left)."""
    return sorted(p for p in paths.kb_dir().glob(f"{kb}.query-*") if p.is_dir())


def record(conn: Connection) -> dict[str, Any] | None:
    """The KB's query-encoder record, or None (none made, or made for vectors the KB no longer has)."""
    raw, info = get_meta(conn, KEY), embedder_of(conn)
    if raw is None or info is None:
        return None
    rec = json.loads(raw)
    return rec if rec.get("for") == info[0] else None


def set_record(conn: Connection, rec: dict[str, Any]) -> None:
    """Make ``rec`` the KB's query encoder. Call inside ``store.transaction()``."""
    set_meta(conn, KEY, json.dumps(rec, sort_keys=True))


def clear(conn: Connection) -> None:
    """Forget the query encoder (the folders are removed by :func:`remove_unused`). Inside a transaction."""
    conn.execute("DELETE FROM meta WHERE key = ?", (KEY,))


def remove_unused(kb: str, keep: Path | None = None) -> None:
    """Delete ``kb``'s query-encoder folders other than ``keep``."""
    for f in folders(kb):
        if f != keep:
            shutil.rmtree(f, ignore_errors=True)


def load(kb: str, conn: Connection) -> Embedder | None:
    """The KB's query encoder, loaded once per process; None without one. A missing or altered folder is said
    once on stderr and search goes on with the stock encoder (the KB's vectors are untouched either way)."""
    rec = record(conn)
    if rec is None:
        return None
    from nomoat.kb.embeddings import load_folder

    try:
        return load_folder(folder(kb, rec["sha256"]), rec["sha256"], rec["name"])
    except UserError as exc:
        if kb not in _warned:
            _warned.add(kb)
            print(f"nomoat: {exc}; searching with the stock encoder", file=sys.stderr)
        return None


def describe(rec: dict[str, Any] | None) -> str | None:
    """One line for ``kb info``: which encoder, and what it gained on held-out documents."""
    if rec is None:
        return None
    before, after = rec["held_out"]["before"], rec["held_out"]["after"]
    return (f"adapted ({rec['sha256'][:12]}, {rec['made_at']}): held-out recall@5 {before['recall@5']:.2f} -> "
            f"{after['recall@5']:.2f}, recall@1 {before['recall@1']:.2f} -> {after['recall@1']:.2f}")  # fmt: skip
