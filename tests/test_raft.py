"""RAG-format training rows (dataset/raft.py): the prompt is ask's own, the golden source moves, a share of rows
teaches "the files do not say", and no held-out document reaches training."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from fakes import FakeChatModel
from nomoat.answer import rag
from nomoat.config import CurateConfig, RagConfig
from nomoat.dataset.raft import rag_rows

TOOLS = 12


def _chunk(i: int) -> dict[str, Any]:
    return {"chunk_id": i, "path": f"/docs/tool{i}.md", "location": "§ NAME",
            "text": f"tool{i} rotates the logs of service number {i} every night at {i} o'clock.",
            "score": 1.0, "cosine": 0.9}  # fmt: skip


CHUNKS = {i: _chunk(i) for i in range(TOOLS)}


def _retrieve(query: str, kb: str, k: int) -> list[dict[str, Any]]:
    """Every chunk, the one named in the query first (search finds it), as a KB's fused search would rank them."""
    named = [c for c in CHUNKS.values() if f"tool{c['chunk_id']} " in query + " "]
    return (named + [c for c in CHUNKS.values() if c not in named])[:k]


def _rows(n: int = TOOLS) -> list[dict[str, Any]]:
    return [{"messages": [{"role": "user", "content": f"When does tool{i} rotate the logs?"},
                          {"role": "assistant", "content": f"every night at {i} o'clock"}],
             "meta": {"chunk_ids": [i], "source": f"/docs/tool{i}.md", "generator": "extractive"}}
            for i in range(n)]  # fmt: skip


def test_the_training_prompt_is_asks_prompt() -> None:
    rows = rag_rows(_rows(), "t", FakeChatModel(), config=CurateConfig(rag_missing_share=0), retrieve=_retrieve)
    assert len(rows) == TOOLS
    for row in rows:
        order = row["meta"]["sources"]
        model = FakeChatModel(row["messages"][-1]["content"])
        got = rag.ask(
            row["meta"]["question"], "t", model=model, retrieve=lambda q, kb, k, order=order: [CHUNKS[i] for i in order]
        )
        assert model.calls[0] == row["messages"][:-1]  # the same system prompt, sources block and question
        assert got["mode"] == "generated"  # and the row's answer passes ask's own check


def test_the_golden_source_moves_and_the_answer_cites_it() -> None:
    config = RagConfig()
    rows = rag_rows(_rows(), "t", FakeChatModel(), config=CurateConfig(rag_missing_share=0), retrieve=_retrieve)
    positions = Counter(r["meta"]["golden"] for r in rows)
    assert len(positions) >= 3 and set(positions) <= set(range(1, config.k + 1))
    for row in rows:
        n, i = row["meta"]["golden"], row["meta"]["chunk_ids"][0]
        assert row["meta"]["sources"][n - 1] == i and len(row["meta"]["sources"]) == config.k
        assert row["messages"][-1]["content"] == f"every night at {i} o'clock [{n}]."


def test_a_share_of_rows_teaches_the_files_do_not_say() -> None:
    many = _rows() * 10
    rows = rag_rows(many, "t", FakeChatModel(), config=CurateConfig(rag_missing_share=0.3), retrieve=_retrieve)
    missing = [r for r in rows if r["meta"]["golden"] is None]
    assert 0.2 < len(missing) / len(rows) < 0.4
    for row in missing:
        assert row["messages"][-1]["content"] == rag.FILES_DO_NOT_SAY
        assert row["meta"]["chunk_ids"][0] not in row["meta"]["sources"]


def test_no_held_out_document_becomes_a_source() -> None:
    held_out = {f"/docs/tool{i}.md" for i in (3, 4, 5)}
    rows = rag_rows(_rows(3), "t", FakeChatModel(), config=CurateConfig(), retrieve=_retrieve, exclude=held_out)
    for row in rows:
        assert not {CHUNKS[i]["path"] for i in row["meta"]["sources"]} & held_out
        assert not any(p in row["messages"][1]["content"] for p in held_out)


