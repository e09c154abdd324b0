"""DOCX -> markdown-like text, streamed so memory stays flat: headings (from styles or outline levels) as ``#``
lines, list items, table rows; zip bombs and DTDs are refused. With OCR on, each picture that holds text adds that
text after its paragraph or table row, located as ``"image 2 (OCR)"`` (pictures numbered in document order)."""

from __future__ import annotations

import io
import posixpath
import re
import zipfile
from xml.etree import ElementTree as ET

from nomoat.config import OcrConfig
from nomoat.kb.readers import images, limits, ocr
from nomoat.kb.readers.limits import PageTimeout
from nomoat.kb.readers.text import Extracted, ReadError, Span, human_size, normalize, short

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
_ZIP_MAX_ENTRIES = 10_000
_ZIP_MAX_RATIO = 100  # deflated XML is 5-20x; bombs are 1000x
_SMALL_PART = 32 * 2**20  # styles.xml / core.xml are read whole; real ones are kilobytes
_HEADING_STYLE = re.compile(r"heading\s*([1-9])", re.I)
_R = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
_PICTURES = (
    ("{http://schemas.openxmlformats.org/drawingml/2006/main}blip", f"{_R}embed"),
    (
        "{urn:schemas-microsoft-com:vml}imagedata",
        f"{_R}id",  # VML, from older Word versions
    ),
)
_RASTER = tuple(images.SUFFIXES.split())  # EMF/WMF/SVG drawings are vector art: no OCR


def read_docx(
    data: bytes, max_bytes: int, config: OcrConfig | None = None, progress: ocr.ProgressFn | None = None
) -> Extracted:
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
            raise ReadError(f"zip bomb: expands to {human_size(total)} from {human_size(packed)}")
        if "word/document.xml" not in z.namelist():
            raise ReadError("not a docx file (no word/document.xml)")
        styles = _docx_styles(_small_xml(z, "word/styles.xml"))
        core = _small_xml(z, "docProps/core.xml")
        title = core.findtext("{http://purl.org/dc/elements/1.1/}title", "") if core is not None else ""
        pictures = _Pictures(z, max_bytes, config, progress) if config and config.engine != "off" else None
        text, first_title = _docx_body(z, styles, pictures)
    spans, problems = (tuple(pictures.spans), tuple(pictures.problems)) if pictures else ((), ())
    return Extracted(text, "docx", title=(title.strip() or first_title)[:200], ocr=spans, problems=problems)


_DTD_MARKS = (b"<!DOCTYPE", b"<!ENTITY")


def _check_dtd(data: bytes, name: str) -> None:
    """Anywhere in ``data`` (the whole part, or a streamed piece with the previous piece's tail: a DTD may follow
    any amount of whitespace, comments or processing instructions). Entity expansion needs a DTD; OOXML has none."""
    if any(mark in data for mark in _DTD_MARKS):
        raise ReadError(f"docx part {name} declares a DTD")


def _small_xml(z: zipfile.ZipFile, name: str) -> ET.Element | None:
    if name not in z.namelist() or z.getinfo(name).file_size > _SMALL_PART:
        return None
    raw = z.read(name)
    _check_dtd(raw, name)
    root = ET.fromstring(raw)
    if sum(1 for _ in root.iter()) > limits.MAX_XML_ELEMENTS:
        raise ReadError(f"docx part {name} has over {limits.MAX_XML_ELEMENTS:,} XML elements")
    return root


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


