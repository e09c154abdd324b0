"""Retrieval-augmented training rows (RAFT: Zhang et al. 2024, "Adapting Language Model to Domain Specific RAG"):
each row is the very prompt ``nomoat ask`` builds for its question, with the sources the KB's own search returns,
and the answer ask's check accepts.

* The prompt comes from :func:`nomoat.answer.rag.build_prompt` (one function for asking and for training): same
  system prompt, numbered-sources block, template and token budget.
* The golden chunk (the one the question was made from) sits at a varying position among real distractors (the
  other hits of the search, in a seeded shuffle), so the model learns to find it, not to copy source [1].
* The golden chunk is always among the sources (put in when search missed it) except in a share of rows
  (``CurateConfig.rag_missing_share``), whose answer is "The files do not say.": the model learns to say so
  instead of inventing.
* Answers are the pair's own answer, copied from the chunk, with the golden source's ``[n]``; a row is kept only if
  :func:`nomoat.answer.citations.verify` passes it, exactly as ask will check the tuned model's answers.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nomoat.answer import citations, rag
from nomoat.config import CurateConfig, RagConfig
from nomoat.dataset.pii import scrub

Row = dict[str, Any]
Retrieve = Callable[..., list[dict[str, Any]]]


def rag_rows(
    rows: Sequence[Row],
    kb: str,
    model: Any,
    *,
    config: CurateConfig,
    rag_config: RagConfig | None = None,
    retrieve: Retrieve | None = None,
    removed: Counter[str] | None = None,
    pii: Counter[str] | None = None,
    exclude: set[str] | frozenset[str] = frozenset(),
    chunks: Mapping[int, dict[str, Any]] | None = None,
    on_row: Callable[[], None] | None = None,
) -> list[Row]:
    """Chat rows (question → answer from one chunk, ``meta.chunk_ids``) turned into ask-format rows.

    ``model`` only tokenizes (it sets the prompt's token budget, as in ask). Hits from documents in ``exclude``
    (the eval split's, for training rows) never become sources, so no held-out text reaches training. Rows whose
    answer fails ask's check are left out and counted in ``removed``; sources are PII-scrubbed like the pairs
    (counted in ``pii``). When search misses the golden chunk, it is put in from ``chunks`` (id -> ``{"text",
    "path", "location"}``) as RAFT does, so only the ``rag_missing_share`` rows go without it (docs/benchmarks.md:
    left out at every miss, two rows in three said "the files do not say" and so did the tuned model). Each row's
    ``meta`` gains ``question``, ``answer`` (the reference, without markers), ``golden`` (its source number, or
    None), ``sources`` (their chunk ids, in order) and ``format: "rag"``.
    """
    rag_config = rag_config or RagConfig()
    if retrieve is None:
        from nomoat.kb import retrieval

        retrieve = retrieval.search
    rng = random.Random(config.seed)
    removed = removed if removed is not None else Counter()
    pii = pii if pii is not None else Counter()
    gen = rag_config.generation()
    out = []
    for row in rows:
        question, answer = row["messages"][-2]["content"], row["messages"][-1]["content"]
        golden_id = row["meta"]["chunk_ids"][0]
        found = retrieve(question, kb=kb, k=rag_config.k + (5 if exclude else 1))  # spares for excluded hits
        hits = [{**h, "text": _scrubbed(h["text"], pii)} for h in found
                if h.get("text", "").strip() and h.get("path") not in exclude]  # fmt: skip
        golden = next((h for h in hits if h["chunk_id"] == golden_id), None)
        if golden is None and chunks and golden_id in chunks:
            c = chunks[golden_id]
            golden = {"chunk_id": golden_id, "path": c["path"], "location": c["location"],
                      "text": _scrubbed(c["text"], pii)}  # fmt: skip
        missing = rng.random() < config.rag_missing_share
        if missing or golden is None:
            hits = [h for h in hits if h["chunk_id"] != golden_id][: rag_config.k]
        else:
            hits = [h for h in hits if h["chunk_id"] != golden_id][: rag_config.k - 1]
            hits.insert(rng.randrange(len(hits) + 1), golden)
        messages, sources = rag.build_prompt(question, hits, model, gen, rag_config)
        if golden is not None and not missing and _shown(sources, golden_id) is None:
            # the token budget cut the golden chunk off: put it among the sources that fit, or the row would teach
            # "the files do not say" (at 600 source tokens ~2 rows in 5 did, and so did the tuned model)
            hits.remove(golden)
            hits.insert(rng.randrange(max(1, len(sources))), golden)
            messages, sources = rag.build_prompt(question, hits, model, gen, rag_config)
        n = _shown(sources, golden_id)
        if on_row:
            on_row()
        if n is None:  # not among the sources (missed, or trimmed off by the budget): the files do not say
            reply = rag.FILES_DO_NOT_SAY
        else:
            reply = _cited(answer, n)
            if not citations.verify(reply, question, sources, min_support=rag_config.min_support).passed:
                removed["answer fails ask's check"] += 1
                continue
        meta = {**row["meta"], "format": "rag", "question": question, "answer": answer, "golden": n,
                "sources": [s.get("chunk_id") for s in sources]}  # fmt: skip
        out.append({"messages": [*messages, {"role": "assistant", "content": reply}], "meta": meta})
    return out


def _shown(sources: Sequence[dict[str, Any]], chunk_id: int) -> int | None:
    """The source number of ``chunk_id`` in the prompt, or None when it is not there."""
    return next((i for i, s in enumerate(sources, 1) if s.get("chunk_id") == chunk_id), None)


def _cited(answer: str, n: int) -> str:
    """The answer with its source marker before the closing punctuation: "Run git stash [2]."."""
    body = answer.rstrip()
    end = body[-1] if body and body[-1] in ".!?" else ""
    return f"{body[: len(body) - len(end)].rstrip()} [{n}]{end or '.'}"


def _scrubbed(text: str, counts: Counter[str]) -> str:
    clean, found = scrub(text)
    counts.update(found)
    return clean
