"""Check an answer against its sources: citation markers, facts, supporting quotes, and the extractive fallback.

Pure functions over strings; no model, no I/O. A *source* is ``{"path", "location", "text"}`` and is numbered from
1 in the order given (the order of the prompt). Quotes are always exact substrings of a source's ``text``, so they
appear verbatim in the text extracted from the file.

Terms, sentences and facts come from :mod:`nomoat.text`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

from nomoat.text import facts, occurs, repetition, sentences, squash, strip_span, terms

Source = dict[str, Any]
"""A numbered source: ``{"path", "location", "text"}`` (+ ``"chunk_id"``), a retrieval hit or a prompt's copy."""


class Citation(TypedDict):
    """One ``[n]`` of an answer: the source it names and an exact quote from it."""

    n: int
    path: str
    location: str
    quote: str
    chunk_id: NotRequired[int]
    """The cited chunk, so the whole passage can be read (``nomoat eval``, the UI)."""


@dataclass(frozen=True)
class Verdict:
    """What :func:`verify` found: the answer as shown (markers renumbered) and its citations, or why it failed."""

    answer: str = ""
    citations: list[Citation] = field(default_factory=list)
    reason: str | None = None
    """None when the answer passed; else one line saying which check failed."""

    @property
    def passed(self) -> bool:
        return self.reason is None


_MARKER = re.compile(r"\s?\[(?:sources?\s*)?(\d+(?:\s*(?:,|;|-|–|and)\s*\d+)*)\]", re.IGNORECASE)


# -- citation markers -------------------------------------------------------------------------------------------
def parse_markers(answer: str, n_sources: int) -> tuple[str, list[int]]:
    """Normalise ``[n]`` markers: keep those naming a source 1..n_sources as ``[n]`` runs, drop the others.

    Accepts ``[1, 2]``, ``[1-3]``, ``[source 2]``. Returns the rewritten answer and the cited source numbers in
    order of first appearance.
    """
    cited: list[int] = []

    def rewrite(m: re.Match[str]) -> str:
        numbers: list[int] = []
        for part in re.split(r"\s*(?:,|;|and)\s*", m.group(1)):
            bounds = [int(x) for x in re.split(r"\s*[-–]\s*", part) if x]
            lo, hi = bounds[0], bounds[-1]
            numbers += range(lo, hi + 1) if hi - lo < 10 else [lo, hi]
        valid = [n for n in dict.fromkeys(numbers) if 1 <= n <= n_sources]
        cited.extend(n for n in valid if n not in cited)
        lead = " " if m.group().startswith(" ") else ""
        return lead + "".join(f"[{n}]" for n in valid) if valid else ""

    return _MARKER.sub(rewrite, answer), cited


def clean_echo(answer: str) -> str:
    """Remove prompt scaffolding a small model copies into its answer: ``<<<``/``>>>`` fences and the
    ``(path, location)`` that follows a source number in the prompt's headers (``[1] (a.md, lines 1-4)``)."""

    def header(m: re.Match[str]) -> str:
        looks_like_source = re.search(r"[./§]|\b(?:lines?|page)\b", m.group(2))
        return m.group(1) if looks_like_source else m.group()

    answer = re.sub(r"(\[\d+\])[ \t]*(\((?:[^()\n]|\([^()\n]*\))*,(?:[^()\n]|\([^()\n]*\))*\))", header, answer)
    answer = re.sub(r"[ \t]*(?:<<<|>>>)[ \t]*", " ", answer)
    return re.sub(r"[ \t]{2,}", " ", answer).strip()


def renumber(answer: str, order: Sequence[int]) -> str:
    """Rewrite markers ``[old]`` as ``[new]`` where ``new`` is the 1-based position of ``old`` in ``order``."""
    mapping = {old: new for new, old in enumerate(order, start=1)}
    return re.sub(r"\[(\d+)\]", lambda m: f"[{mapping[int(m.group(1))]}]", answer)


def strip_markers(answer: str) -> str:
    return re.sub(r"\s?\[\d+\]", "", answer)


