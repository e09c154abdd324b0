"""File → plain text for the knowledge base. Every failure is a ReadError with a short human reason.

Text kinds (text, markdown, rst, code, csv, json) keep the file's lines (CRLF and CR become LF), so "lines a-b" of
the extracted text are the file's own lines. HTML and DOCX are rendered to markdown-like text so chunking sees their
structure: headings become `#` lines, list items `- ` lines, table rows `a | b` lines, and HTML `<pre>` a ``` fence.
PDF text is joined page by page; `Extracted.pages` holds where each page starts. Pictures are read by OCR
(:mod:`.ocr`): image files (:mod:`.images`), scanned PDF pages and images inside PDF and DOCX files, with
`Extracted.ocr` saying which spans of the text came from which picture.

This module picks the reader and handles text kinds and encodings; :mod:`.html_page`, :mod:`.docx`, :mod:`.pdf`
and :mod:`.images` render those formats, within the bounds of :mod:`.limits`. Text formats are pure Python
(stdlib, pypdf, charset-normalizer) and interruptible, so a caller may bound the time of one read with a signal
alarm; OCR and PDF rendering run in native code, which sees the alarm between its calls.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from nomoat.config import OcrConfig
from nomoat.kb.readers import docx, html_page, images, limits, pdf
from nomoat.kb.readers.ocr import ProgressFn
from nomoat.kb.readers.text import (
    BOMS,
    SNIFF,
    Extracted,
    ReadError,
    Unsupported,
    human_size,
    read_text,
    short,
    utf16_encoding,
)

__all__ = ["Extracted", "ReadError", "Unsupported", "read_file", "supported"]


_KINDS = {
    "text": ".txt .text .log .org .adoc .asciidoc .tex .textile",
    "markdown": ".md .markdown .mdown .mkd .mkdn .mdx",
    "rst": ".rst .rest",
    "html": ".html .htm .xhtml",
    "pdf": ".pdf",
    "docx": ".docx",
    "image": images.SUFFIXES,
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
_BINARY_BYTES = re.compile(rb"[\x00-\x08\x0e-\x1a\x1c-\x1f]")


def supported(path: Path) -> bool:
    """Cheap check by suffix or well-known name (README, Makefile, ...), for the folder walker."""
    return _kind(Path(path)) is not None


def _kind(path: Path) -> str | None:
    return _KIND_OF.get(path.suffix.lower()) or _KIND_OF.get(path.name.lower())


def read_file(
    path: Path,
    *,
    max_bytes: int = 64 * 2**20,
    ocr: OcrConfig | None = None,
    progress: ProgressFn | None = None,
    resolved: bool = False,
) -> Extracted:
    """Read one file into text.

    The reader is chosen by suffix (see `supported`); a file with an unknown suffix is read as plain text when its
    bytes are text. Pictures are OCR'd as ``ocr`` says (default: ``OcrConfig()``), and ``progress(done, total)``
    is called after each page or image OCR'd. With ``resolved`` (``path`` is the walker's resolved path, checked
    to be inside the roots) the file is opened without following a symlink and must be that very path, so a file
    or folder swapped for a symlink between walk and read is refused. Raises ReadError (Unsupported for binary,
    empty or non-regular files) and nothing else, except TimeoutError, which passes through so that a caller's
    alarm handler can raise it.
    """
    try:
        return _read(Path(path), max_bytes, ocr or OcrConfig(), progress, resolved)
    except (ReadError, TimeoutError):
        raise
    except RecursionError:
        raise ReadError("too deeply nested to parse") from None
    except MemoryError:
        raise ReadError("out of memory while reading") from None
    except Exception as e:  # parsers raise anything on hostile bytes; callers handle ReadError only
        raise ReadError(short(f"cannot read: {type(e).__name__}: {e}")) from e


def _read(path: Path, max_bytes: int, ocr: OcrConfig, progress: ProgressFn | None, resolved: bool) -> Extracted:
    kind = _kind(path)
    data = _read_bytes(path, max_bytes, resolved)
    if not data:
        raise Unsupported("empty file")
    if kind == "pdf":
        doc = pdf.read_pdf(data, ocr, progress)
    elif kind == "docx":
        doc = docx.read_docx(data, max_bytes, ocr, progress)
    elif kind == "image":
        doc = images.read_image(data, path.name, ocr, progress)
    else:
        # Binary: control bytes text never has, named by its signature when known (a signature alone could be
        # the first word of a note: "ID3 tags ...").
        if _BINARY_BYTES.search(data, 0, SNIFF) and not data.startswith(tuple(BOMS)) and not utf16_encoding(data):
            name = next((name for magic, name in _MAGIC.items() if data.startswith(magic)), None)
            name = name or ("mp4" if data[4:8] == b"ftyp" else "contains NUL bytes" if b"\x00" in data[:SNIFF] else "")
            if name:
                raise Unsupported(f"binary file ({name})")
        doc = html_page.read_html(data) if kind == "html" else read_text(data, kind or "text", path.suffix.lower())
    limits.check_text(len(doc.text))  # every kind (HTML, text, OCR'd images) is held to the same bound
    if not doc.text.strip():
        if doc.problems:
            raise ReadError(doc.problems[0])
        raise Unsupported(
            ("no text (a scanned PDF, and OCR is off)" if ocr.engine == "off" else "no text, even by OCR")
            if kind == "pdf" else "no text (blank)"
        )  # fmt: skip
    return doc


def _read_bytes(path: Path, max_bytes: int, resolved: bool = False) -> bytes:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise Unsupported("not a regular file")
        # O_NONBLOCK: a FIFO swapped in after the stat must not block the open. O_NOFOLLOW: nor a symlink.
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(path, flags | (getattr(os, "O_NOFOLLOW", 0) if resolved else 0))
        except OSError as e:
            if resolved and os.path.islink(path):
                raise ReadError("became a symlink after the folder was listed: not followed") from None
            raise e
        with os.fdopen(fd, "rb") as f:
            if resolved and not _opened_is(f.fileno(), path):
                raise ReadError("a folder on its path was swapped for a symlink after listing: not followed")
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise Unsupported("not a regular file")
            if st.st_size > max_bytes:
                raise ReadError(f"too large: {human_size(st.st_size)} (limit {human_size(max_bytes)})")
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise ReadError(f"cannot read: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise ReadError(f"too large: over the {human_size(max_bytes)} limit")
    return data


def _opened_is(fd: int, path: Path) -> bool:
    """Whether open file ``fd`` is at ``path`` itself (its real location, where the OS tells it: Linux)."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == os.path.abspath(path)
    except OSError:
        return True  # no /proc: O_NOFOLLOW alone guards the last component
