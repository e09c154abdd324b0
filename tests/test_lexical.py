"""lexical.py: BM25 that scores common phrases only where a rarer one matches, equal to FTS5's own bm25()."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import pytest

from nomoat.config import SearchConfig
from nomoat.kb import lexical, retrieval, store

WEIGHTS = [(1.0, 0.5, 0.0), (2.0, 1.0, 0.5), (1.0, 1.0, 1.0)]


@dataclass(frozen=True)
class C:
    text: str
    start: int = 0
    end: int = 0
    location: str = ""
    heading: str = ""


def _write(conn, path: str, chunks: list[C]) -> int:
    vectors = np.ones((len(chunks), 4), dtype=np.float32) / 2
    return store.write_document(conn, store.DocumentRecord(path, 1, 1, "h", "txt", ""), chunks, vectors)


def _corpus(seed: int = 0) -> list[list[C]]:
    """30 documents of 10 chunks: "commit" in ~90 % of chunks, "branch" ~50 %, "merge" ~25 %, "rebase" ~10 %,
    and a few rare words in a handful of chunks each; headings hold words too (a second weighted column)."""
    rng = random.Random(seed)
    share = {"commit": 0.9, "branch": 0.5, "merge": 0.25, "rebase": 0.1, "stash": 0.04, "bisect": 0.03}
    filler = ["the", "tree", "of", "files", "and", "an", "index", "with", "objects", "in", "a", "repository"]
    docs = []
    for _ in range(30):
        chunks = []
        for _ in range(10):
            words = rng.choices(filler, k=rng.randint(8, 40))
            for w, p in share.items():
                if rng.random() < p:
                    words += [w] * rng.randint(1, 3)
            rng.shuffle(words)
            heading = rng.choice(["", "commit", "branch", "notes"]) + (" bisect" if rng.random() < 0.03 else "")
            chunks.append(C(" ".join(words), heading=heading))
        docs.append(chunks)
    return docs


@pytest.fixture
def kb():
    conn = store.open_kb("lex")
    with store.transaction(conn):
        store.set_embedder(conn, "fake@1", 4)
    for d, chunks in enumerate(_corpus()):
        _write(conn, f"/docs/d{d}.txt", chunks)
    yield conn
    conn.close()


def _split(conn, match, n, weights=(1.0, 0.5, 0.0), common=0.2):
    return lexical.search(conn, match, n, weights, common=common, state=store.state(conn))


def _spy(monkeypatch) -> list[str]:
    seen: list[str] = []
    real = lexical.ranked

    def ranked(conn, match, n, weights):
        seen.append(match)
        return real(conn, match, n, weights)

    monkeypatch.setattr(lexical, "ranked", ranked)
    return seen


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("query", ["stash commit branch", "bisect merge commit", "rebase stash branch merge commit"])
def test_top_results_equal_plain_fts5_bm25(kb, query, weights, monkeypatch):
    match = retrieval.fts_query(query)
    plain = lexical.ranked(kb, match, 10, weights)
    seen = _spy(monkeypatch)
    split = _split(kb, match, 10, weights)
    assert any(" AND " in m for m in seen), "the split path ran (common phrases only where a rare one matches)"
    # A chunk holding only common phrases scores below (k1 + 1) * their idf summed: every plain result above
    # that bound must come out the same, in the same order, with FTS5's own score.
    rows, df = lexical.frequencies(kb, store.state(kb), lexical.phrases_of(match))
    bound = 2.2 * sum(max(math.log((rows - d + 0.5) / (d + 0.5)), 1e-6) for d in df.values() if d > 0.2 * rows)
    sure = [(i, s) for i, s in plain if -s > bound]
    assert len(sure) >= 5
    assert [i for i, _ in split[: len(sure)]] == [i for i, _ in sure]
    assert [s for _, s in split[: len(sure)]] == pytest.approx([s for _, s in sure], rel=1e-12)
    rare = " OR ".join(p for p, d in df.items() if d <= 0.2 * rows)
    holding_rare = {i for i, _ in lexical.ranked(kb, rare, 10_000, weights)}
    assert all(i in holding_rare for i, _ in split)
    missing = {i for i, _ in plain} - {i for i, _ in split}
    assert not missing & holding_rare, "only chunks without a rare phrase may be left out"


def test_scores_are_fts5_bm25_sums_over_phrases(kb):
    """What the split relies on: bm25() of an OR query is the sum of each phrase's own bm25()."""
    both = dict(lexical.ranked(kb, '"stash" OR "commit"', 1000, (1.0, 0.5, 0.0)))
    stash = dict(lexical.ranked(kb, '"stash"', 1000, (1.0, 0.5, 0.0)))
    commit = dict(lexical.ranked(kb, '"commit"', 1000, (1.0, 0.5, 0.0)))
    assert both and all(s == pytest.approx(stash.get(i, 0.0) + commit.get(i, 0.0), rel=1e-12) for i, s in both.items())


