"""``nomoat data build``: a small, clean instruction dataset from a knowledge base, on a CPU, offline.

The flow, top to bottom:

1. Pick chunks worth learning (:func:`skip_reason`): not near-empty, not navigation or a table of contents,
   not mostly code or table markup.
2. Candidates, two ways. Extractive (:mod:`nomoat.extract`, deterministic, instant): definitions, man-page
   names, options, key/value facts, section summaries. With the local model (:func:`model_pairs`): the model
   reads a chunk and writes a question with its answer; bounded by ``--time``, resumable.
3. Filters, each counted in the dataset card: grounding (the answer's terms and facts occur in its chunk),
   quality (length, repetition, mostly letters), PII scrubbing (:mod:`nomoat.pii`), near-duplicates (MinHash
   LSH over word shingles).
4. Split by source document (no document has rows on both sides), then drop eval rows whose answer shares
   most of its 8-grams with training answers (the same text in two files would leak otherwise).
5. Write ``OUT.jsonl`` (train), ``OUT.eval.jsonl`` and the card ``OUT.md``, atomically.
"""

from __future__ import annotations

import json
import random
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nomoat.config import DEFAULT_KB, CurateConfig, GenerationConfig
from nomoat.dataset.extract import Pair, extract_pairs, unnumbered
from nomoat.dataset.filters import (
    grounding_problem,
    leaking,
    near_duplicates,
    quality_problem,
    skip_reason,
    split_by_document,
)
from nomoat.errors import UserError
from nomoat.kb import store
from nomoat.paths import atomic_writer
from nomoat.text import sentences

Row = dict[str, Any]
_QA = re.compile(r"question\s*:\s*(?P<q>.+?)\s*answer\s*:\s*(?P<a>.+)", re.I | re.S)
MODEL_PROMPT = (
    "Passage:\n{text}\n\nWrite one question that this passage answers, and the answer, using the passage's own "
    "words. Reply exactly in this form:\nQuestion: ...\nAnswer: ..."
)


# -- model candidates ---------------------------------------------------------------------------------------
def parse_model_reply(reply: str) -> Pair | None:
    """``Question: ... Answer: ...`` → a pair, or None when the reply does not have that shape."""
    m = _QA.search(reply)
    if not m:
        return None
    question, answer = (" ".join(m.group(g).split()) for g in ("q", "a"))
    return Pair(question, answer, "model") if question and answer else None


def model_pairs(llm: Any, text: str, gen: GenerationConfig) -> list[Pair]:
    """Ask the local model for one question/answer pair about ``text`` (tokenized as data, not control)."""
    messages = [{"role": "user", "content": MODEL_PROMPT.format(text=text)}]
    with llm.lock:
        reply = "".join(llm.chat(messages, gen))
    pair = parse_model_reply(reply)
    return [Pair(pair.question, pair.answer, f"model:{llm.name}")] if pair else []


