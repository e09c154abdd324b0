"""Structure-aware chunks with provenance. Pure functions over `Extracted`; no I/O.

A document is cut into sections at headings (markdown `#` and setext lines, rst underlines, and the `#` lines the
html/docx readers emit; one section per PDF page), sections into blocks at blank lines (a fenced code block is one
block), and blocks larger than the target at sentence, line or word ends. Blocks are packed greedily up to
`target_tokens`; the next chunk of the same section starts with about `overlap_tokens` of the previous one's tail.

Invariants (tested): `chunk.text == doc.text[chunk.start:chunk.end]`; no chunk is empty or starts/ends with
whitespace; every non-blank character of the text is in some chunk; no chunk crosses a PDF page boundary or the
edge of a span read by OCR.
Everything works on offsets into the one text, so chunking is linear in its length.
"""

from __future__ import annotations

import bisect
import itertools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePath

from nomoat.kb.readers import Extracted
from nomoat.kb.readers.text import Span

CHARS_PER_TOKEN = 4
"""English prose is ~4 characters per BPE/WordPiece token; code is a bit denser, CJK much denser."""


@dataclass(frozen=True)
class Chunk:
    text: str
    """Exactly doc.text[start:end], so citations can quote it verbatim."""
    start: int
    end: int
    location: str
    """"page 3" (pdf), "lines 10-24" / "line 7" (text kinds), "§ Install > Linux" (html/docx with a heading), or
    where OCR read it ("page 3, scanned (OCR)", "image 2 on page 5 (OCR)", "photo.jpg (OCR)": Extracted.ocr)."""
    heading: str
    """Heading path "Install > Linux", or "" (pdf, text, code, or before the first heading)."""


def estimate_tokens(text: str) -> int:
    """Character based: ceil(len / 4). Cheap and needs no tokenizer; chunking uses the same rule on spans."""
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


def embedding_text(path: str, title: str, heading: str, text: str) -> str:
    """What the embedder sees for a chunk: a one-line context header, then the chunk.

    A chunk deep in a manual page ("The command saves your local modifications away ...") does not say which
    command or file it is about; its file name, title and heading path do. Prefixing them lets the vector find
    the page a question is about (measured on git-doc: docs/benchmarks.md). The stored and shown text is the
    chunk alone; only its vector sees the header.
    """
    parts = [PurePath(path).stem]
    if title and title.lower() not in (heading.lower(), parts[0].lower()) and title not in heading:
        parts.append(title)
    if heading:
        parts.append(heading)
    return " > ".join(parts) + "\n" + text


def chunk(doc: Extracted, *, target_tokens: int = 200, overlap_tokens: int = 30) -> list[Chunk]:
    """Cut `doc.text` into chunks of at most ~`target_tokens` (see `estimate_tokens`).

    A single block larger than the target is split; smaller blocks (paragraphs, code fences) are never split.
    Raises ValueError when target_tokens < 1 or overlap_tokens is not in [0, target_tokens).
    """
    if target_tokens < 1 or not 0 <= overlap_tokens < target_tokens:
        raise ValueError(
            f"need target_tokens >= 1 and 0 <= overlap_tokens < target_tokens, got {target_tokens}, {overlap_tokens}"
        )
    text = doc.text
    max_chars, overlap = target_tokens * CHARS_PER_TOKEN, overlap_tokens * CHARS_PER_TOKEN
    prose = doc.kind not in ("code", "csv", "json")
    fences: list[tuple[int, int]] = []
    if doc.kind == "pdf" and doc.pages:
        bounds = [*doc.pages, len(text)]
        sections = [(bounds[i], bounds[i + 1], "", i + 1) for i in range(len(doc.pages))]
    elif doc.kind in ("markdown", "html", "docx"):
        headings, fences = _markdown_headings(text)
        sections = _sections(text, headings)
    elif doc.kind == "rst":
        sections = _sections(text, _rst_headings(text))
    else:
        sections = [(0, len(text), "", 0)]
    if doc.ocr:
        sections = _apart(sections, doc.ocr)

    chunks: list[Chunk] = []
    line_pos, line_no = 0, 1
    for start, end, heading, page in sections:
        for a, b in _pack(
            text, _pieces(text, start, end, fences, max_chars, overlap, prose), max_chars, overlap, prose
        ):
            line_no += text.count("\n", line_pos, a)  # starts never go backwards, so this stays linear
            line_pos = a
            span = _span_at(doc.ocr, a) if doc.ocr else None
            if span:
                location = span[2]
            elif page:
                location = f"page {page}"
            elif heading and doc.kind in ("html", "docx"):
                location = f"§ {heading}"
            else:
                last = line_no + text.count("\n", a, b)
                location = f"line {line_no}" if last == line_no else f"lines {line_no}-{last}"
            chunks.append(Chunk(text[a:b], a, b, location, heading))
    return chunks


# --- sections ----------------------------------------------------------------------------------------------------

