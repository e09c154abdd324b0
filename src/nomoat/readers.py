"""File → plain text for the knowledge base. Every failure is a ReadError with a short human reason.

Text kinds (text, markdown, rst, code, csv, json) keep the file's lines (CRLF and CR become LF), so "lines a-b" of
the extracted text are the file's own lines. HTML and DOCX are rendered to markdown-like text so chunking sees their
structure: headings become `#` lines, list items `- ` lines, table rows `a | b` lines, and HTML `<pre>` a ``` fence.
PDF text is joined page by page; `Extracted.pages` holds where each page starts.

Everything here is pure Python (stdlib, pypdf, charset-normalizer) and interruptible, so a caller may bound the time
of one read with a signal alarm.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import os
import re
import stat
import zipfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree as ET


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
_META_CHARSET = re.compile(rb"""<meta[^>]{0,200}?charset\s*=\s*["']?([A-Za-z0-9_.:-]{1,40})""", re.I)


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
    if kind == "pdf":
        doc = _read_pdf(data)
    elif kind == "docx":
        doc = _read_docx(data, max_bytes)
    else:
        # Binary: control bytes text never has, named by its signature when known (a signature alone could be
        # the first word of a note: "ID3 tags ...").
        if _BINARY_BYTES.search(data, 0, _SNIFF) and not data.startswith(tuple(_BOMS)) and not _utf16(data):
            name = next((name for magic, name in _MAGIC.items() if data.startswith(magic)), None)
            name = name or ("mp4" if data[4:8] == b"ftyp" else "contains NUL bytes" if b"\x00" in data[:_SNIFF] else "")
            if name:
                raise Unsupported(f"binary file ({name})")
        doc = _read_html(data) if kind == "html" else _read_text(data, kind or "text", path.suffix.lower())
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


# --- PDF ---------------------------------------------------------------------------------------------------------


def _read_pdf(data: bytes) -> Extracted:
    import logging

    from pypdf import PdfReader

    # pypdf logs every recoverable defect (e.g. "EOF marker not found"); that would scribble over the progress bar.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = PdfReader(io.BytesIO(data), strict=False)
        if reader.is_encrypted:
            try:
                ok = reader.decrypt("")
            except Exception as e:  # AES needs the optional `cryptography` package
                raise ReadError(_short(f"encrypted PDF: {e}")) from None
            if not ok:
                raise ReadError("encrypted PDF (needs a password)")
        pages = list(reader.pages)
    except ReadError:
        raise
    except Exception as e:
        raise ReadError(_short(f"malformed PDF: {e}")) from None
    if not pages:
        raise ReadError("malformed PDF: no pages")
    texts, errors = [], []
    for number, page in enumerate(pages, 1):
        try:
            texts.append(_normalize(page.extract_text() or "").strip())
        except Exception as e:  # one broken page should not lose the others
            texts.append("")
            errors.append(f"page {number}: {e}")
    if len(errors) == len(pages):
        raise ReadError(_short(f"malformed PDF: {errors[0]}"))
    starts = [0]
    for text in texts[:-1]:
        starts.append(starts[-1] + len(text) + 2)  # pages are joined by a blank line
    title = ""
    with contextlib.suppress(Exception):
        title = str((reader.metadata or {}).get("/Title") or "").strip()
    return Extracted("\n\n".join(texts), "pdf", pages=tuple(starts), title=title[:200])


# --- HTML --------------------------------------------------------------------------------------------------------

_SKIP_TAGS = {"script", "style", "noscript", "template", "svg", "nav", "aside", "header", "footer", "iframe"}
_SKIP_TAGS |= {"object", "canvas", "select", "button"}
_SKIP_ROLES = {"navigation", "banner", "contentinfo", "complementary", "search"}
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
_IMPLIED_END = {"p", "li", "dt", "dd", "tr", "td", "th", "option", "thead", "tbody", "tfoot", "colgroup", "optgroup"}
_BLOCKS = {"div", "section", "article", "main", "blockquote", "ul", "ol", "dl", "table", "figure", "figcaption"}
_BLOCKS |= {"address", "details", "summary", "form", "fieldset", "caption", "body", "center", "pre"} | _IMPLIED_END
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}


