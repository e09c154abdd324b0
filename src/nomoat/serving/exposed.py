"""Which knowledge bases a server shows, and how their sources are named in replies.

A server exposes only the knowledge bases it was started with (``--kb``, repeatable; default: the default one),
never every one under ``NOMOAT_HOME``: whoever holds its key reads those and no others. And a reply names a
source by its path below the folder that was ingested (``notes/office.md``), not by its absolute path, which
would tell a client the server's user name and folder layout. The ingested folder is the longest common folder
of the knowledge base's documents: SQLite finds it from the first and last path in order (their common prefix is
every path's), so it costs two index lookups, not a scan.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from nomoat.kb import catalog
from nomoat.serving.schemas import BadRequest


class Exposed:
    """The knowledge bases a server serves: ``rag`` (behind ``nomoat-rag``) first, then the others."""

    def __init__(self, rag: str, others: Iterable[str] = ()) -> None:
        self.rag = rag
        self.names = tuple(dict.fromkeys([rag, *others]))

    def available(self) -> list[str]:
        """Served names that exist now (a knowledge base may be ingested after the server started)."""
        present = set(catalog.names())
        return [n for n in self.names if n in present]

    def check(self, name: str, param: str = "model") -> str:
        """``name`` if it is served and exists, else BadRequest (404)."""
        if name not in self.names:
            raise BadRequest(f"no knowledge base {name[:80]!r} is served here (see GET /v1/models)", param, 404)
        if name not in catalog.names():
            raise BadRequest(f"no knowledge base {name!r} yet: run `nomoat ingest PATH --kb {name}`", param, 404)
        return name

    def retriever(self, base: Callable[..., list[dict[str, Any]]] | None) -> Callable[..., list[dict[str, Any]]]:
        """``retrieve(query, kb=, k=)`` whose hits name their documents relative to the ingested folder, so
        neither the prompt nor the citations carry absolute paths."""

        def retrieve(query: str, kb: str = "default", k: int = 5) -> list[dict[str, Any]]:
            search = base
            if search is None:
                from nomoat.kb import retrieval

                search = retrieval.search
            hits = search(query, kb=kb, k=k)
            root = ingested_root(kb)
            return [{**hit, "path": relative(str(hit.get("path", "")), root)} for hit in hits]

        return retrieve


def ingested_root(kb: str) -> str:
    """The folder the knowledge base's documents were ingested from ("" when it has none)."""
    from nomoat.kb import store

    try:
        with store.connect(kb) as conn:
            first, last = conn.execute("SELECT min(path), max(path) FROM documents").fetchone()
    except Exception:  # an empty or unreadable file: paths are then cut to their file names
        return ""
    if not first:
        return ""
    if first == last:
        return os.path.dirname(first)
    common = os.path.commonprefix([first, last])  # noqa: RUF071 (by character: only that bounds all paths between)
    return common[: common.rfind(os.sep)] if os.sep in common else ""


def relative(path: str, root: str) -> str:
    """``path`` below ``root``; an absolute path outside it is cut to its file name; a relative one is kept."""
    if root and path.startswith(root.rstrip(os.sep) + os.sep):
        return path[len(root.rstrip(os.sep)) + 1 :]
    if os.path.isabs(path) or (len(path) > 2 and path[1] == ":" and path[2] in "\\/"):
        return os.path.basename(path.replace("\\", "/"))
    return path


def chunk_view(kb: str, chunk_id: int) -> dict[str, Any] | None:
    """The cited chunk for the UI: its text, location, heading and relative path; None if there is none."""
    from nomoat.kb import store

    with store.connect(kb) as conn:
        row = store.get_chunks(conn, [chunk_id]).get(chunk_id)
    if row is None:
        return None
    view = {"chunk_id": chunk_id, **{k: row[k] for k in ("text", "location", "heading")}}
    view["path"] = relative(row["path"], ingested_root(kb))
    return view
