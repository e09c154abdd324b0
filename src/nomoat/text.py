"""What nomoat compares text by: content terms (stemmed, without stop words), sentences, and *facts*.

Used by the answer check (:mod:`nomoat.answer.citations`), the dataset filters and eval; pure functions, no I/O.

What counts as a *fact* (:func:`facts`): numbers and any word with a digit (``8080``, ``sha256``, ``HEAD~1``'s
``1``), ``--flags``/``-f``, ``snake_case``, ``dotted.names``, ``camelCase``/``CamelCase``, and text in backticks
or double quotes. These are what a small model invents; ordinary words are checked only as overlap.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_STOP = frozenset(
    """a about above after again all also am an and any are as at be because been before being below between both
    but by can cannot could did do does doing done down during each few for from further get gets got had has have
    having he her here hers him his how i if in into is it its itself just let like may me might more most much must
    my no nor not now of off on once only or other our out over own please same shall she should so some such than
    that the their them then there these they this those through to too under until up us use used using very want
    was way we were what when where which while who whom why will with would you your yours tell show explain know
    need does something thing things one make sure way""".split()  # noqa: SIM905  (a word list reads better as text)
)
_ABBREVIATIONS = frozenset(["e.g", "i.e", "etc", "vs", "cf", "mr", "mrs", "dr", "no", "fig", "al", "approx", "resp"])

# Words split at case changes and digits so `maxRetries`, `push_timeout` and "max retries" share terms.
_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")
_LIST_NUMBER = re.compile(r"^\s*\d+[.)]\s+", re.MULTILINE)  # "1. Run ..." enumerates; it states no fact
_QUOTED = re.compile(r"`([^`\n]+)`|\"([^\"\n]{2,200})\"|“([^”\n]{2,200})”")
_MANPAGE = re.compile(r"(?<![\w.-])[A-Za-z][\w.-]*\(\d\w*\)")
_FACT_PATTERNS = [
    re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*"),  # --flags, -f
    re.compile(r"\b\w*[A-Za-z0-9]_\w+"),  # snake_case, ORIG_HEAD
    re.compile(r"(?<![\w-])[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)+\b"),  # dotted.names, git-blame.html
    re.compile(r"\b[a-z]+[A-Z]\w*|\b[A-Z][a-z0-9]+[A-Z]\w*"),  # camelCase, CamelCase
    re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?!\w)"),  # numbers: 8080, 1.5, 8,080 (not the 2 of v2)
    re.compile(r"\b[A-Za-z]+\d\w*"),  # sha256, v2
]
# Sentence ends: . ! ? (plus closing quotes/brackets) then whitespace then something that starts a sentence.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]?\s+(?=[A-Z0-9\"'(\[`<$-])")
_NEW_UNIT_LINE = re.compile(r"\s*(?:[-*•+]\s|\d+[.)]\s|#|\$ |>>> |\|)")
_CODE_LINE = re.compile(r"\s*(?:\$ |>>> |\|)")


def stem(word: str) -> str:
    """A deliberately crude English stemmer: plurals and -ing/-ed, so "commits"/"committed" meet "commit"."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 5 and word.endswith("ing"):
        word = word[:-3]
    elif len(word) > 4 and word.endswith("ed"):
        word = word[:-2]
    elif len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        word = word[:-1]
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "ls":  # committ -> commit, stopp -> stop
        word = word[:-1]
    return word.removesuffix("e") if len(word) > 4 else word  # merge/merging/merged meet at "merg"


def terms(text: str) -> list[str]:
    """Content terms of ``text`` in order: lower-cased, stemmed words without stop words or single letters."""
    out = []
    for w in _WORD.findall(text):
        w = w.lower()
        if (len(w) > 1 or w.isdigit()) and w not in _STOP:
            out.append(stem(w))
    return out


def repetition(text: str) -> float:
    """Share of the word triples of ``text`` (split at white space) that repeat an earlier one: 0 for prose, near 1
    for a small model's loop ("--config-file: --config-file: ..."). Data filters and ask's check both use it."""
    words = text.lower().split()
    triples = list(zip(words, words[1:], words[2:], strict=False))
    return 1 - len(set(triples)) / len(triples) if triples else 0.0