# -- quotes -----------------------------------------------------------------------------------------------------
def best_quote(text: str, weights: dict[str, float], wanted: Sequence[str] = (), max_chars: int = 200) -> str:
    """The sentence of ``text`` that best supports an answer: an exact substring of at most ``max_chars``.

    Scores a sentence by the summed ``weights`` of its distinct terms, plus 2 per ``wanted`` fact it states; a
    sentence longer than ``max_chars`` is cut to its best-scoring window (at word ends).
    """
    spans = sentences(text) or [strip_span(text, 0, len(text))]

    a, b = max(spans, key=lambda s: (_score(text[s[0] : s[1]], weights, wanted), -s[0]))
    return clip(text, a, b, weights, wanted, max_chars)


def clip(text: str, a: int, b: int, weights: dict[str, float], wanted: Sequence[str] = (), max_chars: int = 200) -> str:
    """``text[a:b]`` if short enough, else its best-scoring window of whole words of at most ``max_chars``."""
    if b - a <= max_chars:
        return text[a:b]
    best, best_score = (a, a + max_chars), -1.0
    for s in [a] + [a + m.end() for m in re.finditer(r"\s+", text[a:b])]:
        e = min(b, s + max_chars)
        if e < b and (spaces := [m.start() for m in re.finditer(r"\s", text[s : e + 1])]):
            e = s + spaces[-1]  # end at a word end
        window = text[s:e]
        score = _score(window, weights, wanted)
        if score > best_score:
            best, best_score = (s, e), score
        if e == b:
            break
    s, e = strip_span(text, *best)
    return text[s:e]


def _score(piece: str, weights: dict[str, float], wanted: Sequence[str]) -> float:
    return sum(weights.get(t, 0.0) for t in set(terms(piece))) + 2.0 * sum(occurs(f, piece) for f in wanted)


# -- extractive answers ------------------------------------------------------------------------------------------
def extractive(
    question: str, sources: Sequence[Source], *, max_sentences: int = 2, max_chars: int = 200
) -> tuple[str, list[Citation]]:
    """Answer with the sentence(s) of ``sources`` that best match ``question``, quoted and cited.

    A sentence scores the IDF (over all sentences of the sources) of the distinct question terms it contains,
    divided by its length in units of 20 terms (when longer), times 1.15 for answer-like content (a command,
    flag, number or identifier), times its chunk's coverage of the question terms, divided by ``1 + 0.6 * rank``
    of its source: retrieval's ranking is the best evidence of which chunk answers. Headings, code fences and
    sentences of fewer than 3 content terms are not answers. (Tuned on 50 git-doc questions: the pick cites
    the gold page as often as retrieval ranks it first, vs 20 of 50 for a flat 0.04 rank decay.)
    A second sentence is added when it scores at least 60% of the best and brings a question term the first
    lacks, or when the first ends with ":" (it introduces the next line). Returns ``(answer, citations)``; the
    answer is ``""`` when the sources have no text.
    """
    units = [(i, a, b) for i, src in enumerate(sources) for a, b in sentences(src["text"])]
    if not units:
        return "", []
    unit_terms = [set(terms(sources[i]["text"][a:b])) for i, a, b in units]
    wanted = set(terms(question))
    df = {t: sum(t in ts for ts in unit_terms) for t in wanted}
    idf = {t: math.log((len(units) + 1) / (df[t] + 0.5)) for t in wanted if df[t]}
    chunk_coverage = [len(wanted & set(terms(s["text"]))) / max(1, len(wanted)) for s in sources]

    def score(j: int) -> float:
        i, a, b = units[j]
        piece = sources[i]["text"][a:b]
        if len(unit_terms[j]) < 3 or piece.startswith(("#", "```", "~~~")):
            return 0.0
        matched = sum(idf.get(t, 0.0) for t in unit_terms[j])
        answer_like = 1.15 if facts(piece) else 1.0
        length = max(1.0, len(unit_terms[j]) / 20)
        fragment = 0.5 if a == 0 and piece[0].islower() else 1.0  # a chunk's overlap can start mid-sentence
        return fragment * matched * answer_like * chunk_coverage[i] / (1.0 + 0.6 * i) / length

    scores = [score(j) for j in range(len(units))]
    best = max(range(len(units)), key=lambda j: (scores[j], -j))
    if scores[best] == 0.0:  # no question term anywhere: the top source's first real sentence is the best we have
        best = next((j for j in range(len(units)) if len(unit_terms[j]) >= 3), 0)
    chosen = [best]
    i, a, b = units[best]
    follows = [j for j in range(best + 1, len(units)) if units[j][0] == i and not _fence(units[j], sources)][:1]
    if sources[i]["text"][a:b].endswith(":") and follows:
        chosen += follows  # "To undo it, run:" is followed by the command
    elif max_sentences > 1:
        missing = {t for t in idf if t not in unit_terms[best]}
        first = squash(sources[i]["text"][a:b])
        extra = [j for j in range(len(units)) if j != best and scores[j] >= 0.6 * scores[best] > 0]
        extra = [j for j in extra if unit_terms[j] & missing and not _overlaps(first, _unit_text(units[j], sources))]
        if extra:
            chosen.append(max(extra, key=lambda j: (scores[j], -j)))
    weights = {t: idf.get(t, 0.0) + 0.1 for t in wanted}
    order: list[int] = []
    parts, citations = [], []
    for j in chosen[:max_sentences]:
        i, a, b = units[j]
        quote = clip(sources[i]["text"], a, b, weights, (), max_chars)
        if i not in order:
            order.append(i)
            citations.append(_citation(len(order), sources[i], quote))
        parts.append(f'"{" ".join(quote.split())}" [{order.index(i) + 1}]')
    return " ".join(parts), citations


