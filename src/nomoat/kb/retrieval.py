"""Search a knowledge base: BM25 (FTS5) and vector KNN (sqlite-vec), fused by reciprocal rank fusion.

Vector search always returns neighbours; whether they answer a question is decided downstream
(:func:`nomoat.answer.rag.relevant`, from the hits' cosine and term coverage).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypedDict

from nomoat.config import DEFAULT_KB, SearchConfig
from nomoat.errors import UserError
from nomoat.kb import lexical, store

if TYPE_CHECKING:
    from nomoat.kb.embeddings import Embedder


class Hit(TypedDict):
    """One search result (``nomoat search --json`` prints a list of them)."""

    path: str
    """The file as ingested."""
    location: str
    """Human-readable place in it: "page 3", "lines 10-24", "§ Heading"."""
    score: float
    """The fused rank score (higher is better; it orders hits, it is not a probability)."""
    text: str
    chunk_id: int
    cosine: float | None
    """Cosine similarity of the chunk's vector to the query's (None while the KB has no vectors)."""


_WORD = re.compile(r"\w+")
_MAX_TERMS = 64  # a pasted page as the query should not become a 10,000-term OR
STOP_WORDS = frozenset(
    """a about after all also am an and any are as at be been before being but by can could did do does doing
    for from get got had has have having he her here hers him his how i if in into is it its just me more most my
    no nor not of off on once only or other our out over own same she should so some such than that the their
    them then there these they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours""".split()  # noqa: SIM905  (a list literal is 30 lines)
)


def fts_query(text: str) -> str:
    """User text → an FTS5 MATCH expression that cannot be a syntax error: quoted words joined by OR.

    Quoting makes ``AND``, ``NEAR``, ``*``, ``:`` and parentheses plain words; ``"`` never occurs inside a
    ``\\w+`` match, so a term cannot close its quotes. OR (not FTS5's implicit AND) because a natural-language
    question rarely has all its words in one chunk; BM25 ranks chunks matching more (and rarer) terms first.
    Returns "" when the text has no words.
    """
    words = [t.lower() for t in _WORD.findall(text)]
    # Stop words match nearly every chunk: they add nothing to BM25's order but make FTS5 visit every row
    # (34 -> 6 ms per query on 12k chunks). A query of nothing but stop words ("to be or not to be") keeps them.
    content = [t for t in words if t not in STOP_WORDS] or words
    terms = dict.fromkeys(content)  # de-duplicated, in order
    return " OR ".join(f'"{t}"' for t in list(terms)[:_MAX_TERMS])


def rrf(rankings: Sequence[Sequence[int]], k: int = 60) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: ``score(id) = sum over rankings of 1 / (k + rank)``, rank from 1. Best first."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


@functools.lru_cache(maxsize=2)
def _load(name: str) -> Embedder:
    from nomoat.kb.embeddings import load_embedder  # lazy, like every model load

    return load_embedder(name)  # cached: a server answering many queries loads the model once


def _cap_per_document(fused: list[tuple[int, float]], rows: dict[int, Any], cap: int) -> list[tuple[int, float]]:
    """``fused`` without the chunks past the ``cap``-th of their document (order kept; cap 0 keeps all)."""
    if cap < 1:
        return fused
    seen: dict[str, int] = {}
    kept = []
    for chunk_id, score in fused:
        row = rows.get(chunk_id)
        if row is None:
            continue
        seen[row["path"]] = seen.get(row["path"], 0) + 1
        if seen[row["path"]] <= cap:
            kept.append((chunk_id, score))
    return kept


def _query_embedder(recorded: tuple[str, int], given: Embedder | None) -> Embedder:
    """The KB's own embedder: vectors from any other model are not comparable with the stored ones."""
    if given is None:
        return _load(recorded[0])
    if (given.name, given.dim) != recorded:
        raise UserError(f"knowledge base was embedded with {recorded[0]}, not {given.name}; re-ingest to switch")
    return given


def search(
    query: str,
    kb: str = DEFAULT_KB,
    k: int | None = None,
    *,
    embedder: Embedder | None = None,
    config: SearchConfig | None = None,
) -> list[Hit]:
    """Top ``k`` chunks for ``query``: ``[{"path", "location", "score", "text", "chunk_id", "cosine"}]``, best first.

    ``score`` is the fused RRF score (higher is better; at most 2 / (rrf_k + 1)); ``cosine`` is the chunk's cosine
    similarity to the query's vector (None while the KB has no vectors), for relevance thresholds downstream,
    since RRF scores only rank. ``embedder`` is for tests:
    by default the KB's recorded embedder embeds the query. ``k`` defaults to ``SearchConfig.k``.
    Raises UserError for an unknown KB or k < 1.
    """
    config = config or SearchConfig()
    k = config.k if k is None else k
    if k < 1:
        raise UserError(f"k must be at least 1 (got {k})")
    with store.connect(kb) as conn:
        if not query.strip():
            return []
        n = max(config.candidates, k)
        rankings, cosine = [], {}
        if match := fts_query(query):
            rankings.append(lexical.fts_search(conn, match, n, common=config.common_terms))
        if recorded := store.embedder_of(conn):
            vector = _query_embedder(recorded, embedder).embed([query])[0]
            rankings.append(store.vector_search(conn, vector, n))
        fused = rrf(rankings, config.rrf_k)
        rows = store.get_chunks(conn, [i for i, _ in fused])
        fused = _cap_per_document(fused, rows, config.per_document)[:k]
        ids = [i for i, _ in fused]
        if recorded:
            cosine = store.cosines(conn, vector, ids)
    return [
        Hit(path=r["path"], location=r["location"], score=round(s, 6), text=r["text"], chunk_id=i,
            cosine=round(cosine[i], 6) if i in cosine else None)
        for i, s in fused
        if (r := rows.get(i)) is not None
    ]  # fmt: skip


def format_hits(hits: list[Hit]) -> str:
    """What ``nomoat search`` prints: rank, file, location, score and the start of each chunk."""
    if not hits:
        return "no results"
    out = []
    for i, h in enumerate(hits, 1):
        snippet = " ".join(h["text"].split())
        out.append(f"[{i}] {h['path']} ({h['location']})  score {h['score']:.3f}\n    {snippet[:300]}")
    return "\n".join(out)