# -- the stage --------------------------------------------------------------------------------------------------
def build(
    kb: str = DEFAULT_KB,
    output: str | Path | None = None,
    *,
    max_pairs: int | None = None,
    time_budget: float | None = None,
    eval_fraction: float | None = None,
    model: Any = "default",
    use_model: bool = True,
    target: str | None = None,
    progress: bool = True,
    config: CurateConfig | None = None,
    retrieve: Any = None,
) -> dict[str, Any]:
    """Build a dataset from knowledge base ``kb``; see the module docstring for the steps.

    Writes ``output`` (train rows), ``<output stem>.eval.jsonl`` and ``<output stem>.md`` (the dataset card).
    ``time_budget`` (seconds, default ``CurateConfig.model_budget_s``) bounds model generation, and so does
    ``max_pairs`` (the model stops once the candidates are enough); ``use_model=False`` keeps only extractive
    pairs. ``target`` "rag" (default) writes ask-format rows (:mod:`nomoat.dataset.raft`), "chat" plain ones;
    ``retrieve`` is for tests (see :func:`nomoat.answer.rag.ask`).
    Returns ``{"train", "eval", "candidates", "chunks", "model_chunks", "skipped", "removed", "pii", "generators",
    "output", "eval_output", "card", "seconds"}``. An interrupted model phase resumes from ``<output>.state.jsonl``.
    Raises UserError for an unknown or empty knowledge base or a bad argument.
    """
    config = config or CurateConfig()
    output = config.output if output is None else output
    target = config.target if target is None else target
    if target not in ("rag", "chat"):
        raise UserError(f"--for must be rag or chat (got {target!r})")
    eval_fraction = config.eval_fraction if eval_fraction is None else eval_fraction
    if not 0 <= eval_fraction < 1:
        raise UserError(f"--eval-fraction must be in [0, 1) (got {eval_fraction})")
    if max_pairs is not None and max_pairs < 1:
        raise UserError("--max must be at least 1")
    output = Path(output).expanduser().resolve()
    if output.suffix != ".jsonl":
        raise UserError(f"the output must be a .jsonl file (got {output.name})")
    if not output.parent.is_dir():
        raise UserError(f"no such folder: {output.parent}")
    started = time.monotonic()
    chunks = _load_chunks(kb)
    report: dict[str, Any] = {"chunks": len(chunks), "skipped": Counter(), "removed": Counter(), "pii": Counter()}
    report["model_chunks"] = 0
    usable = []
    for c in chunks:
        reason = skip_reason(c["text"], config)
        if reason:
            report["skipped"][reason] += 1
        else:
            usable.append(c)
    candidates = [(c, p) for c in usable for p in extract_pairs(c["text"], c["subject"], c["heading"])]
    wanted = None if max_pairs is None else 2 * max_pairs - len(candidates)  # headroom: filters drop about half
    model_pairs_wanted = use_model and time_budget != 0 and (wanted is None or wanted > 0)
    if (model_pairs_wanted or target == "rag") and not hasattr(model, "tokenize"):
        from nomoat.llm import runtime

        model = runtime.load(model)  # once: it writes pairs, then tokenizes the RAG prompts
    if model_pairs_wanted:
        budget = config.model_budget_s if time_budget is None else time_budget
        candidates += _model_candidates(usable, model, output, budget, wanted, config, progress, report)
    report["candidates"] = Counter(p.generator.split(":")[0] for _, p in candidates)
    rows = _filter(candidates, config, report)
    for i in sorted(near_duplicates(rows, config.dedup_threshold), reverse=True):
        report["removed"]["near-duplicate"] += 1
        del rows[i]
    rows = _spread(rows, max_pairs, config.seed) if max_pairs else rows
    train, evals = split_by_document(rows, eval_fraction, config.seed)
    for i in sorted(leaking(evals, train), reverse=True):
        report["removed"]["eval answer overlaps training"] += 1
        del evals[i]
    if target == "rag":
        train, evals = _as_rag(train, evals, kb, model, config, retrieve, progress, report,
                               {c["id"]: c for c in chunks})  # fmt: skip
    report["target"] = target
    return _write(output, train, evals, report, kb, time.monotonic() - started)


def _as_rag(train, evals, kb, model, config, retrieve, progress, report, chunks):  # type: ignore[no-untyped-def]
    """Both splits as ask-format rows (the loaded ``model`` only tokenizes here: its context sets the source budget)."""
    from tqdm import tqdm

    from nomoat.dataset.raft import rag_rows

    with tqdm(total=len(train) + len(evals), desc="rag rows", unit="row", file=sys.stderr,
              disable=not (progress and sys.stderr.isatty())) as bar:  # fmt: skip
        held_out = {r["meta"]["source"] for r in evals}

        def convert(split: list[Row], exclude: set[str]) -> list[Row]:
            return rag_rows(split, kb, model, config=config, retrieve=retrieve, removed=report["removed"],
                            pii=report["pii"], exclude=exclude, chunks=chunks,
                            on_row=lambda: bar.update(1))  # fmt: skip

        rows = convert(train, held_out), convert(evals, set())
    return rows[0], rows[1]


def _spread(rows: list[Row], most: int, seed: int) -> list[Row]:
    """``most`` rows in a seeded sample over all documents, in their order (the first ``most`` would all come
    from the documents whose paths sort first, and so would the eval split)."""
    if len(rows) <= most:
        return rows
    return [rows[i] for i in sorted(random.Random(seed).sample(range(len(rows)), most))]