def _unit_text(unit: tuple[int, int, int], sources: Sequence[Source]) -> str:
    i, a, b = unit
    return str(sources[i]["text"][a:b])


def _fence(unit: tuple[int, int, int], sources: Sequence[Source]) -> bool:
    return _unit_text(unit, sources).startswith(("```", "~~~"))


def _overlaps(first: str, other: str) -> bool:
    """Whether two sentences repeat each other (neighbouring chunks overlap, so a sentence can come twice)."""
    other = squash(other)
    return other in first or first in other


def _citation(n: int, source: Source, quote: str) -> Citation:
    citation: Citation = {"n": n, "path": source["path"], "location": source["location"], "quote": quote}
    if source.get("chunk_id") is not None:  # lets `nomoat eval` read the whole cited chunk
        citation["chunk_id"] = source["chunk_id"]
    return citation


# -- checking a generated answer ----------------------------------------------------------------------------------
MAX_REPETITION = 0.3
"""Most of a generated answer's word triples that may repeat earlier ones (the dataset filter's default too): a
looping answer ("--config-file: --config-file: ...", 0.84) can pass every other test, its words all in the source."""


def verify(
    answer: str, question: str, sources: Sequence[Source], *, min_support: float = 0.5, max_chars: int = 200
) -> Verdict:
    """Check a generated answer against the sources it was given.

    1. ``[n]`` markers must name a given source; others are dropped, the rest renumbered 1.. in order of use.
       An answer that loops (more than ``MAX_REPETITION`` of its word triples repeat) fails.
    2. Every fact (see :func:`facts`) must occur in a cited source; if the answer cites nothing, in any source,
       which is then cited.
    3. At least ``min_support`` of the answer's content terms must occur in the cited sources (or, citing
       nothing, in the source sharing most of them, which is then cited).
    4. The answer must share a term with the question or state a fact, and each citation gets a quote
       (:func:`best_quote`); citations whose quote shares nothing with the answer are dropped, and some quote
       must share a term with the question (or its source state a fact the question and the answer both name),
       so an answer lifted from an off-topic passage ("PWNED") fails.
    5. When the question names facts the sources hold (an option, a file, a number: ``--no-ff``), the answer or
       a quote supporting it must state one of them: a grounded answer about the neighbouring option
       ("--no-stat" for a question on "--no-ff") answers another question.

    An answer that fails only because it cites the wrong source ("[3]" for what [1] says, as the 135M model
    often does) is checked again as if it cited nothing, and passes re-cited to the source that holds it.

    Returns a :class:`Verdict`: the answer and its citations when it passes, else the reason it failed.
    """
    checked = _verify(answer, question, sources, min_support, max_chars)
    if checked.passed or not _MARKER.search(answer):
        return checked
    recited = _verify(_MARKER.sub("", answer), question, sources, min_support, max_chars)
    return recited if recited.passed else checked


