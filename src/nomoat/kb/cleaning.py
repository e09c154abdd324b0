"""Text that is not content, masked out before chunking: site furniture repeated across a knowledge base's documents,
running headers and footers repeated across a PDF's pages, and footnote markers glued onto words.

Masking replaces characters by spaces and keeps every newline, so the text keeps its length: character offsets,
line numbers ("lines 10-24") and PDF page starts stay exactly those of the file, while a masked line becomes blank
and chunking, FTS and the embedder never see it. Pure functions; the knowledge base keeps the counts
(:mod:`nomoat.kb.store`) that say which lines repeat across documents.

A *line key* is a 63-bit hash of a line normalised for comparison (lower case, spaces collapsed). Across documents
digits count: "Invoice 1042" in one note and "Invoice 1043" in another are content, not furniture. Within one
PDF they do not: "Chapter 1: Introduction 4" and "... 5" are the same running header.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import replace

from nomoat.kb.readers import Extracted

MAX_LINE_CHARS = 160
"""Longer lines are prose, never furniture: they get no key (this also keeps the KB's line table small)."""
_DIGITS = re.compile(r"\d")
_FENCE = re.compile(r"\s*(```|~~~)")
_HEADING = re.compile(r"\s{0,3}#{1,6}\s")
_PAGE_NUMBER = re.compile(
    r"\s*(?:page\s+)?[-–—(]?\s*(?:\d{1,4}|[ivxlc]{1,7})\s*[-–—)]?\s*(?:(?:of|/)\s*\d{1,4})?\s*$", re.I
)
_FOOTNOTE = re.compile(r"(\d{1,2})\s+\S")  # a footnote's own line at the bottom of a page: "5 The leading dot ..."


def normalize(line: str, digits: bool = True) -> str:
    """Lower case, spaces collapsed; without ``digits``, every digit reads as 0."""
    line = line.lower() if digits else _DIGITS.sub("0", line.lower())
    return " ".join(line.split())


def key(line: str) -> int:
    """The line's key: a stable 63-bit hash of :func:`normalize` (an SQLite INTEGER)."""
    digest = hashlib.blake2b(normalize(line).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def _lines(text: str) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of each line of ``text``, without its newline."""
    start = 0
    while start <= len(text):
        end = text.find("\n", start)
        end = len(text) if end == -1 else end
        yield start, end
        start = end + 1


def _candidates(text: str) -> Iterator[tuple[int, int, int]]:
    """``(start, end, key)`` of the lines that could be furniture: short, with a letter, not a heading (headings
    are structure: "OPTIONS" repeats on every man page and must stay) and not inside a code fence."""
    fenced = False
    for start, end in _lines(text):
        line = text[start:end]
        if _FENCE.match(line):
            fenced = not fenced
            continue
        stripped = line.strip()
        if fenced or not stripped or len(stripped) > MAX_LINE_CHARS or _HEADING.match(line):
            continue
        if any(c.isalpha() for c in stripped):
            yield start, end, key(stripped)


def line_keys(doc: Extracted) -> set[int]:
    """The keys of the document's candidate lines (what the KB counts across documents)."""
    return {k for _, _, k in _candidates(doc.text)}


def threshold(documents: int, share: float, least: int) -> int | None:
    """How many documents must hold a line for it to be furniture: ``share`` of them, at least ``least``; None
    (nothing is furniture) while the knowledge base has fewer than ``least`` documents."""
    if documents < least:
        return None
    return max(least, -(-int(share * documents * 1000) // 1000))


def _blank(chars: list[str], start: int, end: int) -> None:
    chars[start:end] = " " * (end - start)


def mask_lines(doc: Extracted, furniture: set[int]) -> tuple[Extracted, int]:
    """``doc`` with its lines whose key is in ``furniture`` blanked; returns it and how many lines were masked.
    A document made only of such lines is left whole (a folder of one-line notes is not furniture)."""
    hits = [(a, b) for a, b, k in _candidates(doc.text) if k in furniture]
    if not hits:
        return doc, 0
    chars = list(doc.text)
    for a, b in hits:
        _blank(chars, a, b)
    text = "".join(chars)
    if not any(c.isalnum() for c in text):  # nothing but repeated lines: they are this document's content
        return doc, 0
    return replace(doc, text=text), len(hits)


def clean_pages(doc: Extracted, least: int = 3) -> tuple[Extracted, int]:
    """A PDF without its running headers and footers and with its footnote markers unglued.

    A header or footer is the first or last non-blank line of a page whose normalised form starts or ends at
    least ``least`` pages (digits normalised, so "Chapter 1: Introduction 4" and "... 5" are one line), or a line
    that is only a page number. A footnote marker is the digit ``n`` glued to the end of a word (".RData5") on a
    page whose bottom lines start a footnote ``n``; the first such digit in the page's body is masked.
    Returns the cleaned document and how many lines or markers were masked.
    """
    if doc.kind != "pdf" or len(doc.pages) < 2:
        return doc, 0
    bounds = [*doc.pages, len(doc.text)]
    pages = [(bounds[i], bounds[i + 1]) for i in range(len(doc.pages))]
    edges = [_edge_lines(doc.text, a, b) for a, b in pages]
    counts = Counter(normalize(doc.text[s:e], digits=False) for page in edges for s, e in page)
    chars: list[str] | None = None
    masked = 0
    for (a, b), page in zip(pages, edges, strict=True):
        for s, e in page:
            line = doc.text[s:e]
            if counts[normalize(line, digits=False)] >= least or _PAGE_NUMBER.fullmatch(line):
                chars = chars if chars is not None else list(doc.text)
                _blank(chars, s, e)
                masked += 1
        for s in _footnote_markers(doc.text, a, b):
            chars = chars if chars is not None else list(doc.text)
            chars[s] = " "
            masked += 1
    return (replace(doc, text="".join(chars)) if chars is not None else doc), masked


def _edge_lines(text: str, a: int, b: int) -> list[tuple[int, int]]:
    """The first and the last non-blank line of ``text[a:b]``; none for a page of fewer than 3 lines (a header
    and a footer need a body between them)."""
    lines = [(s + a, e + a) for s, e in _lines(text[a:b]) if text[s + a : e + a].strip()]
    return [lines[0], lines[-1]] if len(lines) >= 3 else []


def _footnote_markers(text: str, a: int, b: int) -> Iterable[int]:
    """Offsets of glued footnote digits in the page ``text[a:b]`` (see :func:`clean_pages`)."""
    lines = [(s + a, e + a) for s, e in _lines(text[a:b]) if text[s + a : e + a].strip()]
    tail = lines[-6:]  # footnotes sit at the bottom of the page
    notes = {m.group(1): s for s, e in tail if (m := _FOOTNOTE.match(text[s:e]))}
    body_end = min(notes.values(), default=b)
    for number in notes:
        # after a letter, or after a letter and its closing punctuation: "structure2." or "file.RData5", never "2.1"
        glued = re.compile(rf"(?:(?<=[A-Za-z])|(?<=[A-Za-z][.,;:)\]”\"'])){number}(?=[\s.,;:)]|$)")
        for m in glued.finditer(text, a, body_end):
            line_start = max(a, text.rfind("\n", a, m.start()) + 1)
            if " " in text[line_start : m.start()].strip():  # the first word of a line ("C.1 Preliminaries") is
                yield m.start()  # a section number, not a marker
                break
