"""``nomoat eval RUN``: base vs tuned vs base+RAG vs tuned+RAG on the run's held-out questions.

:func:`score` asks any set of configurations (callables question -> answer) through an :class:`AnswerCache`
and scores them with :mod:`nomoat.scoring` (pure functions, checked exactly with known answers); :func:`run`
builds the four real ones from the run's base GGUF and its newest export (or ``--model``) and adds each model's
held-out perplexity; :mod:`nomoat.report` draws the HTML report.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nomoat.config import DEFAULT_KB, EvalConfig
from nomoat.errors import UserError
from nomoat.evaluation.cache import AnswerCache, Answerer
from nomoat.evaluation.scoring import (
    abstained,
    bootstrap_ci,
    contains,
    gains,
    holds,
    leaked,
    normalize,
    token_f1,
)
from nomoat.paths import read_json, write_json

# -- the four configurations ------------------------------------------------------------------------

# Questions no personal knowledge base should answer: abstention is measured on these (the RAG rows should
# decline them; plain models usually invent something).
UNANSWERABLE = (
    "What was the exact attendance at the 1923 FA Cup final?",
    "What is the phone number of the mayor of Tromsø?",
    "How many calories are in a banana?",
    "Who won the 1987 Tour de France?",
    "What is the boiling point of ethanol in Kelvin?",
    "What is the airspeed velocity of an unladen swallow?",
)


def questions_from_run(run_dir: Path, require_eval: bool = True) -> tuple[list[dict[str, Any]], dict[str, set[str]]]:
    """The run's held-out rows as ``{"question", "answer", "source"}``, and what it trained on:
    ``{"sources": document paths, "questions": normalised questions}``."""
    from nomoat.dataset.formats import read_rows

    config = read_json(run_dir / "config.json")
    if not config.get("eval_data") and require_eval:
        raise UserError(f"run {run_dir.name} has no eval split: give --questions FILE.jsonl")
    eval_rows = read_rows(config["eval_data"]) if config.get("eval_data") else []
    questions = [_question(row) for _, row, _ in eval_rows if row is not None]
    trained = [_question(row) for _, row, _ in read_rows(config["data"]) if row is not None]
    sources = {str(q["source"]) for q in trained if q["source"]}
    return questions, {"sources": sources, "questions": {normalize(q["question"]) for q in trained}}


def read_questions(path: str | Path) -> list[dict[str, Any]]:
    """A user's question file: JSONL of ``{"question", "answer"[, "source"]}``; bad lines named by number."""
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read questions {path}: {exc}") from None
    questions, bad = [], []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            ok = isinstance(item, dict) and all(
                isinstance(item.get(k), str) and item[k] for k in ("question", "answer")
            )
        except ValueError:
            ok = False
        if ok:
            questions.append({"question": item["question"], "answer": item["answer"], "source": item.get("source")})
        else:
            bad.append(n)
    if bad:
        raise UserError(f'{path}: lines {", ".join(map(str, bad[:5]))} are not {{"question", "answer"}} objects')
    return questions


def _question(row: dict[str, Any]) -> dict[str, Any]:
    """A row as ``{"question", "answer", "source"}``; a RAG row (dataset/raft.py) keeps its bare question and
    reference answer in ``meta``, since its messages hold the whole ask prompt and a cited reply."""
    messages, meta = row["messages"], row.get("meta") or {}
    question = meta.get("question") or messages[-2]["content"]
    return {"question": question, "answer": meta.get("answer") or messages[-1]["content"], "source": meta.get("source")}


