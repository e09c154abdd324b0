"""Evaluation metrics for ``nomoat eval`` (issue 8): answer correctness, abstention, confidence intervals.

Pure functions over strings and numbers, so the report's numbers can be checked exactly with known answers.
The four-configuration runner (base / tuned / base+RAG / tuned+RAG) and the HTML report build on these.

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
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

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
