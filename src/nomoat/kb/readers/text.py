"""What every reader shares: the result type, the errors, and turning bytes into clean text.

Text kinds (text, markdown, rst, code, csv, json) are read here whole (:func:`read_text`); the format readers
(:mod:`.html_page`, :mod:`.docx`, :mod:`.pdf`) use :func:`decode` and :func:`normalize` on their own output.
"""

from __future__ import annotations

import codecs
import contextlib
import re
from dataclasses import dataclass

MAX_LINE_CHARS = 1_000_000
"""A text/code/csv/json line longer than this is minified or generated data, not prose: ReadError."""
SNIFF = 8192
"""Bytes looked at to tell text from binary and to detect UTF-16 without a BOM."""
_JSON_PRETTY_LINE = 1_000  # .json with lines this long is re-indented so it chunks by lines
# fmt: off
BOMS = {  # UTF-32 LE before UTF-16 LE: it starts with the same two bytes
    codecs.BOM_UTF32_LE: "utf-32-le", codecs.BOM_UTF32_BE: "utf-32-be", codecs.BOM_UTF8: "utf-8",
    codecs.BOM_UTF16_LE: "utf-16-le", codecs.BOM_UTF16_BE: "utf-16-be",
}
# fmt: on
_NON_ASCII = re.compile("[^\x00-\x7f\ufffd]")
_HIGH_RUN = re.compile("[^\x00-\x7f]+")
_CONTROL = re.compile("[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f-\x9f]")  # keeps \t \n \v \f \r and ESC (colored logs)


Span = tuple[int, int, str]
"""``(start, end, location)``: ``text[start:end]`` came from one picture, found at ``location``."""


@dataclass(frozen=True)
class Extracted:
    text: str
    """Plain text that chunks, FTS and citation quotes index into."""
    kind: str
    """"text" | "markdown" | "rst" | "html" | "pdf" | "docx" | "code" | "csv" | "json" | "image"."""
    pages: tuple[int, ...] = ()
    """PDF only: char offset in `text` where page i+1 starts (pages[0] == 0)."""
    title: str = ""
    """HTML <title>, first markdown/rst heading, or DOCX title; "" when there is none."""
    ocr: tuple[Span, ...] = ()
    """Spans of `text` read from pictures by OCR, in order, each with its location ("page 3, scanned (OCR)",
    "image 2 on page 5 (OCR)", "photo.jpg (OCR)"): a chunk never crosses one's edge and takes its location."""
    problems: tuple[str, ...] = ()
    """Parts of the file that were not read, and why ("page 7: OCR timed out after 60 s"); the rest was."""


class ReadError(Exception):
    """The file cannot be read; str(e) is a short human reason ("zip bomb: expands to 2.1 GB")."""


class Unsupported(ReadError):
    """Skipped on purpose: binary, empty, or not a regular file ("binary file (png)")."""


def utf16_encoding(data: bytes) -> str | None:
    """UTF-16 without a BOM (some Windows tools write it): ASCII-range text with every other byte NUL."""
    head = data[: SNIFF - SNIFF % 2]
    even, odd = head[0::2], head[1::2]
    if len(head) >= 16 and odd.count(0) > 0.9 * len(odd) and even.count(0) == 0:
        return "utf-16-le"
    if len(head) >= 16 and even.count(0) > 0.9 * len(even) and odd.count(0) == 0:
        return "utf-16-be"
    return None


