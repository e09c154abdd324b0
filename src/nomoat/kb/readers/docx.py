"""DOCX -> markdown-like text, streamed so memory stays flat: headings (from styles or outline levels) as ``#``
lines, list items, table rows; zip bombs and DTDs are refused."""

from __future__ import annotations

import io
import re
import zipfile
from xml.etree import ElementTree as ET

from nomoat.kb.readers.text import Extracted, ReadError, human_size, normalize

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_MC_FALLBACK = "{http://schemas.openxmlformats.org/markup-compatibility/2006}Fallback"
_ZIP_MAX_ENTRIES = 10_000
_ZIP_MAX_RATIO = 100  # deflated XML is 5-20x; bombs are 1000x
_SMALL_PART = 32 * 2**20  # styles.xml / core.xml are read whole; real ones are kilobytes
_HEADING_STYLE = re.compile(r"heading\s*([1-9])", re.I)


def read_docx(data: bytes, max_bytes: int) -> Extracted:
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
        text, first_title = _docx_body(z, styles)
    return Extracted(normalize(text), "docx", title=(title.strip() or first_title)[:200])


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
