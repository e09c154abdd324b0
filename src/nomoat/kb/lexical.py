"""BM25 over FTS5 without scoring every chunk that holds a common word (retrieval.search calls this).

FTS5's ``bm25()`` scores every row matching any phrase of an OR query, so a question holding "commit" (in 58 % of
a 100k-chunk KB) costs ~75 ms however rare its other words are. But ``bm25()`` is a *sum over the query's
phrases*: ``idf(phrase) * f(its column-weighted frequency in the row, the row's length)``, where idf comes from
the phrase's document frequency in the whole table and each summand is >= 0 (with non-negative weights). So:

* phrases are split by document frequency: *rare* ones (in at most ``common`` of the chunks) and *common* ones;
* ``rare`` ORDER BY bm25 LIMIT n ranks the chunks holding a rare phrase and no common one exactly (their score is
  the sum over the rare phrases), and ``(common) AND (rare)`` ORDER BY bm25 LIMIT n ranks those holding both
  exactly: its phrases are the query's phrases, each once, so FTS5's own bm25() of it is the full query's;
* the union of the two, best first (the second list's score wins), is the exact top n of all chunks holding a
  rare phrase: a chunk in the first list that also holds a common phrase either gets its full score from the
  second list or, missing from that list's top n, is beaten by all n chunks in it.

What is left out: chunks holding only common phrases. A common phrase's idf is small (1e-6 past half the chunks),
so such a chunk rarely ranks high: with ``common`` 0.05, 95 % of plain FTS5's top 10 are kept on git-doc (12k
chunks) and 98 % at 100k chunks, and git-doc's recall is unchanged (docs/benchmarks.md).

Both queries visit only the chunks holding a rare phrase. When every phrase is common the rarest one acts as the
rare set; when that saves little (rare phrases' chunks at least half of all postings) the plain OR query runs.
Ties are broken by chunk id in both paths, so the order is deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from nomoat.kb import store
from nomoat.kb.schema import Connection

_OR_OF_PHRASES = re.compile(r'"[^"]*"(?: OR "[^"]*")*')  # what retrieval.fts_query builds
_PHRASE = re.compile(r'"[^"]*"')
_MAX_CACHED_KBS, _MAX_CACHED_PHRASES = 8, 50_000


class _Frequencies:
    """Rows in the FTS index and document frequencies of phrases, for one state of one KB."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.df: dict[str, int] = {}


_cache: dict[tuple[str, str], _Frequencies] = {}  # (database file, store.state()) -> frequencies


def ranked(conn: Connection, match: str, n: int, weights: Sequence[float]) -> list[tuple[int, float]]:
    """``(chunk id, bm25)`` best first (bm25 is negative: lower is better), ties by chunk id; FTS5 does it all."""
    w = ", ".join(f"{float(x):.6g}" for x in weights)  # numbers we format ourselves, never user text
    sql = f"""SELECT rowid, bm25(chunks_fts, {w}) FROM chunks_fts WHERE chunks_fts MATCH ?
              ORDER BY 2, 1 LIMIT ?"""
    return [(r[0], r[1]) for r in conn.execute(sql, (match, int(n)))]


def phrases_of(match: str) -> list[str] | None:
    """The quoted phrases of an ``"a" OR "b"`` expression (retrieval.fts_query's form); None for any other."""
    return _PHRASE.findall(match) if _OR_OF_PHRASES.fullmatch(match) else None


def frequencies(conn: Connection, state: str, phrases: Sequence[str]) -> tuple[int, dict[str, int]]:
    """``(rows in the FTS index, {phrase: rows matching it})``, the numbers FTS5's idf uses; cached per KB state."""
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    key = (path, state)
    freq = _cache.get(key)
    if freq is None:
        if len(_cache) >= _MAX_CACHED_KBS:
            _cache.pop(next(iter(_cache)))
        freq = _cache[key] = _Frequencies(_row_count(conn))
    if len(freq.df) > _MAX_CACHED_PHRASES:
        freq.df.clear()
    for p in phrases:
        if p not in freq.df:  # FTS5 counts matching rows without scoring them: ~4 ms for "commit" at 100k
            freq.df[p] = conn.execute("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ?", (p,)).fetchone()[0]
    return freq.rows, {p: freq.df[p] for p in phrases}


def _row_count(conn: Connection) -> int:
    """FTS5's own row count: the first varint of its averages record (%_data id 1), else count the docsize rows."""
    row = conn.execute("SELECT block FROM chunks_fts_data WHERE id = 1").fetchone()
    if row is not None and row[0]:
        value = 0
        for i, byte in enumerate(row[0][:9]):  # SQLite varint: 7 bits a byte, big-endian; a 9th byte holds 8
            if i == 8:
                return (value << 8) | byte
            value = (value << 7) | (byte & 0x7F)
            if byte < 0x80:
                return value
    return int(conn.execute("SELECT count(*) FROM chunks_fts_docsize").fetchone()[0])


def fts_search(
    conn: Connection, match: str, n: int, weights: Sequence[float] = store.FTS_WEIGHTS, *, common: float
) -> list[int]:
    """Chunk ids best first, like :func:`.store.fts_search` (which ``common`` <= 0 runs): :func:`search`."""
    if common <= 0:
        return store.fts_search(conn, match, n, weights)
    return [i for i, _ in search(conn, match, n, weights, common=common, state=store.state(conn))]


def search(
    conn: Connection, match: str, n: int, weights: Sequence[float], *, common: float, state: str
) -> list[tuple[int, float]]:
    """Top ``n`` ``(chunk id, FTS5 bm25)`` for ``match``, best first: the module docstring's split when ``match``
    is an OR of phrases some of which are in more than ``common`` of the chunks, else the plain FTS5 query.
    ``state`` is store.state(conn) (the frequencies cache key)."""
    phrases = phrases_of(match)
    if common <= 0 or phrases is None or len(phrases) < 2 or min(weights, default=0.0) < 0:
        return ranked(conn, match, n, weights)  # negative weights: a phrase could lower a score, no bound holds
    rows, df = frequencies(conn, state, phrases)
    frequent = [p for p in phrases if df[p] > common * rows]
    rare = [p for p in phrases if p not in frequent]
    if not rare and frequent:
        rarest = min(frequent, key=lambda p: df[p])
        rare, frequent = [rarest], [p for p in frequent if p != rarest]
    if not frequent or 2 * sum(df[p] for p in rare) >= sum(df.values()):
        return ranked(conn, match, n, weights)
    either, both = " OR ".join(rare), f"({' OR '.join(frequent)}) AND ({' OR '.join(rare)})"
    scores = dict(ranked(conn, either, n, weights))
    scores.update(ranked(conn, both, n, weights))  # the full score wherever a chunk holds a common phrase too
    return sorted(scores.items(), key=lambda kv: (kv[1], kv[0]))[: int(n)]