def score(
    questions: Sequence[dict[str, Any]],
    answerers: dict[str, Answerer],
    unanswerable: Sequence[str] = UNANSWERABLE,
    seed: int = 0,
    progress: bool = False,
    cache: AnswerCache | None = None,
    chunk_texts: Callable[[list[int]], dict[int, str]] | None = None,
    deadline: float | None = None,
    min_questions: int = 5,
) -> dict[str, Any]:
    """Ask every configuration every question (and the unanswerable ones); metrics with bootstrap intervals.

    With a ``deadline`` (``time.monotonic()`` seconds), no new question is started after it once
    ``min_questions`` are answered: the unanswerable ones come first, then the questions one at a time across all
    configurations, so every configuration is scored on the same questions (``"questions"`` in the result says
    how many).

    Citation accuracy is over a configuration's answered (not abstaining) questions that cite something: the
    share where a cited chunk (``chunk_texts(ids) -> {id: text}``, else the quote) :func:`holds` the answer."""
    from tqdm import tqdm

    cache = cache or AnswerCache(None, {})
    table: dict[str, Any] = {}
    answers: dict[str, list[str]] = {}
    f1: dict[str, list[float]] = {}
    bar = tqdm(total=len(answerers) * (len(questions) + len(unanswerable)), unit="answer", desc="eval",
               disable=not progress, dynamic_ncols=True)  # fmt: skip
    asked = [*({"question": u} for u in unanswerable), *questions]
    every: dict[str, list[dict[str, Any]]] = {name: [] for name in answerers}
    for i, q in enumerate(asked):  # question by question, so a deadline leaves every configuration the same set
        if deadline is not None and i >= len(unanswerable) + min_questions and time.monotonic() > deadline:
            break
        for name, ask in answerers.items():
            bar.set_postfix(configuration=name)
            every[name].append(cache.answer(name, q["question"], ask))
            bar.update(1)
    questions = questions[: len(every[next(iter(every))]) - len(unanswerable)] if answerers else questions
    for name in answerers:
        got = every[name][len(unanswerable) :]
        declined = [float(abstained(g["answer"])) for g in every[name][: len(unanswerable)]]
        texts = [g["answer"] for g in got]
        pairs = list(zip(texts, questions, strict=True))
        f1[name] = [token_f1(a, q["answer"]) for a, q in pairs]
        cited = [_cites_answer(g, q["answer"], chunk_texts) for g, q in zip(got, questions, strict=True)
                 if g["citations"] and not abstained(g["answer"])]  # fmt: skip
        seconds = sorted(g["seconds"] for g in got)
        modes = [g.get("mode") for g in got]
        fell_back = [g["fallback"] for g in got if g.get("fallback")]  # set for quoted answers only
        table[name] = {
            "f1": bootstrap_ci(f1[name], seed=seed),
            "contains": bootstrap_ci([float(contains(a, q["answer"])) for a, q in pairs], seed=seed),
            "citation_accuracy": bootstrap_ci(cited, seed=seed),
            "cited_answers": len(cited),
            "abstain_unanswerable": bootstrap_ci(declined, seed=seed),
            "abstain_answerable": sum(map(abstained, texts)) / max(1, len(texts)),
            "seconds_p50": _quantile(seconds, 0.5),
            "seconds_p95": _quantile(seconds, 0.95),
            **_mode_metrics(modes, seed),
            "fallbacks": dict(Counter(map(_reason_kind, fell_back)).most_common(3)),
        }
        answers[name] = texts
    bar.close()
    return {"questions": len(questions), "unanswerable": len(unanswerable), "table": table,
            "gains": gains(f1, seed), "disagreements": _disagreements(questions, answers, f1),
            "cached": cache.hits}  # fmt: skip


MODES = ("generated", "extractive", "abstained", "declined")
"""How ``nomoat ask`` answered (:class:`nomoat.answer.rag.Answer`): where tuning's gain shows."""


def _mode_metrics(modes: Sequence[str | None], seed: int) -> dict[str, Any]:
    """For configurations answering through ask: the share of answerable questions answered in the model's own
    words that passed the fact check (``generated``), the share of each mode, and the check's pass rate over the
    answers the model wrote (generated or replaced by quotes). Plain configurations get ``generated`` None."""
    if not modes or any(m is None for m in modes):
        return {"generated": None}
    wrote = [float(m == "generated") for m in modes if m in ("generated", "extractive")]
    return {"generated": bootstrap_ci([float(m == "generated") for m in modes], seed=seed),
            "modes": {m: modes.count(m) / len(modes) for m in MODES},
            "fact_check_pass": bootstrap_ci(wrote, seed=seed)}  # fmt: skip


def _reason_kind(reason: str) -> str:
    """The check that failed, without its specifics: "'X' is not in the cited source(s)", "only N of N ..."."""
    return re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'X'", reason))


def _cites_answer(got: dict[str, Any], reference: str, chunk_texts: Callable | None) -> float:
    ids = [c["chunk_id"] for c in got["citations"] if c.get("chunk_id") is not None]
    whole = chunk_texts(ids) if chunk_texts and ids else {}
    texts = [whole.get(c.get("chunk_id"), c.get("quote", "")) for c in got["citations"]]
    return float(any(holds(t, reference) for t in texts))