def word_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    """Runs of ``n`` consecutive words (lower-cased ``\\w+``), in order; none for a text of fewer words. What
    "the same text" is measured by: eval answers copied from training (dataset filters), copies among search hits."""
    words = re.findall(r"\w+", text.lower())
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def sentences(text: str) -> list[tuple[int, int]]:
    """Spans ``(start, end)`` of the sentences of ``text``, stripped of surrounding whitespace and bullets.

    Paragraphs (blank lines) and list items, headings, shell prompts and table rows end a unit; wrapped lines
    are joined (so ``--soft`` followed by its description is one unit); inside a unit a period followed by a
    space and a capital ends a sentence, while ``file.txt``, ``e.g. this`` and ``--no-ff.`` at a line end do not.
    """
    spans: list[tuple[int, int]] = []
    for unit_start, unit_end in _units(text):
        start = unit_start
        for m in _SENTENCE_END.finditer(text, unit_start, unit_end):
            before = text[start : m.start()].rsplit(None, 1)
            if before and before[-1].rstrip(".").lower() in _ABBREVIATIONS:
                continue
            spans.append((start, m.start()))
            start = m.end()
        spans.append((start, unit_end))
    return [s for s in (strip_span(text, a, b) for a, b in spans) if s[1] > s[0]]


def _units(text: str) -> Iterable[tuple[int, int]]:
    start = 0
    pos = 0
    for line in text.splitlines(keepends=True):
        line_start, pos = pos, pos + len(line)
        prev = text[start:line_start].rstrip()
        last_line = prev.rsplit("\n", 1)[-1]
        if line_start > start and (
            not line.strip()
            or not prev
            or prev.endswith((".", "!", "?", ":"))
            or _NEW_UNIT_LINE.match(line)
            or _CODE_LINE.match(last_line)  # a command line is a unit of its own
        ):
            yield start, line_start
            start = line_start
    yield start, len(text)


def strip_span(text: str, a: int, b: int) -> tuple[int, int]:
    while a < b and (text[a].isspace() or (text[a] in "-*•+" and a + 1 < b and text[a + 1] == " ")):
        a += 1
    while b > a and text[b - 1].isspace():
        b -= 1
    return a, b


def facts(answer: str) -> list[str]:
    """The checkable facts of an answer (markers already removed), de-duplicated, in order of appearance."""
    text = _LIST_NUMBER.sub(" ", answer)
    found: list[str] = []
    for m in _QUOTED.finditer(text):
        found.append(next(g for g in m.groups() if g is not None).strip())
    text = _QUOTED.sub(" ", text)
    found += [m.group() for m in _MANPAGE.finditer(text)]  # git-log(1) is one name, not a name and a number
    text = _MANPAGE.sub(" ", text)
    for pattern in _FACT_PATTERNS:
        for m in pattern.finditer(text):
            fact = m.group().rstrip(".,-")
            if fact and fact.lower() not in _ABBREVIATIONS:
                found.append(fact)
    return [f for f in dict.fromkeys(found) if f.strip(" .,;:!?'\"")]


def occurs(fact: str, text: str) -> bool:
    """Whether ``fact`` is stated in ``text``: whole-token match, case-insensitive; numbers ignore , separators.

    Multi-word facts (quotes, code) match after collapsing whitespace and ignoring surrounding punctuation.
    """
    if re.fullmatch(r"\d+(?:[.,]\d+)*", fact):
        wanted = fact.replace(",", "")
        return any(n.replace(",", "") == wanted for n in re.findall(r"(?<![\w.])\d+(?:[.,]\d+)*", text))
    if re.search(r"\s", fact) or not re.fullmatch(r"[\w.~^/-]+", fact):
        return squash(fact.strip(" .,;:!?'\"")) in squash(text)
    return re.search(rf"(?<![\w-]){re.escape(fact)}(?![\w-])", text, re.IGNORECASE) is not None


def squash(text: str) -> str:
    return " ".join(text.lower().split())


_DECLINE = re.compile(
    r"\b(do not hold an answer|files do not (say|contain|mention)|(i do not|i don't) know"
    r"|not (in|mentioned in) the (files|sources))\b",
    re.IGNORECASE,
)


def declines(answer: str) -> bool:
    """True when an answer says the files do not hold it (the wording ``nomoat ask`` uses) or "I don't know"."""
    return bool(_DECLINE.search(answer))