def _load_chunks(kb: str) -> list[dict[str, Any]]:
    with store.connect(kb) as conn:
        sql = """SELECT c.id, c.text, c.heading, c.location, d.path, d.title FROM chunks c
                 JOIN documents d ON d.id = c.doc_id WHERE d.status = 'done' ORDER BY d.path, c.ord"""
        rows = conn.execute(sql).fetchall()
    if not rows:
        raise UserError(f"knowledge base '{kb}' has no chunks: run `nomoat ingest PATH --kb {kb}` first")
    return [
        {"id": r[0], "text": r[1], "heading": r[2], "location": r[3], "path": r[4], "subject": _subject(r[4], r[5])}
        for r in rows
    ]


def _subject(path: str, title: str) -> str:
    """What a document is about, for question wording: its title without man-page decorations, or its name."""
    title = unnumbered(re.sub(r"\(\d\)|\bManual Page\b", "", title or ""))
    return title or Path(path).stem


def _model_candidates(usable, model, output, budget, wanted, config, progress, report):  # type: ignore[no-untyped-def]
    """Model pairs until the time budget is spent or ``wanted`` pairs came (None: no count limit), the chunks most
    likely to yield first, across documents; each chunk's result is appended to a state file first, so an
    interrupted build resumes where it stopped. The plan, with its ETA, is printed before it starts."""
    from tqdm import tqdm

    state_path = output.with_name(output.name + ".state.jsonl")
    done = _read_state(state_path)
    _drop_torn_tail(state_path)  # else the next entry would be glued onto the cut line, and lost with it
    gen = GenerationConfig(max_tokens=config.model_answer_tokens, temperature=config.model_temperature)
    chunk_by_id = {c["id"]: c for c in usable}
    out = [(chunk_by_id[i], Pair(**p)) for i, pairs in done.items() if i in chunk_by_id for p in pairs]
    report["model_chunks"] = len(done)
    todo = _round_robin(sorted((c for c in usable if c["id"] not in done), key=_yield_order))
    if progress:
        count = "" if wanted is None else f", or until {wanted} pairs"
        span = f"{budget / 60:.0f} min" if budget >= 90 else f"{budget:.0f} s"
        print(f"nomoat: model-written pairs for up to {span}{count} ({len(todo)} chunks to try; "
              "--time sets the budget, --no-model skips it)", file=sys.stderr)  # fmt: skip
    show = progress and sys.stderr.isatty()
    started, found = time.monotonic(), len(out)
    with (
        open(state_path, "a", encoding="utf-8") as state,
        tqdm(total=budget, desc="model pairs", unit="s", file=sys.stderr, disable=not show,
             bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]{postfix}") as bar,
    ):  # fmt: skip
        for c in todo:
            if time.monotonic() - started > budget or (wanted is not None and found >= wanted):
                break
            pairs = model_pairs(model, c["text"][: config.model_chunk_chars], gen)
            state.write(json.dumps({"chunk_id": c["id"], "pairs": [p._asdict() for p in pairs]}) + "\n")
            state.flush()
            report["model_chunks"] += 1
            out += [(c, p) for p in pairs]
            found += len(pairs)
            bar.n = min(budget, time.monotonic() - started)
            bar.set_postfix(pairs=found, chunks=report["model_chunks"])
    return out


def _yield_order(chunk: dict[str, Any]) -> int:
    """Chunks of prose with several sentences give the model something to ask about; lists, tables and code
    mostly give nothing (6 in 10 chunks of a real PDF KB yielded no pair in arrival order)."""
    return -min(8, len(sentences(chunk["text"])))


def _round_robin(chunks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chunks ordered first of every document, then second of every document, ...: a time budget that stops
    half-way still covers all the documents."""
    by_doc: dict[str, list[dict[str, Any]]] = {}
    for c in chunks:
        by_doc.setdefault(c["path"], []).append(c)
    out = []
    for i in range(max((len(v) for v in by_doc.values()), default=0)):
        out += [v[i] for v in by_doc.values() if i < len(v)]
    return out


def _read_state(path: Path) -> dict[int, list[dict[str, str]]]:
    done: dict[int, list[dict[str, str]]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
                done[int(entry["chunk_id"])] = entry["pairs"]
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by a crash: that chunk is simply generated again
    return done


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line left without its newline by a crash."""
    if not path.exists():
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if data and not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)