def _verify(answer: str, question: str, sources: Sequence[Source], min_support: float, max_chars: int) -> Verdict:
    text, cited = parse_markers(clean_echo(answer), len(sources))
    body = strip_markers(text)
    answer_terms = set(terms(body))
    if not answer_terms:
        return Verdict(reason="the answer has no content")
    if repetition(body) > MAX_REPETITION:
        return Verdict(reason="the answer repeats itself")
    src_terms = [set(terms(s["text"])) for s in sources]
    found = facts(body)
    # A source states what its text says, and also its own file name ("see git-blame.html"); numbers only count
    # from the text, so "version 2" is never supported by a path like "v2/notes.md" or a location "lines 1-2".
    stated = {
        n: {f for f in found if occurs(f, s["text"]) or (not re.search(r"\d", f) and occurs(f, s["path"]))}
        for n, s in enumerate(sources, start=1)
    }
    added: list[int] = []
    for fact in found:
        holders = [n for n in stated if fact in stated[n]]
        if cited and not set(holders) & set(cited):
            return Verdict(reason=f"{fact!r} is not in the cited source(s)")
        if not holders:
            return Verdict(reason=f"{fact!r} is not in any source")
        if not cited and not set(holders) & set(added):
            added.append(holders[0])
    scope = cited + added
    if not scope:
        scope = [max(range(1, len(sources) + 1), key=lambda n: (len(answer_terms & src_terms[n - 1]), -n))]
        added = scope
    covered = answer_terms & set().union(*(src_terms[n - 1] for n in scope))
    if len(covered) < min_support * len(answer_terms):
        return Verdict(reason=f"only {len(covered)} of {len(answer_terms)} answer terms occur in the sources")
    question_terms = set(terms(question))
    if not answer_terms & question_terms and not found:  # "[1] is a reference to [2]." passes every other test
        return Verdict(reason="the answer states no fact and shares no term with the question")
    weights = {t: 1.0 for t in answer_terms} | {t: 0.5 for t in question_terms - answer_terms}
    quotes = {n: best_quote(sources[n - 1]["text"], weights, found, max_chars) for n in scope}
    # A cited source that states none of the facts and shares no term with the answer supports nothing: uncite it.
    idle = [n for n in scope if not set(terms(quotes[n])) & answer_terms and not any(f in stated[n] for f in found)]
    scope = [n for n in scope if n not in idle]
    if not scope:
        return Verdict(reason="the cited sources do not support the answer")
    for n in idle:
        text = re.sub(rf"\s?\[{n}\]", "", text)
    asked = [f for f in facts(question) if any(occurs(f, s["text"]) for s in sources)]
    # A quote that shares no word with the question can still address it: "-U: User name to connect as [1]." for
    # "What does the -U option do?" is supported by the line under "-U", and that line never repeats the option.
    if not any(set(terms(quotes[n])) & question_terms or stated[n] & set(asked) for n in scope):
        return Verdict(reason="the supporting text does not address the question")
    if asked and not any(occurs(f, piece) for f in asked for piece in [body, *(quotes[n] for n in scope)]):
        return Verdict(reason=f"the answer does not address {asked[0]!r}, which the question asks about")
    if added and not cited:
        marks = "".join(f"[{n}]" for n in added)
        text = re.sub(r"([.!?]?)\s*$", lambda m: f" {marks}{m.group(1)}", text, count=1)
    citations = [_citation(new, sources[old - 1], quotes[old]) for new, old in enumerate(scope, start=1)]
    return Verdict(renumber(text, scope), citations)