def test_a_common_term_query_over_many_chunks_returns_the_rare_term_chunk_first(monkeypatch):
    conn = store.open_kb("many")
    with store.transaction(conn):
        store.set_embedder(conn, "fake@1", 4)
    for d in range(20):  # 400 chunks, every one about commits
        _write(conn, f"/docs/commits{d}.txt", [C(f"commit the commit number {d} {i} commit") for i in range(20)])
    rare_doc = _write(conn, "/docs/island.txt", [C("a commit made on zanzibar")])
    rare_id = conn.execute("SELECT id FROM chunks WHERE doc_id = ?", (rare_doc,)).fetchone()[0]
    seen = _spy(monkeypatch)
    ids = lexical.fts_search(conn, retrieval.fts_query("commit zanzibar"), 50, common=0.05)
    assert ids[0] == rare_id
    assert seen == ['"zanzibar"', '("commit") AND ("zanzibar")'], "the 400 commit-only chunks were not scored"
    conn.close()


def test_frequencies_follow_kb_changes(kb):
    match = retrieval.fts_query("stash commit")
    rows, df = lexical.frequencies(kb, store.state(kb), ['"stash"'])
    assert rows == kb.execute("SELECT count(*) FROM chunks_fts_docsize").fetchone()[0] == 300
    before = df['"stash"']
    # a new document full of "stash" chunks: the cached document frequency must not be reused
    doc = _write(kb, "/docs/stashes.txt", [C(f"stash stash entry {i}") for i in range(40)])
    rows, df = lexical.frequencies(kb, store.state(kb), ['"stash"'])
    assert (rows, df['"stash"']) == (340, before + 40)
    assert [i for i, _ in _split(kb, match, 10)] == [i for i, _ in lexical.ranked(kb, match, 10, (1.0, 0.5, 0.0))]
    store.delete_documents(kb, [doc])
    rows, df = lexical.frequencies(kb, store.state(kb), ['"stash"'])
    assert (rows, df['"stash"']) == (300, before)


def test_row_count_is_fts5s_own(kb):
    assert lexical._row_count(kb) == 300
    kb.execute("DELETE FROM chunks_fts_data WHERE id = 1")  # no averages record: count the rows instead
    assert lexical._row_count(kb) == 300


@pytest.mark.parametrize("match", ['"commit" AND "stash"', '"commit" NOT "stash"', "commit OR stash", '"stash"'])
def test_other_expressions_and_negative_weights_run_the_plain_query(kb, match, monkeypatch):
    weights = (1.0, -0.5, 0.0)
    plain = lexical.ranked(kb, match, 10, (1.0, 0.5, 0.0))
    negative = lexical.ranked(kb, '"stash" OR "commit"', 10, weights)
    seen = _spy(monkeypatch)
    assert _split(kb, match, 10) == plain
    assert _split(kb, '"stash" OR "commit"', 10, weights) == negative
    assert seen == [match, '"stash" OR "commit"']


def test_every_fts_query_is_an_or_of_phrases():
    for text in ['"foo AND (', "NEAR(a b, 3)", "{text heading}: apple", "foo_bar baz", "日本語 😀 x", "apple " * 500]:
        match = retrieval.fts_query(text)
        assert lexical.phrases_of(match) == match.split(" OR ")


def test_idf_clamp_makes_the_most_common_phrase_nearly_free(kb):
    """FTS5's idf is log((N - n + 0.5) / (n + 0.5)), at least 1e-6: "commit" (90 % of chunks) adds ~nothing."""
    rows, df = lexical.frequencies(kb, store.state(kb), ['"commit"'])
    assert math.log((rows - df['"commit"'] + 0.5) / (df['"commit"'] + 0.5)) < 0
    only = lexical.ranked(kb, '"commit"', 5, (1.0, 0.5, 0.0))
    assert all(-1e-5 < s <= 0 for _, s in only)


def test_search_default_config_matches_the_plain_lexical_search(kb):
    from fakes import FakeEmbedder

    kb.execute("DELETE FROM meta WHERE key LIKE 'embedder%'")  # BM25 alone decides the order
    for query in ["stash commit branch", "bisect rebase", "commit"]:
        # page evidence off: it sums every matching chunk of a page, and the split search leaves out the chunks
        # holding nothing but common phrases (their ranking, not their sum, is what matches plain BM25)
        new = retrieval.search(query, "lex", k=5, embedder=FakeEmbedder(), config=SearchConfig(document_evidence=0))
        old = retrieval.search(query, "lex", k=5, embedder=FakeEmbedder(),
                               config=SearchConfig(common_terms=0.0, document_evidence=0))  # fmt: skip
        assert [h["chunk_id"] for h in new] == [h["chunk_id"] for h in old]
