"""File → plain text for the knowledge base. Every failure is a ReadError with a short human reason.

Text kinds (text, markdown, rst, code, csv, json) keep the file's lines (CRLF and CR become LF), so "lines a-b" of
the extracted text are the file's own lines. HTML and DOCX are rendered to markdown-like text so chunking sees their
structure: headings become `#` lines, list items `- ` lines, table rows `a | b` lines, and HTML `<pre>` a ``` fence.
PDF text is joined page by page; `Extracted.pages` holds where each page starts.

This module picks the reader and handles text kinds and encodings; :mod:`.html_page`, :mod:`.docx` and
:mod:`.pdf` render those formats. Everything here is pure Python (stdlib, pypdf, charset-normalizer) and
interruptible, so a caller may bound the time of one read with a signal alarm.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Extracted:
    text: str
    """Plain text that chunks, FTS and citation quotes index into."""
    kind: str
    """"text" | "markdown" | "rst" | "html" | "pdf" | "docx" | "code" | "csv" | "json"."""
    pages: tuple[int, ...] = ()
    """PDF only: char offset in `text` where page i+1 starts (pages[0] == 0)."""
    title: str = ""
    """HTML <title>, first markdown/rst heading, or DOCX title; "" when there is none."""


class ReadError(Exception):
    """The file cannot be read; str(e) is a short human reason ("zip bomb: expands to 2.1 GB")."""


class Unsupported(ReadError):
    """Skipped on purpose: binary, empty, or not a regular file ("binary file (png)")."""


_KINDS = {
    "text": ".txt .text .log .org .adoc .asciidoc .tex .textile",
    "markdown": ".md .markdown .mdown .mkd .mkdn .mdx",
    "rst": ".rst .rest",
    "html": ".html .htm .xhtml",
    "pdf": ".pdf",
    "docx": ".docx",
    "csv": ".csv .tsv",
    "json": ".json .jsonl .ndjson .geojson .ipynb",
    "code": """.py .pyi .pyx .js .mjs .cjs .jsx .ts .tsx .go .rs .c .h .cc .cpp .cxx .hpp .hh .hxx .java .kt .kts
        .scala .swift .m .mm .cs .fs .vb .rb .php .pl .pm .lua .r .jl .dart .ex .exs .erl .hrl .hs .ml .mli .clj
        .cljs .el .lisp .scm .sql .sh .bash .zsh .fish .ps1 .bat .cmd .vim .nim .zig .sol .proto .graphql .gql .css
        .scss .sass .less .vue .svelte .yaml .yml .toml .ini .cfg .conf .properties .xml .xsd .xsl .gradle .cmake
        .mk .tf .hcl .nix .dockerfile""",
    # Well-known files without a useful suffix, matched by their lowercased name.
    "code ": "makefile gnumakefile dockerfile containerfile jenkinsfile vagrantfile gemfile rakefile procfile justfile",
    "text ": "readme license licence copying authors changelog news todo contributing install notice history changes",
}
_KIND_OF = {key: kind.strip() for kind, keys in _KINDS.items() for key in keys.split()}

MAX_LINE_CHARS = 1_000_000
"""A text/code/csv/json line longer than this is minified or generated data, not prose: ReadError."""
_JSON_PRETTY_LINE = 1_000  # .json with lines this long is re-indented so it chunks by lines
_SNIFF = 8192

# Known signatures, for a nicer reason than "NUL bytes": https://en.wikipedia.org/wiki/List_of_file_signatures
# fmt: off
_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg", b"GIF87a": "gif", b"GIF89a": "gif", b"%PDF-": "pdf",
    b"PK\x03\x04": "zip", b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"7z\xbc\xaf\x27\x1c": "7z",
    b"Rar!\x1a\x07": "rar", b"\x28\xb5\x2f\xfd": "zstd", b"\x7fELF": "elf", b"\xcf\xfa\xed\xfe": "mach-o",
    b"\xca\xfe\xba\xbe": "java class", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1": "ms office 97",
    b"SQLite format 3\x00": "sqlite", b"\x00asm": "wasm", b"GGUF": "gguf", b"OggS": "ogg", b"ID3": "mp3",
    b"fLaC": "flac", b"RIFF": "riff media", b"\x1a\x45\xdf\xa3": "matroska", b"wOFF": "woff", b"wOF2": "woff2",
    b"II*\x00": "tiff", b"MM\x00*": "tiff", b"PAR1": "parquet", b"\x93NUMPY": "numpy",
}
_BOMS = {  # UTF-32 LE before UTF-16 LE: it starts with the same two bytes
    codecs.BOM_UTF32_LE: "utf-32-le", codecs.BOM_UTF32_BE: "utf-32-be", codecs.BOM_UTF8: "utf-8",
    codecs.BOM_UTF16_LE: "utf-16-le", codecs.BOM_UTF16_BE: "utf-16-be",
}
# fmt: on
_BINARY_BYTES = re.compile(rb"[\x00-\x08\x0e-\x1a\x1c-\x1f]")
_NON_ASCII = re.compile("[^\x00-\x7f\ufffd]")
_HIGH_RUN = re.compile("[^\x00-\x7f]+")
_CONTROL = re.compile("[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f-\x9f]")  # keeps \t \n \v \f \r and ESC (colored logs)


def supported(path: Path) -> bool:
    """Cheap check by suffix or well-known name (README, Makefile, ...), for the folder walker."""
    return _kind(Path(path)) is not None


def _kind(path: Path) -> str | None:
    return _KIND_OF.get(path.suffix.lower()) or _KIND_OF.get(path.name.lower())


def read_file(path: Path, *, max_bytes: int = 64 * 2**20) -> Extracted:
    """Read one file into text.

    The reader is chosen by suffix (see `supported`); a file with an unknown suffix is read as plain text when its
    bytes are text. Raises ReadError (Unsupported for binary, empty or non-regular files) and nothing else, except
    TimeoutError, which passes through so that a caller's alarm handler can raise it.
    """
    try:
        return _read(Path(path), max_bytes)
    except (ReadError, TimeoutError):
        raise
    except RecursionError:
        raise ReadError("too deeply nested to parse") from None
    except MemoryError:
        raise ReadError("out of memory while reading") from None
    except Exception as e:  # parsers raise anything on hostile bytes; callers handle ReadError only
        raise ReadError(_short(f"cannot read: {type(e).__name__}: {e}")) from e


def _read(path: Path, max_bytes: int) -> Extracted:
    kind = _kind(path)
    data = _read_bytes(path, max_bytes)
    if not data:
        raise Unsupported("empty file")
    # Format readers import this module's basics, so they are imported here, on first use.
    from nomoat.readers import docx, html_page, pdf

    if kind == "pdf":
        doc = pdf.read_pdf(data)
    elif kind == "docx":
        doc = docx.read_docx(data, max_bytes)
    else:
        # Binary: control bytes text never has, named by its signature when known (a signature alone could be
        # the first word of a note: "ID3 tags ...").
        if _BINARY_BYTES.search(data, 0, _SNIFF) and not data.startswith(tuple(_BOMS)) and not _utf16(data):
            name = next((name for magic, name in _MAGIC.items() if data.startswith(magic)), None)
            name = name or ("mp4" if data[4:8] == b"ftyp" else "contains NUL bytes" if b"\x00" in data[:_SNIFF] else "")
            if name:
                raise Unsupported(f"binary file ({name})")
        doc = html_page.read_html(data) if kind == "html" else _read_text(data, kind or "text", path.suffix.lower())
    if not doc.text.strip():
        raise Unsupported("no text (scanned PDF? OCR is not supported)" if kind == "pdf" else "no text (blank)")
    return doc


def _read_bytes(path: Path, max_bytes: int) -> bytes:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise Unsupported("not a regular file")
        # O_NONBLOCK: a FIFO swapped in after the stat must not block the open.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise Unsupported("not a regular file")
            if st.st_size > max_bytes:
                raise ReadError(f"too large: {_size(st.st_size)} (limit {_size(max_bytes)})")
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise ReadError(f"cannot read: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise ReadError(f"too large: over the {_size(max_bytes)} limit")
    return data


def _utf16(data: bytes) -> str | None:
    """UTF-16 without a BOM (some Windows tools write it): ASCII-range text with every other byte NUL."""
    head = data[: _SNIFF - _SNIFF % 2]
    even, odd = head[0::2], head[1::2]
    if len(head) >= 16 and odd.count(0) > 0.9 * len(odd) and even.count(0) == 0:
        return "utf-16-le"
    if len(head) >= 16 and even.count(0) > 0.9 * len(even) and odd.count(0) == 0:
        return "utf-16-be"
    return None


def _decode(data: bytes, declared: str | None = None) -> str:
    """Bytes → str: BOM, then strict UTF-8, then a declared encoding, then a guess. Never fails on bad bytes."""
    bom = next((bom for bom in _BOMS if data.startswith(bom)), None)
    encoding = _BOMS[bom] if bom else _utf16(data) if b"\x00" in data[:_SNIFF] else None
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


def _normalize(text: str) -> str:
    """LF line ends (so line numbers match editors), no NULs, no lone surrogates (SQLite and JSON reject them)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\x00", "") if "\x00" in text else text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", errors="replace").decode("utf-8")
    return text


def _long_line(text: str, limit: int) -> tuple[int, int] | None:
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


def _read_text(data: bytes, kind: str, suffix: str) -> Extracted:
    text = _normalize(_decode(data))
    sample = text[:65536]
    if sum(1 for _ in _CONTROL.finditer(sample)) > 0.05 * len(sample):
        raise ReadError("not UTF-8 text and no encoding fits (mostly control characters)")
    if kind == "json" and suffix not in (".jsonl", ".ndjson") and _long_line(text, _JSON_PRETTY_LINE):
        import json

        # Minified JSON: re-indent so it chunks by lines; line numbers are then those of this text.
        with contextlib.suppress(ValueError, RecursionError):
            text = json.dumps(json.loads(text), indent=1, ensure_ascii=False)
    long = _long_line(text, MAX_LINE_CHARS)
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


def _size(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _short(message: str, limit: int = 200) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 1] + "…"