# One pass finds fences, ATX headings and setext headings; fenced lines are skipped by searching past the fence.
_MD = re.compile(
    r"^(?P<fence>[ ]{0,3}(?P<fc>`{3,}|~{3,})[^\n]*)$"
    r"|^(?P<atx>[ ]{0,3}(?P<hashes>\#{1,6})[ \t]+(?P<atxt>[^\n]*))$"
    r"|^(?P<setext>(?P<st>[ ]{0,3}[^\s>\-*+#|][^\n]*)\n[ ]{0,3}(?P<su>=+|-+)[ \t]*)$",
    re.M,
)
_ADORN = r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~]"""
_RST = re.compile(
    rf"^(?:(?P<over>{_ADORN})(?P=over)+[ \t]*\n)?(?P<title>[^\n]+)\n(?P<under>{_ADORN})(?P=under)+[ \t]*$", re.M
)

Heading = tuple[int, int, int, str]  # (start of the heading's first line, end of its last line, level, title)
Section = tuple[int, int, str, int]  # (start, end, heading path, page number or 0)


def _markdown_headings(text: str) -> tuple[list[Heading], list[tuple[int, int]]]:
    headings: list[Heading] = []
    fences: list[tuple[int, int]] = []
    closers: dict[str, re.Pattern[str]] = {}
    pos = 0
    if text.startswith(("---\n", "+++\n")):  # front matter: its closing `---` is no setext underline
        close = text.find("\n" + text[:3] + "\n", 3)
        pos = close + 4 if close != -1 else 0
    while (m := _MD.search(text, pos)) is not None:
        if m.group("fence") is not None:
            marker = m.group("fc")
            if marker not in closers:
                closers[marker] = re.compile(rf"^[ ]{{0,3}}{marker[0]}{{{len(marker)},}}[ \t]*$", re.M)
            close = closers[marker].search(text, m.end())
            end = close.end() if close else len(text)  # an unclosed fence runs to the end, as in CommonMark
            fences.append((m.start(), end))
            pos = end
            continue
        if m.group("atx") is not None:
            title = m.group("atxt").rstrip()  # the optional closing #s, without a regex that backtracks
            bare = title.rstrip("#")
            headings.append(
                (m.start(), m.end(), len(m.group("hashes")), bare if bare[-1:] in ("", " ", "\t") else title)
            )
        else:
            headings.append((m.start(), m.end(), 1 if m.group("su")[0] == "=" else 2, m.group("st")))
        pos = m.end()
    return headings, fences


def _rst_headings(text: str) -> list[Heading]:
    """Section titles: a line underlined (and optionally overlined) by one repeated punctuation character at least
    as long as the title, after a blank line. Levels follow the order in which adornment styles first appear."""
    headings: list[Heading] = []
    styles: list[tuple[str, bool]] = []
    pos = last_end = 0
    while (m := _RST.search(text, pos)) is not None:
        title, under, over = m.group("title"), m.group("under"), m.group("over")
        underline = text[m.start("under") : m.end()].rstrip()
        previous = text[text.rfind("\n", 0, max(m.start() - 1, 0)) + 1 : m.start()]
        blank_before = m.start() == 0 or m.start() == last_end + 1 or not previous.strip()
        ok = (
            title.strip() != ""
            and len(underline) >= len(title.strip())
            and title.strip().strip(title.strip()[0]) != ""  # not just another adornment line
            and ((over is None and not title[0].isspace()) or over == under)
            and blank_before
        )
        if not ok:
            pos = text.find("\n", m.start()) + 1 or len(text)
            continue
        style = (under, over is not None)
        if style not in styles:
            styles.append(style)
        headings.append((m.start(), m.end(), styles.index(style) + 1, title))
        pos = last_end = m.end()
    return headings


def _sections(text: str, headings: list[Heading]) -> list[Section]:
    """Heading-delimited sections with their heading path. A heading with no body of its own is merged into the
    next section when that one is its child, so "# Install" + "## Linux ..." is one chunk, not a bare title."""
    sections: list[Section] = []
    first = headings[0][0] if headings else len(text)
    if text[:first].strip():
        sections.append((0, first, "", 0))
    path: list[tuple[int, str]] = []
    carry: int | None = None
    for i, (start, head_end, level, title) in enumerate(headings):
        end = headings[i + 1][0] if i + 1 < len(headings) else len(text)
        while path and path[-1][0] >= level:
            path.pop()
        path.append((level, _clean_title(title)))
        start = carry if carry is not None else start
        if not text[head_end:end].strip() and i + 1 < len(headings) and headings[i + 1][2] > level:
            carry = start
            continue
        carry = None
        sections.append((start, end, " > ".join(t for _, t in path if t), 0))
    return sections


def _clean_title(title: str) -> str:
    title = " ".join(title.replace("¶", "").split())
    return title if len(title) <= 100 else title[:99] + "…"


def _apart(sections: list[Section], spans: Sequence[Span]) -> list[Section]:
    """Sections cut at the edges of the OCR'd spans, so each span is chunked on its own and a chunk's location
    can say which picture it was read from."""
    edges = sorted({e for a, b, _ in spans for e in (a, b)})
    out: list[Section] = []
    for start, end, heading, page in sections:
        cuts = [start, *(e for e in edges[bisect.bisect_right(edges, start) :] if e < end), end]
        out += [(a, b, heading, page) for a, b in itertools.pairwise(cuts) if a < b]
    return out


def _span_at(spans: Sequence[Span], pos: int) -> Span | None:
    """The OCR'd span holding ``pos`` (spans are in order and apart)."""
    i = bisect.bisect_right(spans, pos, key=lambda span: span[0]) - 1
    return spans[i] if i >= 0 and spans[i][0] <= pos < spans[i][1] else None