def decode(data: bytes, declared: str | None = None) -> str:
    """Bytes → str: BOM, then strict UTF-8, then a declared encoding, then a guess. Never fails on bad bytes."""
    bom = next((bom for bom in BOMS if data.startswith(bom)), None)
    encoding = BOMS[bom] if bom else utf16_encoding(data) if b"\x00" in data[:SNIFF] else None
    if encoding:
        return data[len(bom or b"") :].decode(encoding, errors="replace")
    with contextlib.suppress(UnicodeDecodeError):
        return data.decode("utf-8")
    with contextlib.suppress(LookupError):
        if declared:
            return data.decode(codecs.lookup(declared).name, errors="replace")
    text = data.decode("utf-8", errors="replace")
    sample = text[:1_000_000]
    # UTF-8 with a few broken bytes (a truncated write, a pasted byte) stays UTF-8: its valid multibyte
    # characters outnumber the broken ones. A legacy 8-bit file has no valid multibyte characters at all.
    if sum(1 for _ in _NON_ASCII.finditer(sample)) >= sample.count("\ufffd"):
        return text
    encoding = _guess_legacy(data[:65536])
    if encoding is None:
        raise ReadError("not UTF-8 text and no encoding fits")
    return data.decode(encoding, errors="replace")


def _guess_legacy(sample: bytes) -> str | None:
    """cp1252 when the bytes read as Western text (accented letters alone or in pairs inside ASCII words; Cyrillic,
    Greek or CJK bytes read as cp1252 give long runs of accented letters), else charset-normalizer's guess. That
    guess alone is poor on short Western text (it names cp1257 for French, or a CJK codec for "héllo")."""
    with contextlib.suppress(UnicodeDecodeError):
        runs = [len(m.group()) for m in _HIGH_RUN.finditer(sample.decode("cp1252"))]
        if sum(n for n in runs if n >= 3) <= 0.2 * sum(runs):
            return "cp1252"
    from charset_normalizer import from_bytes  # ~0.1 s on 64 KB; never run on a whole file (16 s for 50 MB)

    best = from_bytes(sample).best()
    return best.encoding if best else None


def normalize(text: str) -> str:
    """LF line ends (so line numbers match editors), no NULs, no lone surrogates (SQLite and JSON reject them)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\x00", "") if "\x00" in text else text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", errors="replace").decode("utf-8")
    return text


def long_line(text: str, limit: int) -> tuple[int, int] | None:
    """(1-based line number, length) of a line longer than `limit`, or None. Linear, no per-line Python loop:
    any such line contains a whole aligned window of limit//2 chars with no newline."""
    step = max(1, limit // 2)
    for i in range(0, len(text) - step + 1 if len(text) > limit else 0, step):
        if text.find("\n", i, i + step) == -1:
            start, end = text.rfind("\n", 0, i) + 1, text.find("\n", i)
            end = len(text) if end == -1 else end
            if end - start > limit:
                return text.count("\n", 0, start) + 1, end - start
    return None


def read_text(data: bytes, kind: str, suffix: str) -> Extracted:
    text = normalize(decode(data))
    sample = text[:65536]
    if sum(1 for _ in _CONTROL.finditer(sample)) > 0.05 * len(sample):
        raise ReadError("not UTF-8 text and no encoding fits (mostly control characters)")
    if kind == "json" and suffix not in (".jsonl", ".ndjson") and long_line(text, _JSON_PRETTY_LINE):
        import json

        # Minified JSON: re-indent so it chunks by lines; line numbers are then those of this text.
        with contextlib.suppress(ValueError, RecursionError):
            text = json.dumps(json.loads(text), indent=1, ensure_ascii=False)
    long = long_line(text, MAX_LINE_CHARS)
    if long:
        raise ReadError(f"line too long: line {long[0]} has {long[1]:,} characters (minified or generated?)")
    title, fence = "", ""
    if kind == "rst":
        m = re.search(r"^(\S[^\n]*)\n([=\-`:'\"~^_*+#<>])\2{2,}[ \t]*$", sample, re.M)
        title = m.group(1) if m else ""
    for line in sample.split("\n") if kind == "markdown" else ():
        if line.strip().startswith(("```", "~~~")):
            fence = "" if fence and line.strip().startswith(fence) else fence or line.strip()[:3]
        elif not fence and re.match(r" {0,3}#{1,6}[ \t]", line):
            title = line.strip().strip("#")
            break
    return Extracted(text, kind, title=title.strip()[:200])


def human_size(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def short(message: str, limit: int = 200) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 1] + "…"