def _quantile(values: Sequence[float], q: float) -> float | None:
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def _disagreements(questions: Sequence[dict[str, Any]], answers: dict[str, list[str]], f1: dict[str, list[float]],
                   most: int = 5) -> list:  # fmt: skip
    """Questions where the configurations' F1 differ most: the examples worth reading."""
    rows = []
    for i in range(len(questions)):
        f1s = {name: scores[i] for name, scores in f1.items()}
        rows.append((max(f1s.values()) - min(f1s.values()), i, f1s))
    rows.sort(key=lambda r: (-r[0], r[1]))
    return [{**questions[i], "answers": {n: answers[n][i] for n in answers}, "f1": f1s}
            for spread, i, f1s in rows[:most] if spread > 0]  # fmt: skip


def answerers(models: dict[str, Any], kb: str | None, gen: Any) -> dict[str, Answerer]:
    """Each model plain, then each with ``nomoat ask`` on ``kb`` (when given): ``name`` and ``name+RAG``."""
    from nomoat.answer import rag

    def plain(model: Any) -> Answerer:
        return lambda q: model.chat([{"role": "user", "content": q}], gen).text().strip()

    def grounded(model: Any) -> Answerer:
        return lambda q: rag.ask(q, kb, model=model, gen=gen)

    configs = {name: plain(model) for name, model in models.items()}
    if kb is not None:
        configs |= {f"{name}+RAG": grounded(model) for name, model in models.items()}
    return configs


def held_out_text(questions: Sequence[dict[str, Any]], kb: str | None) -> tuple[str, str]:
    """Text of the held-out documents for perplexity: their chunks in ``kb``, else the reference answers (which
    are extracts of them). Returns (text, what it is)."""
    from nomoat.kb import store

    paths = sorted({q["source"] for q in questions if q.get("source")})
    if kb is not None and paths:
        with store.connect(kb) as conn:
            chunks = store.chunks_of(conn, paths)
        if chunks:
            return "\n\n".join(chunks), f"{len(chunks)} chunks of {len(paths)} held-out documents"
    return "\n\n".join(q["answer"] for q in questions), f"the {len(questions)} reference answers"


def perplexity(model: Any, text: str, window: int = 512, windows: int = 4) -> float | None:
    """Perplexity of the first ``windows`` windows of ``text`` under a loaded GGUF model (None for other kinds)."""
    import math

    from nomoat.llm import llamacpp

    tokens = model.tokenize(text)[: window * windows]
    if getattr(model, "ref", None) is None or model.ref.kind != "gguf" or len(tokens) < 2:
        return None
    parts = [tokens[i : i + window] for i in range(0, len(tokens), window)]
    parts = [p for p in parts if len(p) >= 2]
    nll = [math.log(llamacpp.perplexity(model.path, p, decode_tokens=0)["ppl"]) * (len(p) - 1) for p in parts]
    return math.exp(sum(nll) / sum(len(p) - 1 for p in parts))


def run(
    run: str | Path | None = None,
    *,
    model: str | Path | None = None,
    kb: str | None = DEFAULT_KB,
    questions: str | Path | None = None,
    limit: int | None = None,
    seed: int | None = None,
    output: str | Path | None = None,
    progress: bool = False,
    config: EvalConfig | None = None,
    time_budget: float | None = None,
    policy: Any = None,
) -> dict[str, Any]:
    """``nomoat eval [RUN]``: base vs tuned (the run's newest GGUF export, or ``model``) vs each with retrieval,
    on held-out questions (the run's eval split, or ``questions``: JSONL of ``{"question", "answer"[, "source"]}``).
    Without a run, ``model`` (default: the bundled one) is compared with itself plus retrieval on ``questions``.

    Questions from training documents, or asked word for word in training, are left out and counted (``leaked``),
    so a tuned model is never scored on what it was trained on. ``time_budget`` (seconds) stops asking new
    questions once most of it is spent (at least 5 are asked; see :func:`score`). With a ``policy``, each model
    also answers the red-team set (:mod:`nomoat.policy.redteam`): the policy's refusals and the model's own.
    Writes ``eval.json``, the HTML report (RUN/eval.html or ``output``) and a cache of answers beside them, so a
    second run only redraws it."""
    from nomoat.evaluation import report
    from nomoat.finetune import runs

    config = config or EvalConfig()
    limit = config.limit if limit is None else limit
    seed = config.seed if seed is None else seed
    if limit < 1:
        raise UserError("--limit must be at least 1")
    run_dir = runs.find_run(run) if run is not None else None
    if run_dir is None and questions is None:
        raise UserError("give a run to evaluate (nomoat eval RUN), or --questions FILE.jsonl to test --model alone")
    report_path = Path(output) if output else (run_dir / "eval.html" if run_dir else Path("nomoat-eval.html"))
    if report_path.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"the report is HTML: give -o NAME.html (got {report_path})")
    try:
        report_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write the report in {report_path.parent}: {exc.strerror}") from None
    held_out, trained = questions_from_run(run_dir, questions is None) if run_dir else ([], {"sources": set()})
    asked = read_questions(questions) if questions is not None else held_out
    flagged = set(leaked(asked, trained["sources"], trained.get("questions", set())))
    if flagged and len(flagged) == len(asked):
        raise UserError(f"all {len(asked)} questions come from the run's training data: scores on them would "
                        "measure memory, not what tuning gained (ask about documents it did not train on)")  # fmt: skip
    asked = [q for i, q in enumerate(asked) if i not in flagged]
    random.Random(seed).shuffle(asked)
    asked = asked[:limit]
    if not asked:
        raise UserError(f"run {run_dir.name if run_dir else ''} has no held-out questions left to ask")
    _check_kb(kb)
    deadline = None if time_budget is None else time.monotonic() + 0.85 * time_budget  # perplexity comes after
    refs = _models(run_dir, model)
    text, described = held_out_text(asked, kb)
    result = _evaluate(asked, refs, kb, text, seed, report_path.with_suffix(".cache.jsonl"), progress, config,
                       deadline, policy)  # fmt: skip
    result["perplexity_text"] = described
    result |= {"run": str(run_dir) if run_dir else None, "kb": kb, "leaked": len(flagged), "seed": seed,
               "models": {n: str(r.path) for n, r in refs.items()}, "report": str(report_path),
               "json": str(report_path.with_suffix(".json"))}  # fmt: skip
    metrics = runs.read_metrics(run_dir) if run_dir else []
    write_json(report_path.with_suffix(".json"), result)
    report.write(report_path, result, metrics)
    if run_dir:
        runs.update_manifest(run_dir, eval={"report": str(report_path), "json": result["json"]})
    return result