# --- blocks, pieces and packing ----------------------------------------------------------------------------------

_BLANK = re.compile(r"\n[ \t]*\n")
_NONSPACE = re.compile(r"\S")
_SPACE = re.compile(r"\s")
_SENTENCE_END = re.compile(r"[.!?。！？][\"')\]»”’]*(?=\s)")


def _trim(text: str, a: int, b: int) -> tuple[int, int] | None:
    """The span without its leading/trailing whitespace, or None when it is blank. Cost O(b - a)."""
    m = _NONSPACE.search(text, a, b)
    if m is None:
        return None
    return m.start(), m.start() + len(text[m.start() : b].rstrip())


def _skip_space(text: str, a: int, b: int) -> int | None:
    """First non-whitespace position in [a, b), or None. Cost O(whitespace skipped)."""
    m = _NONSPACE.search(text, a, b)
    return m.start() if m else None


def _pieces(
    text: str, start: int, end: int, fences: list[tuple[int, int]], max_chars: int, overlap: int, prose: bool
) -> Iterator[tuple[int, int]]:
    """Blocks of the section (split at blank lines outside fences), oversize ones cut to fit with the overlap."""
    fi = bisect.bisect_left(fences, (start, -1))
    pos = search_from = start
    while True:
        m = _BLANK.search(text, search_from, end)
        brk = m.start() if m else end
        while fi < len(fences) and fences[fi][1] <= brk:
            fi += 1
        if m and fi < len(fences) and fences[fi][0] <= brk:
            search_from = fences[fi][1]  # blank lines inside a code fence do not split it
            continue
        block = _trim(text, pos, brk)
        if block is not None:
            a, b = block
            if b - a <= max_chars:
                yield a, b
            else:
                k = bisect.bisect_right(fences, (a, len(text))) - 1
                in_fence = k >= 0 and fences[k][0] <= a < fences[k][1]
                yield from _split(text, a, b, max_chars - overlap, prose and not in_fence)
        if m is None:
            return
        pos = search_from = m.end()


def _split(text: str, a: int, b: int, limit: int, prose: bool) -> Iterator[tuple[int, int]]:
    """Cut [a, b) into pieces of at most `limit` chars, each ending at the best boundary in its second half:
    sentence end (prose) or blank line / line end (code), then any line end, then whitespace, else a hard cut."""
    while b - a > limit:
        lo, hi = a + limit // 2, a + limit
        cut = -1
        if prose:
            for m in _SENTENCE_END.finditer(text, lo, hi):
                cut = m.end()
        else:
            nl = text.rfind("\n\n", lo, hi)
            cut = nl + 1 if nl != -1 else -1
        if cut == -1:
            nl = text.rfind("\n", lo, hi)
            cut = nl + 1 if nl != -1 else max(text.rfind(" ", lo, hi), text.rfind("\t", lo, hi))
        if cut <= a:
            cut = hi
        piece = _trim(text, a, cut)
        if piece:
            yield piece
        next_a = _skip_space(text, cut, b)  # b ends on non-whitespace, so this stops before it
        if next_a is None:
            return
        a = next_a
    yield a, b


def _pack(
    text: str, pieces: Iterator[tuple[int, int]], max_chars: int, overlap: int, prose: bool
) -> Iterator[tuple[int, int]]:
    """Greedy packing of consecutive pieces into spans of at most max_chars, each new span starting with up to
    `overlap` chars of the previous span's tail when that still fits."""
    cur: tuple[int, int] | None = None
    for a, b in pieces:
        if cur is None:
            cur = (a, b)
        elif b - cur[0] <= max_chars:
            cur = (cur[0], b)
        else:
            yield cur
            tail = _overlap_start(text, cur[0], cur[1], overlap, prose) if overlap else None
            cur = (tail if tail is not None and b - tail <= max_chars else a, b)
    if cur is not None:
        yield cur


def _overlap_start(text: str, a: int, b: int, overlap: int, prose: bool) -> int | None:
    """Start of the overlap: within the last `overlap` chars of [a, b), the first sentence start (prose only),
    else line start, else word start; None when that tail is one unbroken token."""
    lo = max(a + 1, b - overlap)
    starts = []
    if prose:
        m = _SENTENCE_END.search(text, lo, b)
        starts.append(m.end() if m else -1)
    nl = text.find("\n", lo, b)
    starts.append(nl + 1 if nl != -1 else -1)
    ws = _SPACE.search(text, lo, b)
    starts.append(ws.end() if ws else -1)
    for start in starts:
        first = _skip_space(text, start, b) if start != -1 else None
        if first is not None:
            return first
    return None
