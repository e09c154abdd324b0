"""Deterministic question/answer pairs from a chunk: useful data even when the local model is weak.

Each generator reads one shape of text that states a fact, and words a question a user would ask about it; the
answer is the source's own sentence, so it is grounded by construction (curate still checks it):

* man-page names        ``git-stash - Stash the changes in a dirty working directory away``
                        → "What does git-stash do?"
* definitions           ``A worktree is a checkout of a branch in its own folder.`` → "What is a worktree?"
* options               ``--soft`` / ``--soft::`` followed by its description → "What does --soft do in git-reset?"
* key/value facts       ``Owner: Platform team`` → "What is the owner in <document>?"
* section summaries     the first sentences under an informative heading → "What does <document> say about <it>?"

Titles and headings are worded without their section numbers ("8.7. Enumerated Types" → "Enumerated Types"): no
one asks about "8.7.", and ask's check would reject every answer for not stating the number the question names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple


class Pair(NamedTuple):
    question: str
    answer: str
    generator: str


_MAN_NAME = re.compile(r"^(?P<name>[A-Za-z][\w.+-]*) - (?P<desc>[^\n]{10,200})$", re.M)
_DEFINITION = re.compile(
    r"^(?P<subject>(?:[Aa]n? |[Tt]he )?[`\"']?[A-Za-z][\w`\"' .+-]{1,50}?) (?P<verb>is|are) "
    r"(?P<rest>(?:an?|the|one|used|how|what|where)\b[^\n]{10,300})$"
)
# "--soft" on its own line (HTML rendering) or "--soft::" (AsciiDoc), then the description.
_OPTION = re.compile(
    r"^(?P<opts>(?:-{1,2}(?:\[no-\])?[A-Za-z][\w-]*(?:[= ][^\s:]+)?(?:, )?)+)(?:::)?[ \t]*\n(?:[ \t]*\n)*"
    r"(?:-{1,2}(?:\[no-\])?[A-Za-z][^\n]*\n(?:[ \t]*\n)*)*"  # more spellings of the same option
    r"[ \t]*(?P<desc>[A-Z][^\n]{15,}(?:\n[ \t]*[^\s-][^\n]*)*)",
    re.M,
)
_KEY_VALUE = re.compile(r"^(?P<key>[A-Z][A-Za-z ]{1,30}):[ \t]+(?P<value>[^\n]{2,150})$", re.M)
_SENTENCE = re.compile(r"[^.!?\n](?:[^.!?]|\.(?=\S))*[.!?](?=\s|$)")
# fmt: off
_NOT_SUBJECTS = frozenset([  # words that start a sentence but never name what it defines
    "this", "that", "it", "there", "these", "those", "they", "here", "which", "what", "who", "one", "so", "by",
    "if", "when", "then", "also", "now", "thus", "hence", "in", "on", "for", "with", "different", "other", "such",
    "to", "from", "at", "as", "default", "example", "note", "see", "each", "every", "all", "any", "some", "both",
])
_CLAUSE_WORDS = frozenset(["that", "which", "who", "whose", "where"])  # "Replaces the substring that is ...": a clause
_GENERIC_HEADINGS = {
    "name", "synopsis", "options", "see also", "git", "examples", "example", "notes", "contents", "note", "tip",
    "caution", "warning", "important", "arguments", "parameters", "return value",  # headings that name no topic
}
# fmt: on
_ABOUT_HEADINGS = {"description", "overview", "introduction", "summary", "about"}
# "8.7.", "E.14.", "II.", "Chapter 46.", "Appendix A." or "1.2" before a capital: a section number, not a name
_NUMBERING = re.compile(
    r"^(?:(?i:chapter|appendix|part|section)\s+[\dA-Z]+(?:\.\d+)*\.?|(?:[A-Z]|[IVX]+|\d+)(?:\.\d+)*\."
    r"|\d+(?:\.\d+)+(?=\s+[A-Z]))\s+(?=\S)"
)


def extract_pairs(text: str, subject: str, heading: str = "") -> list[Pair]:
    """All pairs the chunk ``text`` yields; ``subject`` names its document, ``heading`` is its heading path."""
    found = [*_man_names(text), *_definitions(text), *_options(text, subject), *_key_values(text, subject)]
    found += _section(text, subject, heading)
    seen, out = set(), []
    for pair in found:
        if pair.question.lower() not in seen:
            seen.add(pair.question.lower())
            out.append(pair)
    return out


def unnumbered(title: str) -> str:
    """``title`` without a leading section number: "8.7. Enumerated Types" -> "Enumerated Types"."""
    return _NUMBERING.sub("", title.strip())


def _man_names(text: str) -> Iterator[Pair]:
    for m in _MAN_NAME.finditer(text):
        desc = m.group("desc").rstrip(".")
        if set(re.findall(r"[a-z]+", desc.lower())) <= set(re.findall(r"[a-z]+", m.group("name").lower())):
            continue  # "gitnamespaces - Git namespaces" says nothing the name does not
        yield Pair(f"What does {m.group('name')} do?", f"{m.group('name')}: {desc}.", "extractive:name")


def _definitions(text: str) -> Iterator[Pair]:
    for sentence in _sentences(text):
        m = _DEFINITION.match(sentence)
        if not m:
            continue
        subject = re.sub(r"[`\"']", "", m.group("subject")).strip()
        article = re.search(r"\b(?:An?|The) ", subject)
        if article and article.start() > 0:  # a glossary line: "branch A branch is ..." -> "A branch"
            subject = subject[article.start() :]
        words = subject.split()
        if not words or len(words) > 4 or words[0].lower() in _NOT_SUBJECTS or _CLAUSE_WORDS & {*map(str.lower, words)}:
            continue
        subject = subject[0].lower() + subject[1:] if words[0] in {"A", "An", "The"} else subject
        question = f"What {m.group('verb')} {subject}?"
        yield Pair(question, sentence, "extractive:definition")


def _options(text: str, subject: str) -> Iterator[Pair]:
    for m in _OPTION.finditer(text):
        option = m.group("opts").split(",")[0].split("=")[0].split()[0].rstrip(":")
        description = " ".join(m.group("desc").split())
        first = _sentences(description)
        answer = " ".join(first[:2]) if first else description
        # the answer names the option: "Be quiet." alone does not say which option it is about, and ask's check
        # (rightly) rejects an answer that leaves out the identifier the question asks about
        yield Pair(f"What does the {option} option of {subject} do?", f"{option}: {answer}", "extractive:option")


def _key_values(text: str, subject: str) -> Iterator[Pair]:
    for m in _KEY_VALUE.finditer(text):
        key, value = m.group("key").strip(), m.group("value").strip()
        if len(key.split()) > 3 or key.lower() in _GENERIC_HEADINGS or key.split()[0].lower() in _NOT_SUBJECTS:
            continue
        yield Pair(f"What is the {key.lower()} in {subject}?", f"{key}: {value}", "extractive:key-value")


def _section(text: str, subject: str, heading: str) -> list[Pair]:
    last = unnumbered(heading.split(" > ")[-1]) if heading else ""
    # only the chunk that opens the section: later chunks of it would ask the same question with other answers
    if not last or last.lower() in _GENERIC_HEADINGS or not text.lstrip().startswith("#"):
        return []
    body = [s for s in _sentences(_strip_headings(text)) if len(s.split()) >= 5]
    if not body or not body[0][0].isupper():  # a lower-case start is a fragment of a sentence cut by a list
        return []
    answer = " ".join(body[:2])
    if last.lower() in _ABOUT_HEADINGS:
        return [Pair(f"What is {subject} for?", answer, "extractive:section")]
    if last.lower() == subject.lower():  # a page's opening section: "What does Range Types say about range types?"
        return [Pair(f"What is {subject} about?", answer, "extractive:section")]
    return [Pair(f"What does {subject} say about {last.lower()}?", answer, "extractive:section")]


def _strip_headings(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def _sentences(text: str) -> list[str]:
    """Prose sentences of ``text`` (code fences, tables and rules left out)."""
    prose = re.sub(r"```.*?(```|$)|~~~.*?(~~~|$)", " ", text, flags=re.S)
    out = []
    for paragraph in re.split(r"\n[ \t]*\n", prose):  # a heading or list line never runs into the next one
        lines = [line for line in paragraph.splitlines() if not re.match(r"\s*(\||[-=+]{4,}|#)", line)]
        out += [m.group().strip() for m in _SENTENCE.finditer(" ".join(" ".join(lines).split()))]
    return out