def _check_kb(kb: str | None) -> None:
    from nomoat.kb import catalog

    if kb is not None and kb not in {k["name"] for k in catalog.list_kbs()}:
        raise UserError(f"knowledge base {kb!r} not found (give --kb NAME, or --no-kb to compare models only)")


def _models(run_dir: Path | None, model: str | Path | None) -> dict[str, Any]:
    """``{"base": ref, "tuned": ref}`` for a run (tuned: ``model`` or its newest export), else ``{"base": ref}``."""
    from nomoat.llm import models

    if run_dir is None:
        return {"base": models.resolve(model)}
    base = read_json(run_dir / "config.json")["model"]
    return {"base": models.resolve(base), "tuned": models.resolve(model if model is not None else run_dir)}


def _evaluate(asked: list[dict[str, Any]], refs: dict[str, Any], kb: str | None, text: str, seed: int,
              cache_path: Path, progress: bool, config: EvalConfig, deadline: float | None = None,
              policy: Any = None) -> dict[str, Any]:  # fmt: skip
    """Load the models, ask through the answer cache, add each model's perplexity of ``text`` to its rows."""
    from nomoat.config import GenerationConfig
    from nomoat.kb import store
    from nomoat.llm import runtime

    greedy = GenerationConfig(temperature=0.0, max_tokens=config.max_tokens, seed=seed)
    loaded = {name: runtime.load(ref) for name, ref in refs.items()}
    kb_state = ""
    if kb is not None:
        with store.connect(kb) as conn:
            kb_state = store.state(conn)
    identities = {}
    for name, model in loaded.items():  # the file that answers: a faster copy of a slow format (llm.formats)
        stat = model.path.stat()
        model_id = f"{model.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{greedy}"
        identities |= {name: model_id, f"{name}+RAG": f"{model_id}:{kb}:{kb_state}"}

    def chunk_texts(ids: list[int]) -> dict[int, str]:
        with store.connect(kb) as conn:  # type: ignore[arg-type]
            return {i: row["text"] for i, row in store.get_chunks(conn, ids).items()}

    cache = AnswerCache(cache_path, identities)
    result = score(asked, answerers(loaded, kb, greedy), seed=seed, progress=progress, cache=cache,
                   chunk_texts=chunk_texts if kb is not None else None, deadline=deadline)  # fmt: skip
    for name, model in loaded.items():
        ppl = perplexity(model, text)
        for row in (name, f"{name}+RAG"):
            if row in result["table"]:
                result["table"][row]["perplexity"] = ppl
    if policy is not None:  # the owner's answer policy: the shipped red-team set, each model with and without it
        from nomoat.policy import redteam

        redteam.add_to(result, redteam.run(loaded, policy, greedy, cache), seed)
    return result