def _filter(candidates: Iterable[tuple[dict[str, Any], Pair]], config: CurateConfig, report: dict) -> list[Row]:
    from nomoat.dataset.pii import scrub

    rows = []
    for chunk, pair in candidates:
        problem = grounding_problem(pair, chunk["text"], config) or quality_problem(pair, config)
        if problem:
            report["removed"][problem] += 1
            continue
        question, q_found = scrub(pair.question)
        answer, a_found = scrub(pair.answer)
        report["pii"].update(q_found)
        report["pii"].update(a_found)
        filters = ["grounded", "quality", "pii" + ("-replaced" if q_found or a_found else ""), "dedup"]
        meta = {
            "chunk_ids": [chunk["id"]],
            "source": chunk["path"],
            "location": chunk["location"],
            "generator": pair.generator,
            "filters": filters,
        }
        rows.append(
            {
                "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                "meta": meta,
            }
        )
    return rows


def _write(output: Path, train: list[Row], evals: list[Row], report: dict, kb: str, seconds: float) -> dict:
    from nomoat.dataset.formats import write_rows

    eval_path = output.with_name(output.stem + ".eval.jsonl")
    card_path = output.with_suffix(".md")
    write_rows(output, train)
    write_rows(eval_path, evals)
    summary = {
        "train": len(train),
        "eval": len(evals),
        "chunks": report["chunks"],
        "model_chunks": report["model_chunks"],
        "skipped": dict(report["skipped"]),
        "candidates": dict(report["candidates"]),
        "removed": dict(report["removed"]),
        "pii": dict(report["pii"]),
        "generators": dict(Counter(r["meta"]["generator"].split(":")[0] for r in train + evals)),
        "sources": len({r["meta"]["source"] for r in train + evals}),
        "output": str(output),
        "eval_output": str(eval_path),
        "card": str(card_path),
        "seconds": round(seconds, 1),
    }
    with atomic_writer(card_path) as f:
        f.write(dataset_card(summary, kb, train + evals))
    output.with_name(output.name + ".state.jsonl").unlink(missing_ok=True)
    return summary


def dataset_card(summary: dict[str, Any], kb: str, rows: Sequence[Row], examples: int = 5) -> str:
    """The dataset card: what went in, what each filter removed, what came out, and a few rows."""

    def table(title: str, counts: dict[str, int]) -> list[str]:
        lines = [f"| {title} | rows |", "|---|---:|"]
        return lines + [f"| {k} | {v} |" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])] + [""]

    out = [
        f"# Dataset card: {Path(summary['output']).name}",
        "",
        f"Built by `nomoat data build` from knowledge base `{kb}` in {summary['seconds']} s: "
        f"{summary['train']} training rows, {summary['eval']} eval rows, from {summary['sources']} documents "
        f"({summary['chunks']} chunks). The eval split holds whole documents that training never saw.",
        "",
        "## Chunks skipped",
        "",
        *table("reason", summary["skipped"] or {"(none)": 0}),
        "## Candidates by generator",
        "",
        *table("generator", summary["candidates"] or {"(none)": 0}),
        "## Removed by filter",
        "",
        *table("filter", summary["removed"] or {"(none)": 0}),
        "## Personal data replaced",
        "",
        *table("kind", summary["pii"] or {"(none)": 0}),
        "## Examples",
        "",
    ]
    for row in rows[:examples]:
        # a RAG row's first message is ask's system prompt: its question is in meta (dataset/raft.py)
        q, a = row["meta"].get("question") or row["messages"][-2]["content"], row["messages"][-1]["content"]
        out += [f"- **Q:** {q}", f"  **A:** {a}", f"  *({row['meta']['generator']}, {row['meta']['source']})*", ""]
    return "\n".join(out)


def format_summary(s: dict[str, Any]) -> str:
    """What ``nomoat data build`` prints."""
    removed = ", ".join(f"{k} {v}" for k, v in s["removed"].items()) or "none"
    pii = ", ".join(f"{k} {v}" for k, v in s["pii"].items()) or "none"
    return (
        f"{s['train']} training rows -> {s['output']}\n{s['eval']} eval rows -> {s['eval_output']}\n"
        f"dataset card -> {s['card']}\nfrom {s['chunks']} chunks of {s['sources']} documents in {s['seconds']} s; "
        f"removed: {removed}; personal data replaced: {pii}"
    )
