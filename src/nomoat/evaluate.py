"""``nomoat eval RUN``: base vs tuned vs base+RAG vs tuned+RAG on the run's held-out questions.

The metrics are pure functions over strings and numbers, so the table can be checked exactly with known
answers; :func:`score` runs any set of configurations (callables question -> answer), :func:`run` builds the
four real ones from the run's base GGUF and its newest export. (An HTML report with plots is still to come.)

* :func:`token_f1`: SQuAD-style token F1 after normalisation (lower case, punctuation and articles removed).
* :func:`contains`: the reference's normalised text occurs in the answer (a short fact stated verbatim).
* :func:`abstained`: the answer says the files / it does not know (what ``nomoat ask`` says when it abstains).
* :func:`bootstrap_ci`: a percentile bootstrap interval of a mean, seeded, for small samples.
* :func:`leaked`: eval questions whose source documents were in the training split.
"""

from __future__ import annotations

import random
import re
import string
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from nomoat.errors import UserError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_ABSTAIN = re.compile(
    r"\b(do not hold an answer|files do not (say|contain|mention)|(i do not|i don't) know"
    r"|not (in|mentioned in) the (files|sources))\b",
    re.IGNORECASE,
)


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (the SQuAD answer normalisation)."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def token_f1(answer: str, reference: str) -> float:
    """Harmonic mean of token precision and recall between the normalised answer and reference."""
    got, want = normalize(answer).split(), normalize(reference).split()
    if not got or not want:
        return float(got == want)
    common = sum((Counter(got) & Counter(want)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


def contains(answer: str, reference: str) -> bool:
    """True when the normalised reference occurs in the normalised answer, on word boundaries."""
    want = normalize(reference)
    return bool(want) and f" {want} " in f" {normalize(answer)} "


def abstained(answer: str) -> bool:
    """True when the answer declines: the phrasing ``nomoat ask`` uses, or a plain "I don't know"."""
    return bool(_ABSTAIN.search(answer))


def bootstrap_ci(values: Sequence[float], *, level: float = 0.95, samples: int = 2000, seed: int = 0) -> tuple:
    """(mean, low, high): the mean and a percentile bootstrap interval; the same seed gives the same interval."""
    if not values:
        return (float("nan"), float("nan"), float("nan"))
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(samples))
    tail = (1 - level) / 2
    low, high = means[int(tail * (samples - 1))], means[int((1 - tail) * (samples - 1))]
    return (sum(values) / n, low, high)


def leaked(questions: Iterable[dict[str, Any]], training_sources: set[str]) -> list[int]:
    """Indices of questions whose ``source`` document is also a source of training rows."""
    return [i for i, q in enumerate(questions) if q.get("source") and q["source"] in training_sources]


# -- the four configurations ------------------------------------------------------------------------
Answerer = Callable[[str], str]

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


def questions_from_run(run_dir: Path, require_eval: bool = True) -> tuple[list[dict[str, Any]], set[str]]:
    """The run's held-out rows as ``{"question", "answer", "source"}`` and the set of its training sources."""
    from nomoat import runs
    from nomoat.datasets import read_rows

    config = runs.read_json(run_dir / "config.json")
    if not config.get("eval_data") and require_eval:
        raise UserError(f"run {run_dir.name} has no eval split: give --questions FILE.jsonl")
    eval_rows = read_rows(config["eval_data"]) if config.get("eval_data") else []
    questions = [_question(row) for _, row, _ in eval_rows if row is not None]
    sources = {str((row.get("meta") or {}).get("source")) for _, row, _ in read_rows(config["data"]) if row}
    return questions, sources - {"None"}


def read_questions(path: str | Path) -> list[dict[str, Any]]:
    """A user's question file: JSONL of ``{"question", "answer"[, "source"]}``; bad lines named by number."""
    import json

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
    messages = row["messages"]
    return {"question": messages[-2]["content"], "answer": messages[-1]["content"],
            "source": (row.get("meta") or {}).get("source")}  # fmt: skip


def score(
    questions: Sequence[dict[str, Any]],
    answerers: dict[str, Answerer],
    unanswerable: Sequence[str] = UNANSWERABLE,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Ask every configuration every question (and the unanswerable ones); metrics with bootstrap intervals."""
    from tqdm import tqdm

    table: dict[str, Any] = {}
    answers: dict[str, list[str]] = {}
    bar = tqdm(total=len(answerers) * (len(questions) + len(unanswerable)), unit="answer", desc="eval",
               disable=not progress, dynamic_ncols=True)  # fmt: skip
    for name, answer in answerers.items():
        bar.set_postfix(configuration=name)
        got, seconds = [], []
        for q in questions:
            start = time.perf_counter()
            got.append(answer(q["question"]))
            seconds.append(time.perf_counter() - start)
            bar.update(1)
        declined = []
        for u in unanswerable:
            declined.append(float(abstained(answer(u))))
            bar.update(1)
        table[name] = {
            "f1": bootstrap_ci([token_f1(a, q["answer"]) for a, q in zip(got, questions, strict=True)], seed=seed),
            "contains": bootstrap_ci(
                [float(contains(a, q["answer"])) for a, q in zip(got, questions, strict=True)], seed=seed
            ),
            "abstain_unanswerable": bootstrap_ci(declined, seed=seed),
            "abstain_answerable": sum(map(abstained, got)) / max(1, len(got)),
            "seconds_p50": sorted(seconds)[len(seconds) // 2] if seconds else None,
        }
        answers[name] = got
    bar.close()
    return {"questions": len(questions), "unanswerable": len(unanswerable), "table": table,
            "disagreements": _disagreements(questions, answers)}  # fmt: skip


def _disagreements(questions: Sequence[dict[str, Any]], answers: dict[str, list[str]], most: int = 5) -> list:
    """Questions where the configurations' F1 differ most: the examples worth reading."""
    rows = []
    for i, q in enumerate(questions):
        f1s = {name: token_f1(got[i], q["answer"]) for name, got in answers.items()}
        rows.append((max(f1s.values()) - min(f1s.values()), i, f1s))
    rows.sort(key=lambda r: (-r[0], r[1]))
    return [{**questions[i], "answers": {n: answers[n][i] for n in answers}, "f1": f1s}
            for spread, i, f1s in rows[:most] if spread > 0]  # fmt: skip


def format_table(result: dict[str, Any]) -> str:
    """The terminal table: one row per configuration, means with 95 % intervals."""

    def cell(ci: tuple) -> str:
        mean, low, high = ci
        return f"{mean:.2f} [{low:.2f}-{high:.2f}]"

    head = f"{'configuration':14s} {'token F1':>18s} {'contains answer':>18s} {'abstains (unans.)':>18s} {'p50 s':>6s}"
    left_out = f"; {result['leaked']} from training documents left out" if result.get("leaked") else ""
    lines = [f"{result['questions']} questions, {result['unanswerable']} unanswerable{left_out}", head]
    for name, row in result["table"].items():
        p50 = row["seconds_p50"]
        lines.append(
            f"{name:14s} {cell(row['f1']):>18s} {cell(row['contains']):>18s} "
            f"{cell(row['abstain_unanswerable']):>18s} {p50 if p50 is None else round(p50, 2):>6}"
        )
    return "\n".join(lines)


def answerers(base: Any, tuned: Any, kb: str | None, gen: Any) -> dict[str, Answerer]:
    """The four configurations over two loaded models: plain chat, and ``nomoat ask`` on ``kb`` when given."""
    from nomoat import rag

    def plain(model: Any) -> Answerer:
        return lambda q: model.chat([{"role": "user", "content": q}], gen).text().strip()

    def grounded(model: Any) -> Answerer:
        return lambda q: rag.ask(q, kb, model=model, gen=gen)["answer"]

    configs = {"base": plain(base), "tuned": plain(tuned)}
    if kb is not None:
        configs |= {"base+RAG": grounded(base), "tuned+RAG": grounded(tuned)}
    return configs


def run(
    run: str | Path,
    *,
    kb: str | None = "default",
    questions: str | Path | None = None,
    limit: int = 30,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """``nomoat eval RUN``: base vs tuned (its newest GGUF export) vs each with retrieval, on held-out questions
    (the run's eval split, or ``questions``: a JSONL file of ``{"question", "answer"[, "source"]}``).

    Questions from training documents are left out and counted (``leaked``), so a tuned model is never scored on
    what it was trained on."""
    from nomoat import models, runs, runtime, store
    from nomoat.config import GenerationConfig

    run_dir = runs.find_run(run)
    config = runs.read_json(run_dir / "config.json")
    held_out, training_sources = questions_from_run(run_dir, require_eval=questions is None)
    asked = read_questions(questions) if questions is not None else held_out
    flagged = set(leaked(asked, training_sources))
    asked = [q for i, q in enumerate(asked) if i not in flagged]
    random.Random(seed).shuffle(asked)
    asked = asked[:limit]
    if not asked:
        raise UserError(f"run {run_dir.name} has no held-out questions left to ask")
    if kb is not None and kb not in {k["name"] for k in store.list_kbs()}:
        raise UserError(f"knowledge base {kb!r} not found (give --kb NAME, or --no-kb to compare models only)")
    greedy = GenerationConfig(temperature=0.0, max_tokens=96, seed=seed)
    base, tuned = runtime.load(config["model"]), runtime.load(models.resolve(run_dir))
    result = score(asked, answerers(base, tuned, kb, greedy), seed=seed, progress=progress)
    result |= {"run": str(run_dir), "kb": kb, "leaked": len(flagged), "seed": seed}
    runs.write_json(run_dir / "eval.json", result)
    runs.update_manifest(run_dir, eval={"path": str(run_dir / "eval.json")})
    return result
