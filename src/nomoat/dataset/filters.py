"""The filters of ``nomoat data build``, each a pure function that names what it removes (counted in the dataset
card): chunks not worth learning, pairs not grounded in their chunk or of low quality, near-duplicates, and the
split by document with its leak check.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

from nomoat.config import CurateConfig
from nomoat.dataset.extract import Pair
from nomoat.text import facts, repetition, terms, word_ngrams

Row = dict[str, Any]
_LINK_LINE = re.compile(r"^\s*(?:[-*+]\s*)?\[[^\]]*\]\([^)]*\)\s*$|^\s*(?:[-*+]\s*)?<a\s", re.I)
_TOC_LINE = re.compile(r"^\s*(?:\d+(?:\.\d+)*\.?|[-*+])\s+\S.{0,60}$")
_CODE_OR_TABLE = re.compile(r"^\s*(?:```|~~~|\||\t|    )")
_SELF_REFERENCE = re.compile(r"\b(?:this|the|that) (?:passage|text|excerpt|snippet)\b|\[insert", re.I)


# -- 1. chunks worth learning ---------------------------------------------------------------------------------
def skip_reason(text: str, config: CurateConfig) -> str | None:
    """Why a chunk is not worth learning from, or None when it is."""
    words = re.findall(r"[A-Za-z]{2,}", text)
    if len(words) < config.min_chunk_words:
        return "near-empty"
    lines = [line for line in text.splitlines() if line.strip()]
    if sum(bool(_LINK_LINE.match(line)) for line in lines) > 0.5 * len(lines):
        return "navigation"
    if len(lines) >= 6 and sum(bool(_TOC_LINE.match(line)) for line in lines) > 0.7 * len(lines):
        return "table of contents"
    if sum(bool(_CODE_OR_TABLE.match(line)) for line in lines) > 0.6 * len(lines):
        return "code or table"
    return None


# -- 3. filters -------------------------------------------------------------------------------------------------
def grounding_problem(pair: Pair, chunk: str, config: CurateConfig) -> str | None:
    """Why the pair is not supported by its chunk, or None: the answer's content terms must occur in the
    chunk (``min_support``), its facts (numbers, identifiers, quoted names) verbatim, and the question must be
    about the chunk."""
    have = set(terms(chunk))
    answer_terms = set(terms(pair.answer))
    if not answer_terms:
        return "answer has no content"
    if len(answer_terms & have) / len(answer_terms) < config.min_support:
        return "answer not supported by its source"
    flat = " ".join(chunk.split())
    if any(" ".join(f.split()) not in flat for f in facts(pair.answer)):
        return "answer states a fact its source lacks"
    question_terms = set(terms(pair.question))
    if not question_terms or len(question_terms & have) / len(question_terms) < config.min_question_overlap:
        return "question not about its source"
    return None


def quality_problem(pair: Pair, config: CurateConfig) -> str | None:
    """Why the pair is low quality, or None: lengths, a question that is a question, repetition, letters."""
    q, a = pair.question, pair.answer
    if not config.min_question_chars <= len(q) <= config.max_question_chars:
        return "question length"
    if not config.min_answer_chars <= len(a) <= config.max_answer_chars:
        return "answer length"
    if not q.rstrip().endswith("?"):
        return "not a question"
    if a.rstrip().endswith("?"):
        return "answer is a question"
    if _SELF_REFERENCE.search(q + " " + a):
        return "refers to the passage, not the subject"
    if " ".join(re.findall(r"\w+", a.lower())) in " ".join(re.findall(r"\w+", q.lower())):
        return "answer repeats the question"
    if repetition(a) > config.max_repetition:
        return "repetitive"
    letters = sum(c.isalpha() for c in a)
    if letters < 0.5 * len(a.replace(" ", "")):
        return "mostly not words"
    if _script(q) != _script(a):
        return "language differs between question and answer"
    return None


def _script(text: str) -> str:
    """The writing system most letters of ``text`` belong to (LATIN, CYRILLIC, CJK, ...): a cheap language check
    that catches answers in another language than their question and mojibake, without a language model."""
    import unicodedata

    counts = Counter(unicodedata.name(c, "UNKNOWN").split()[0] for c in text if c.isalpha())
    return counts.most_common(1)[0][0] if counts else ""


def near_duplicates(rows: Sequence[Row], threshold: float, num_perm: int = 64) -> set[int]:
    """Indices of rows whose question+answer is a near-duplicate (MinHash Jaccard ≥ threshold over word
    3-shingles) of an earlier row."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    dropped = set()
    for i, row in enumerate(rows):
        words = re.findall(r"\w+", " ".join(m["content"] for m in row["messages"]).lower())  # punctuation-blind
        shingles = {" ".join(words[j : j + 3]) for j in range(max(1, len(words) - 2))}
        mh = MinHash(num_perm=num_perm, seed=1)
        for s in shingles:
            mh.update(s.encode())
        if lsh.query(mh):
            dropped.add(i)
        else:
            lsh.insert(str(i), mh)
    return dropped


# -- 4. split ---------------------------------------------------------------------------------------------------
def split_by_document(rows: Sequence[Row], eval_fraction: float, seed: int = 0) -> tuple[list[Row], list[Row]]:
    """Whole documents go to eval (in a seeded hash order) until it holds ``eval_fraction`` of the rows."""
    by_doc: dict[str, list[Row]] = {}
    for row in rows:
        by_doc.setdefault(row["meta"]["source"], []).append(row)
    order = sorted(by_doc, key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
    want = eval_fraction * len(rows)
    train: list[Row] = []
    evals: list[Row] = []
    for path in order:
        target = evals if len(evals) + len(by_doc[path]) <= want and len(by_doc) > 1 else train
        target.extend(by_doc[path])
    return train, evals


def leaking(evals: Sequence[Row], train: Sequence[Row], n: int = 8, limit: float = 0.5) -> set[int]:
    """Indices of eval rows whose answer shares more than ``limit`` of its word n-grams with training answers."""
    seen = {g for row in train for g in word_ngrams(_answer(row), n)}
    out = set()
    for i, row in enumerate(evals):
        grams = word_ngrams(_answer(row), n)
        if grams and sum(g in seen for g in grams) / len(grams) > limit:
            out.add(i)
    return out


def _answer(row: Row) -> str:
    return row["messages"][-1]["content"]