class _HTMLText(HTMLParser):
    """Renders the visible body as markdown-like blocks. Keeps a stack of open elements to know when a skipped
    subtree (script, nav, ...) ends; elements with optional end tags (p, li, td, ...) only mark block boundaries."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []  # finished blocks and their separators
        self.parts: list[str] = []  # text of the block being read
        self.stack: list[tuple[str, bool]] = []  # open elements: (tag, starts a skipped subtree)
        self.skip = self.pre = self.heading = self.cells = 0
        self.title: list[str] | None = None  # collecting <title> text while not None
        self.title_text = ""
        self.mode = self.last_mode = "p"  # "li" and "row" blocks follow each other without a blank line
        self.after_br = False

    def flush(self) -> None:
        raw, self.parts = "".join(self.parts), []
        if self.pre:
            text = f"```\n{raw.strip(chr(10)).rstrip()}\n```" if raw.strip() else ""
        else:
            text = " ".join(raw.split())
            if text == "-":  # a list item whose text comes in a nested block: keep its marker
                self.parts = ["- "]
                return
            if text and self.heading:
                text = "#" * self.heading + " " + text.replace("¶", "").strip()
        if text:
            if self.out:
                tight = self.after_br or (self.mode in ("li", "row") and self.mode == self.last_mode)
                self.out.append("\n" if tight else "\n\n")
            self.out.append(text)
            self.last_mode, self.after_br = self.mode, False

    def block(self, mode: str = "p") -> None:
        """A block boundary (only where text is being collected as normal paragraphs)."""
        if self.skip or self.pre or self.heading:
            return
        self.flush()
        if self.parts != ["- "]:  # else a list item's marker still waits for its text
            self.mode = mode
            self.parts = ["- "] if mode == "li" else []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self.title = [] if not any(t == "svg" for t, _ in self.stack) else None
        elif tag in ("br", "hr") and self.pre and not self.skip:
            self.parts.append("\n")
        elif tag in ("br", "hr"):
            self.block()
            self.after_br = tag == "br" and not self.skip
        elif tag in ("td", "th") and not (self.skip or self.pre or self.heading):
            self.parts.append(" | " if self.cells else "")
            self.cells += 1
        elif tag in _IMPLIED_END:
            self.block({"li": "li", "tr": "row"}.get(tag, "p"))
            self.cells = 0
        elif tag not in _VOID and len(self.stack) < 512:  # deeper nesting is not tracked: no quadratic worst case
            a = dict(attrs)
            skip = tag in _SKIP_TAGS or a.get("role") in _SKIP_ROLES or "headerlink" in (a.get("class") or "")
            if tag in ("header", "footer") or a.get("role") in ("banner", "contentinfo"):
                skip = skip and not any(t in ("article", "main") for t, _ in self.stack)  # an article's own header
            if skip or tag in _BLOCKS or tag in _HEADINGS:
                self.block()
            self.stack.append((tag, skip))
            self.skip += skip
            if not self.skip and tag == "pre":
                self.pre += 1
            elif not self.skip and tag in _HEADINGS and not self.pre:
                self.heading = _HEADINGS[tag]

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.title_text, self.title = self.title_text or " ".join("".join(self.title or []).split()), None
        elif tag in _IMPLIED_END:
            if tag not in ("td", "th"):
                self.block()
        else:
            for i in range(len(self.stack) - 1, max(-1, len(self.stack) - 64), -1):
                if self.stack[i][0] == tag:
                    while len(self.stack) > i:
                        self.pop()
                    return

    def pop(self) -> None:
        tag, skip = self.stack.pop()
        if not self.skip and ((tag == "pre" and self.pre) or (tag in _HEADINGS and self.heading)):
            self.flush()
            self.pre, self.heading = (self.pre - 1, self.heading) if tag == "pre" else (self.pre, 0)
        elif tag in _BLOCKS:
            self.block()
        self.skip -= skip

    def handle_data(self, data: str) -> None:
        if self.title is not None:
            self.title.append(data)
        elif not self.skip:
            self.parts.append(data)


def _read_html(data: bytes) -> Extracted:
    m = _META_CHARSET.search(data[:4096])
    parser = _HTMLText()
    parser.feed(_normalize(_decode(data, m.group(1).decode("ascii") if m else None)))
    parser.close()
    while parser.stack:
        parser.pop()
    parser.flush()
    return Extracted("".join(parser.out), "html", title=parser.title_text[:200])


# --- DOCX --------------------------------------------------------------------------------------------------------

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
_ZIP_MAX_ENTRIES = 10_000
_ZIP_MAX_RATIO = 100  # deflated XML is 5-20x; bombs are 1000x
_SMALL_PART = 32 * 2**20  # styles.xml / core.xml are read whole; real ones are kilobytes
_HEADING_STYLE = re.compile(r"heading\s*([1-9])", re.I)


def _read_docx(data: bytes, max_bytes: int) -> Extracted:
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError):
        raise ReadError("not a docx file (not a zip archive)") from None
    with z:
        # Refuse by the sizes the archive declares, before inflating anything. zipfile stops inflating an entry at
        # its declared size, so an archive that under-declares cannot expand past these numbers either.
        infos = z.infolist()
        total, packed = sum(i.file_size for i in infos), sum(i.compress_size for i in infos)
        if len(infos) > _ZIP_MAX_ENTRIES:
            raise ReadError(f"zip bomb: {len(infos):,} entries")
        if total > 16 * max_bytes or (total > 16 * 2**20 and total > _ZIP_MAX_RATIO * max(packed, 1)):
            raise ReadError(f"zip bomb: expands to {_size(total)} from {_size(packed)}")
        if "word/document.xml" not in z.namelist():
            raise ReadError("not a docx file (no word/document.xml)")
        styles = _docx_styles(_small_xml(z, "word/styles.xml"))
        core = _small_xml(z, "docProps/core.xml")
        title = core.findtext("{http://purl.org/dc/elements/1.1/}title", "") if core is not None else ""
        text, first_title = _docx_body(z, styles)
    return Extracted(_normalize(text), "docx", title=(title.strip() or first_title)[:200])


def _check_dtd(head: bytes, name: str) -> None:
    if b"<!DOCTYPE" in head or b"<!ENTITY" in head:  # entity expansion attacks need a DTD; OOXML never has one
        raise ReadError(f"docx part {name} declares a DTD")


def _small_xml(z: zipfile.ZipFile, name: str) -> ET.Element | None:
    if name not in z.namelist() or z.getinfo(name).file_size > _SMALL_PART:
        return None
    raw = z.read(name)
    _check_dtd(raw[:4096], name)
    return ET.fromstring(raw)


def _outline_level(ppr: ET.Element | None) -> int | None:
    """Heading level from <w:outlineLvl w:val="0..8"/> (9 means body text)."""
    el = ppr.find(f"{_W}outlineLvl") if ppr is not None else None
    val = (el.get(f"{_W}val") or "") if el is not None else ""
    return int(val) + 1 if val.isdigit() and int(val) < 9 else None


def _docx_styles(root: ET.Element | None) -> dict[str, int]:
    """style id → heading level (0 for the Title style), following basedOn links."""
    own: dict[str, int] = {}
    based: dict[str, str] = {}
    for style in root.iter(f"{_W}style") if root is not None else ():
        sid = style.get(f"{_W}styleId") or ""
        name_el, parent = style.find(f"{_W}name"), style.find(f"{_W}basedOn")
        name = (name_el.get(f"{_W}val") or "").lower() if name_el is not None else ""
        m = _HEADING_STYLE.fullmatch(name)
        level = int(m.group(1)) if m else 0 if name == "title" else _outline_level(style.find(f"{_W}pPr"))
        if level is not None:
            own[sid] = level
        if parent is not None:
            based[sid] = parent.get(f"{_W}val") or ""
    levels = {}
    for sid in set(own) | set(based):
        cur, hops = sid, 0
        while cur not in own and cur in based and hops < 10:
            cur, hops = based[cur], hops + 1
        if cur in own:
            levels[sid] = own[cur]
    return levels


def _run_text(p: ET.Element) -> str:
    special = {f"{_W}tab": "\t", f"{_W}br": "\n", f"{_W}cr": "\n", f"{_W}noBreakHyphen": "-"}
    return "".join(
        (el.text or "") if el.tag == f"{_W}t" else special.get(el.tag, "") for run in p.iter(f"{_W}r") for el in run
    )


def _docx_body(z: zipfile.ZipFile, styles: dict[str, int]) -> tuple[str, str]:
    """Stream word/document.xml: paragraphs, headings as `#` lines, list items, table rows; memory stays flat."""
    out: list[str] = []
    titles: list[str] = []
    last_tight, fallback, tables = False, 0, 0

    def emit(text: str, tight: bool) -> None:
        nonlocal last_tight
        out.extend(["\n" if tight and last_tight else "\n\n", text] if out else [text])
        last_tight = tight

    parser = ET.XMLPullParser(events=("start", "end"))
    with z.open("word/document.xml") as f:
        first = True
        while data := f.read(1 << 16):
            if first:
                _check_dtd(data[:4096], "word/document.xml")
                first = False
            parser.feed(data)
            for event, el in parser.read_events():
                if el.tag == _MC_FALLBACK:  # a copy of the mc:Choice content for old readers: skipped
                    fallback += 1 if event == "start" else -1
                elif el.tag == f"{_W}tbl":
                    tables += 1 if event == "start" else -1
                if event != "end" or fallback:
                    continue
                if el.tag == f"{_W}p" and not tables and (text := _run_text(el).strip()):
                    level = _paragraph_level(el.find(f"{_W}pPr"), styles)
                    if level is not None:
                        titles += [text] if level == 0 else []
                        emit("#" * min(max(level, 1), 6) + " " + " ".join(text.split()), False)
                    else:
                        listed = el.find(f"{_W}pPr/{_W}numPr") is not None
                        emit(("- " + text) if listed else text, listed)
                elif el.tag == f"{_W}tr" and tables == 1:
                    tcs = el.findall(f"{_W}tc")
                    cells = [" ".join(" ".join(_run_text(p).split()) for p in tc.iter(f"{_W}p")) for tc in tcs]
                    if any(cells):
                        emit(" | ".join(cells), True)
                elif el.tag != _MC_FALLBACK and (el.tag != f"{_W}p" or tables):
                    continue  # kept until its paragraph, row or table is done
                el.clear()  # done with it: keeps memory flat on big documents
        parser.close()
    return "".join(out), titles[0] if titles else ""


def _paragraph_level(ppr: ET.Element | None, styles: dict[str, int]) -> int | None:
    """Heading level of a paragraph (0 for Title) from its style, or its own outline level; None for body text."""
    style = ppr.find(f"{_W}pStyle") if ppr is not None else None
    sid = (style.get(f"{_W}val") or "") if style is not None else ""
    m = _HEADING_STYLE.fullmatch(sid)
    level = styles.get(sid, int(m.group(1)) if m else None)
    return _outline_level(ppr) if level is None else level


def _size(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _short(message: str, limit: int = 200) -> str:
    message = " ".join(message.split())
    return message if len(message) <= limit else message[: limit - 1] + "…"