def _docx_body(z: zipfile.ZipFile, styles: dict[str, int], pictures: _Pictures | None) -> tuple[str, str]:
    """Stream word/document.xml: paragraphs, headings as `#` lines, list items, table rows, then the text of the
    pictures in them (into ``pictures.spans``). Memory stays flat: each block is dropped from the tree once read,
    and the inflated bytes, elements, depth and text are counted against :mod:`.limits` as they stream."""
    out: list[str] = []
    titles: list[str] = []
    last_tight, fallback, tables, length = False, 0, 0, 0

    def emit(text: str, tight: bool) -> int:
        nonlocal last_tight, length
        text = normalize(text)  # per block, so offsets counted here stay true
        if out:
            out.append("\n" if tight and last_tight else "\n\n")
            length += len(out[-1])
        out.append(text)
        length += len(text)
        limits.check_text(length)
        last_tight = tight
        return length - len(text)

    def emit_pictures(el: ET.Element) -> None:
        for text, where in pictures.read(el) if pictures else ():
            start = emit(text, False)
            pictures.spans.append((start, start + len(text), where))

    parser = ET.XMLPullParser(events=("start", "end"))
    name = "word/document.xml"
    inflated, elements, depth, tail, body = 0, 0, 0, b"", None
    with z.open(name) as f:
        while data := f.read(1 << 16):
            inflated += len(data)
            if inflated > limits.MAX_XML_BYTES:
                raise ReadError(f"docx part {name} expands past {human_size(limits.MAX_XML_BYTES)}")
            _check_dtd(tail + data, name)
            tail = data[-16:]
            parser.feed(data)
            for event, el in parser.read_events():
                depth += 1 if event == "start" else -1
                if event == "start":
                    elements += 1
                    if elements > limits.MAX_XML_ELEMENTS or depth > limits.MAX_DEPTH:
                        what = f"over {limits.MAX_XML_ELEMENTS:,} XML elements" if depth <= limits.MAX_DEPTH else (
                            f"XML nested over {limits.MAX_DEPTH:,} deep")  # fmt: skip
                        raise ReadError(f"docx part {name} has {what}")
                    if depth == 2:
                        body = el  # w:body: its finished children are dropped below
                elif depth == 2 and body is not None:
                    del body[:]  # a finished top-level block (read above, or nothing to read): free it
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
                    emit_pictures(el)
                elif el.tag == f"{_W}p" and not tables:
                    emit_pictures(el)  # a paragraph that is only a picture
                elif el.tag == f"{_W}tr" and tables == 1:
                    tcs = el.findall(f"{_W}tc")
                    cells = [" ".join(" ".join(_run_text(p).split()) for p in tc.iter(f"{_W}p")) for tc in tcs]
                    if any(cells):
                        emit(" | ".join(cells), True)
                    emit_pictures(el)
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


class _Pictures:
    """The pictures of one DOCX, found through word/_rels/document.xml.rels and OCR'd once each (a logo repeated
    on every page is read and numbered once). ``spans`` and ``problems`` are filled as the body is read."""

    def __init__(self, z: zipfile.ZipFile, max_bytes: int, config: OcrConfig, progress: ocr.ProgressFn | None):
        self.z, self.max_bytes, self.config, self.progress = z, max_bytes, config, progress
        self.targets = _picture_targets(_small_xml(z, "word/_rels/document.xml.rels"))
        self.total = min(len(set(self.targets.values())), config.max_pages)
        self.seen: set[str] = set()
        self.spans: list[Span] = []
        self.problems: list[str] = []
        self.unavailable = False

    def read(self, el: ET.Element) -> list[tuple[str, str]]:
        """``(text, location)`` of each new picture referenced inside ``el`` that holds text."""
        found = []
        for tag, attr in _PICTURES:
            for ref in el.iter(tag):
                name = self.targets.get(ref.get(attr) or "")
                if name is None or name in self.seen or self.unavailable:
                    continue
                self.seen.add(name)
                where = f"image {len(self.seen)}{ocr.MARK}"
                if len(self.seen) > self.config.max_pages:
                    self.problems.append(f"{where}: not read (limit {self.config.max_pages} images per file)")
                    continue
                text = self._ocr(name, where)
                if self.progress:
                    self.progress(min(len(self.seen), self.total), self.total)
                if text:
                    found.append((text, where))
        return found

    def _ocr(self, name: str, where: str) -> str:
        try:
            if self.z.getinfo(name).file_size > self.max_bytes:
                raise ReadError(f"too large ({human_size(self.z.getinfo(name).file_size)})")
            picture = images.open_picture(self.z.read(name), self.config.max_pixels)
            return ocr.read_picture(images.decode(picture), self.config)
        except PageTimeout:
            self.problems.append(f"{where}: OCR timed out after {self.config.page_timeout_s:g} s")
        except ocr.OcrUnavailable as e:
            self.problems.append(f"images not OCR'd: {e}")
            self.unavailable = True
        except ReadError as e:
            self.problems.append(f"{where}: {e}")
        except (KeyError, zipfile.BadZipFile, OSError, EOFError) as e:
            self.problems.append(short(f"{where}: cannot read {name}: {e}"))
        return ""


def _picture_targets(rels: ET.Element | None) -> dict[str, str]:
    """relationship id -> zip member of each raster picture stored inside the file (linked ones are never fetched)."""
    targets = {}
    for rel in (
        rels.iter("{http://schemas.openxmlformats.org/package/2006/relationships}Relationship")
        if rels is not None
        else ()
    ):
        target = rel.get("Target") or ""
        if rel.get("TargetMode") == "External" or not target.lower().endswith(_RASTER):
            continue
        name = target.lstrip("/") if target.startswith("/") else posixpath.normpath(posixpath.join("word", target))
        targets[rel.get("Id") or ""] = name
    return targets