def test_an_answer_the_check_rejects_is_left_out() -> None:
    rows = _rows(2)
    rows[0]["messages"][-1]["content"] = "at midnight on Sundays, by cron"  # not what the source says
    removed: Counter[str] = Counter()
    got = rag_rows(rows, "t", FakeChatModel(), config=CurateConfig(rag_missing_share=0), retrieve=_retrieve,
                   removed=removed)  # fmt: skip
    assert [r["meta"]["chunk_ids"] for r in got] == [[1]] and removed["answer fails ask's check"] == 1


def test_sources_are_scrubbed_of_personal_data() -> None:
    chunk = {
        **_chunk(0),
        "text": "tool0 rotates logs every night at 0 o'clock. Mail alice.smith@example.com if it fails.",
    }
    pii: Counter[str] = Counter()
    (row,) = rag_rows(_rows(1), "t", FakeChatModel(), config=CurateConfig(rag_missing_share=0),
                      retrieve=lambda q, kb, k: [chunk], pii=pii)  # fmt: skip
    assert "alice.smith" not in row["messages"][1]["content"] and pii["email"] == 1


@pytest.mark.parametrize(
    "reply, mode", [(rag.FILES_DO_NOT_SAY, "declined"), ("The files do not say [1].", "extractive")]
)
def test_ask_reports_a_model_that_declines(reply: str, mode: str) -> None:
    got = rag.ask("When does tool1 rotate the logs on Sundays?", "t", model=FakeChatModel(reply), retrieve=_retrieve)
    assert got["mode"] == mode
    if mode == "declined":
        assert not got["grounded"] and not got["citations"]


def test_a_decline_beside_a_source_holding_the_whole_question_is_quoted_instead() -> None:
    question = "When does tool1 rotate the logs on Sundays?"  # no source says "Sunday": the decline stands
    assert rag.ask(question, "t", model=FakeChatModel(rag.FILES_DO_NOT_SAY), retrieve=_retrieve)["mode"] == "declined"
    question = "When does tool1 rotate the logs?"  # every term in tool1's chunk: the question is about it
    got = rag.ask(question, "t", model=FakeChatModel(rag.FILES_DO_NOT_SAY), retrieve=_retrieve)
    assert got["mode"] == "extractive" and got["grounded"]
    assert got["citations"][0]["path"] == "/docs/tool1.md" and "every night at 1 o'clock" in got["answer"]
    assert got["fallback_reason"] == "the model declined, but source [1] holds every term of the question"


def test_a_golden_chunk_search_missed_is_put_in_and_only_the_share_go_without() -> None:
    def misses(query: str, kb: str, k: int) -> list[dict[str, Any]]:  # search never finds the golden chunk
        named = {c["chunk_id"] for c in _retrieve(query, kb, 1)}
        return [c for c in CHUNKS.values() if c["chunk_id"] not in named][:k]

    rows = rag_rows(_rows() * 10, "t", FakeChatModel(), config=CurateConfig(rag_missing_share=0.1), retrieve=misses,
                    chunks=CHUNKS)  # fmt: skip
    declines = sum(r["meta"]["golden"] is None for r in rows) / len(rows)
    assert 0.02 < declines < 0.2  # the share, not every miss
    without = rag_rows(_rows(), "t", FakeChatModel(), config=CurateConfig(rag_missing_share=0), retrieve=misses)
    assert all(r["meta"]["golden"] is None for r in without)  # no chunk text to put in: the files do not say


def test_the_golden_source_is_among_those_the_token_budget_shows() -> None:
    model, gen = FakeChatModel(), RagConfig().generation()
    hits = [CHUNKS[i] for i in range(RagConfig().k)]
    budget = next(b for b in range(16, 4000, 4)  # the budget that shows two of the five sources
                  if len(rag.build_prompt("q", hits, model, gen, RagConfig(max_source_tokens=b))[1]) == 2)  # fmt: skip
    small = RagConfig(max_source_tokens=budget)
    rows = rag_rows(_rows() * 4, "t", model, config=CurateConfig(rag_missing_share=0), rag_config=small,
                    retrieve=_retrieve)  # fmt: skip
    assert len(rows) == 4 * TOOLS
    assert Counter(r["meta"]["golden"] for r in rows).keys() == {1, 2}  # never cut off, and still moving
    for row in rows:
        assert len(row["meta"]["sources"]) == 2 and row["messages"][-1]["content"] != rag.FILES_DO_NOT_SAY
