"""Search a knowledge base: BM25 (FTS5) and vector KNN (sqlite-vec), fused by reciprocal rank fusion.

Vector search always returns neighbours; whether they answer a question is decided downstream
(:func:`nomoat.answer.rag.relevant`, from the hits' cosine and term coverage).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, TypedDict

from nomoat.config import DEFAULT_KB, SearchConfig
from nomoat.errors import UserError
from nomoat.kb import lexical, queryenc, store
from nomoat.text import word_ngrams

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


def rrf(
    rankings: Sequence[Sequence[int]], k: int = 60, weights: Sequence[float] | None = None
) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: ``score(id) = sum over rankings of weight / (k + rank)``, rank from 1 (weights
    default to 1 each). Best first."""
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights or [1.0] * len(rankings), strict=True):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


@functools.lru_cache(maxsize=2)
def _load(name: str) -> Embedder:
    from nomoat.kb.embeddings import load_embedder  # lazy, like every model load

    return load_embedder(name)  # cached: a server answering many queries loads the model once


def by_document(
    fused: list[tuple[int, float]], paths: dict[int, str], cap: int, evidence: float = 0.0
) -> list[tuple[int, float]]:
    """``fused`` (best first) with at most ``cap`` chunks per document (0 = no cap). With ``evidence`` > 0 the
    documents are ordered by their best chunk's score plus ``evidence`` times the sum of their other chunks'
    scores: a page several of whose chunks match is stronger evidence than one chunk of a page that matched once."""
    chunks: dict[str, list[tuple[int, float]]] = {}
    for chunk_id, score in fused:
        if chunk_id in paths:
            chunks.setdefault(paths[chunk_id], []).append((chunk_id, score))
    if evidence <= 0:  # order by chunk, as fused: a document's second chunk may come before another's first
        keep = {cid for c in chunks.values() for cid, _ in (c[:cap] if cap > 0 else c)}
        return [(cid, s) for cid, s in fused if cid in keep]
    weight = {d: c[0][1] + evidence * sum(s for _, s in c[1:]) for d, c in chunks.items()}
    order = sorted(chunks, key=lambda d: -weight[d])
    # every chunk shown carries its document's score, so the scores printed go down the list as the hits do
    return [(cid, weight[d]) for d in order for cid, _ in (chunks[d][:cap] if cap > 0 else chunks[d])]


_LEAST_SHARED = 8  # word triples two chunks must share to be copies: short chunks cut from one template are not


def distinct(ranked: list[tuple[int, float]], texts: dict[int, str], k: int, overlap: float) -> list[tuple[int, float]]:
    """The first ``k`` of ``ranked`` (best first), leaving out any chunk that shares at least ``overlap`` of the
    smaller one's word triples (and at least 8) with a chunk kept above it. Documentation folders often hold one
    text twice (page.html and its page.txt source, a section included in several pages, a PDF beside its .docx):
    without this the copy takes a result slot and a source in ask's prompt. ``overlap`` <= 0 keeps all."""
    if overlap <= 0:
        return ranked[:k]
    kept: list[tuple[int, float]] = []
    seen: list[set[tuple[str, ...]]] = []
    for chunk_id, score in ranked:
        if len(kept) == k:
            break
        grams = set(word_ngrams(texts.get(chunk_id, ""), 3))
        if any(len(grams & other) >= max(overlap * min(len(grams), len(other)), _LEAST_SHARED) for other in seen):
            continue
        kept.append((chunk_id, score))
        seen.append(grams)
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
            rankings.append(lexical.fts_search(conn, match, n, config.fts_weights, common=config.common_terms))
        if recorded := store.embedder_of(conn):
            vector = _query_embedder(recorded, embedder).embed([query])[0]
            # An adapted query encoder (kb adapt) ranks; the stock vector's cosine still decides relevance
            # downstream, because RagConfig.min_cosine is calibrated on it.
            adapted = queryenc.load(kb, conn)
            ranking = adapted.embed([query])[0] if adapted else vector
            rankings.append(store.vector_search(conn, ranking, n))
        weights = [1.0, config.vector_weight] if len(rankings) == 2 else [1.0] * len(rankings)
        fused = rrf(rankings, config.rrf_k, weights)
        rows = store.get_chunks(conn, [i for i, _ in fused])
        paths = {i: r["path"] for i, r in rows.items()}
        fused = by_document(fused, paths, config.per_document, config.document_evidence)
        fused = distinct(fused, {i: r["text"] for i, r in rows.items()}, k, config.duplicate_overlap)
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
