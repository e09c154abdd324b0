"""retrieval.py: query sanitising, RRF fusion, the search contract, and the KB's own embedder for queries."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

import nomoat
from fakes import FakeEmbedder
from nomoat.config import SearchConfig
from nomoat.errors import UserError
from nomoat.kb import ingest, retrieval, store
from nomoat.kb.chunking import embedding_text

HOSTILE = [
    '"foo AND (',
    "NEAR",
    "NEAR(a b, 3)",
    "a OR",
    "AND",
    "NOT x",
    "*",
    "foo*",
    "^start",
    "col:value",
    "text:apple",
    "{text heading}: apple",
    "'\"'\"",
    "())(",
    "-apple",
    "+",
    "\x00apple",
    "日本語のテキスト",
    "😀 apple 😀",
    "é\u0301",
    "_",
    "apple " * 500,
]


@pytest.fixture(autouse=True)
def _fresh_embedder_cache():
    retrieval._load.cache_clear()


@pytest.fixture
def kb(tmp_path) -> Path:
    root = tmp_path / "notes"
    root.mkdir()
    (root / "fruit.txt").write_text("Apples and pears grow in the orchard behind the old mill.")
    (root / "space.md").write_text("# Planets\n\nJupiter is the largest planet; its moons include Europa.")
    (root / "code.txt").write_text("The function parse_config reads the TOML file and returns a dict.")
    ingest.run([root], "t", embedder=FakeEmbedder(), progress=False)
    return root


def test_fts_query_drops_stop_words_unless_nothing_else_is_left():
    assert retrieval.fts_query("How do I undo the last commit?") == '"undo" OR "last" OR "commit"'
    assert retrieval.fts_query("to be or not to be") == '"to" OR "be" OR "or" OR "not"'


def test_fts_query_quotes_every_term():
    assert retrieval.fts_query('"foo NEAR (bar') == '"foo" OR "near" OR "bar"'
    assert retrieval.fts_query("Foo foo FOO") == '"foo"'
    assert retrieval.fts_query("  ?!  ") == ""
    assert retrieval.fts_query("w " * 1000).count('"') == 2
    assert len(retrieval.fts_query(" ".join(f"w{i}" for i in range(1000))).split(" OR ")) == retrieval._MAX_TERMS


@pytest.mark.parametrize("query", HOSTILE)
def test_hostile_queries_never_raise(kb, query):
    hits = retrieval.search(query, "t", k=3, embedder=FakeEmbedder())
    assert len(hits) <= 3


def test_rrf_fuses_ranks():
    fused = retrieval.rrf([[1, 2, 3], [3, 1]], k=60)
    assert [i for i, _ in fused] == [1, 3, 2]
    assert fused[0][1] == pytest.approx(1 / 61 + 1 / 62)
    assert retrieval.rrf([]) == []


def test_rrf_weights_each_ranking():
    fused = retrieval.rrf([[1, 2], [2, 1]], k=10, weights=[1.0, 2.0])
    assert [i for i, _ in fused] == [2, 1]
    assert fused[0][1] == pytest.approx(1 / 12 + 2 / 11)


def test_documents_with_several_matching_chunks_add_up():
    fused = [(1, 0.10), (2, 0.09), (3, 0.08), (4, 0.07)]
    paths = {1: "a", 2: "b", 3: "b", 4: "c"}
    assert [i for i, _ in retrieval.by_document(fused, paths, 1)] == [1, 2, 4]  # best chunk alone: a first
    ranked = retrieval.by_document(fused, paths, 1, evidence=0.5)
    assert [i for i, _ in ranked] == [2, 1, 4]  # b's second chunk is evidence: 0.09 + 0.04 > 0.10
    assert ranked[0][1] == pytest.approx(0.13) and [s for _, s in ranked] == sorted(
        (s for _, s in ranked), reverse=True
    )
    assert [i for i, _ in retrieval.by_document(fused, paths, 0, evidence=0.5)] == [2, 3, 1, 4]  # no cap


def test_search_contract_and_ranking(kb):
    hits = nomoat.search("orchard apples", kb="t", k=2, embedder=FakeEmbedder())
    assert len(hits) == 2
    assert set(hits[0]) == {"path", "location", "score", "text", "chunk_id", "cosine"}
    q = FakeEmbedder().embed(["orchard apples"])[0]
    assert hits[0]["path"] == str((kb / "fruit.txt").resolve())
    # the vector is of the chunk under its context header (a .txt file: no title or heading, just "fruit")
    embedded = embedding_text(hits[0]["path"], "", "", hits[0]["text"])
    assert embedded.startswith("fruit\n")
    assert hits[0]["cosine"] == pytest.approx(float(FakeEmbedder().embed([embedded])[0] @ q), abs=1e-5)
    assert "orchard" in hits[0]["text"]
    assert hits[0]["score"] >= hits[1]["score"] > 0
    conn = store.open_kb("t", create=False)
    row = conn.execute("SELECT text FROM chunks WHERE id = ?", (hits[0]["chunk_id"],)).fetchone()
    conn.close()
    assert row[0] == hits[0]["text"]


def test_one_document_fills_at_most_per_document_results(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    # a long page about kiwis (many chunks) and two short ones that also mention them
    (root / "long.md").write_text("\n\n".join(f"# Part {i}\n\nThe kiwi fruit note number {i}." for i in range(8)))
    (root / "a.txt").write_text("A kiwi is also a bird.")
    (root / "b.txt").write_text("Kiwi is a name for New Zealanders.")
    ingest.run([root], "t", embedder=FakeEmbedder(), progress=False)
    default = retrieval.search("kiwi", "t", k=5, embedder=FakeEmbedder())
    assert sorted(Path(h["path"]).name for h in default) == ["a.txt", "b.txt", "long.md"]
    capped = retrieval.search("kiwi", "t", k=5, embedder=FakeEmbedder(), config=SearchConfig(per_document=2))
    assert sum(h["path"].endswith("long.md") for h in capped) == 2
    uncapped = retrieval.search("kiwi", "t", k=5, embedder=FakeEmbedder(), config=SearchConfig(per_document=0))
    assert sum(h["path"].endswith("long.md") for h in uncapped) >= 3


def test_a_copy_of_a_hit_above_does_not_take_a_slot():
    texts = {
        1: "Use git stash when you want to record the current state of the working directory and go back.",
        2: "git-stash(1): use git stash when you want to record the current state of the working directory and go "
        "back to a clean one (see also git-worktree).",  # 1 is inside it
        3: "Record changes to the repository, with a log message that describes them for the people who read it.",
        4: "The state of your working directory is what a stash records, to be restored later on another branch.",
        5: "Use git stash.",  # inside 1, but a copy needs 8 shared triples: short chunks cut from one template differ
    }
    ranked = [(1, 0.5), (2, 0.4), (3, 0.3), (4, 0.2), (5, 0.1)]
    assert [i for i, _ in retrieval.distinct(ranked, texts, 4, 0.5)] == [1, 3, 4, 5]
    assert [i for i, _ in retrieval.distinct(ranked, texts, 2, 0.5)] == [1, 3]  # k counts what is kept
    assert [i for i, _ in retrieval.distinct(ranked[1:], texts, 3, 0.5)] == [2, 3, 4]  # the longer one above
    assert retrieval.distinct(ranked, texts, 3, 0.0) == ranked[:3]


def test_search_shows_a_page_and_its_source_copy_once(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    page = "Stashing puts away the changes in a dirty working directory so that you can switch branches."
    (root / "git-stash.html").write_text(f"<html><body><h1>git-stash</h1><p>{page}</p></body></html>")
    (root / "git-stash.txt").write_text(f"git-stash\n=========\n\n{page}\n")
    (root / "other.txt").write_text("Switching branches changes the files in the working directory.")
    ingest.run([root], "t", embedder=FakeEmbedder(), progress=False)
    names = [Path(h["path"]).name for h in retrieval.search("stash dirty working directory", "t", k=3,
                                                             embedder=FakeEmbedder())]  # fmt: skip
    assert len(names) == 2 and "other.txt" in names and len({"git-stash.html", "git-stash.txt"} & set(names)) == 1
    both = retrieval.search(
        "stash dirty working directory", "t", k=3, embedder=FakeEmbedder(), config=SearchConfig(duplicate_overlap=0)
    )
    assert len(both) == 3


def test_porter_stemming_matches_word_forms(kb):
    assert "planet" in retrieval.search("planets", "t", k=1, embedder=FakeEmbedder())[0]["text"]


def test_k_and_empty_query(kb):
    assert len(retrieval.search("the", "t", k=10, embedder=FakeEmbedder())) == 3  # only 3 chunks exist
    assert retrieval.search("   ", "t", embedder=FakeEmbedder()) == []
    with pytest.raises(UserError, match="k must be at least 1"):
        retrieval.search("x", "t", k=0)


def test_unknown_kb_is_a_user_error():
    with pytest.raises(UserError, match=r"no knowledge base 'x': run `nomoat ingest PATH` first"):
        retrieval.search("anything", "x")


def test_queries_use_the_kb_embedder(kb, monkeypatch):
    loaded = []
    fake_module = types.SimpleNamespace(load_embedder=lambda name: loaded.append(name) or FakeEmbedder())
    monkeypatch.setitem(sys.modules, "nomoat.kb.embeddings", fake_module)
    retrieval.search("apples", "t")
    retrieval.search("planets", "t")
    assert loaded == [FakeEmbedder().name]  # loaded once, by the name the KB recorded

    other = FakeEmbedder()
    other.name = "other@1"  # same vectors, another model's name: must still be refused
    with pytest.raises(UserError, match="embedded with"):
        retrieval.search("apples", "t", embedder=other)
