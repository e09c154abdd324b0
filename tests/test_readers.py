"""readers.read_file: one test per kind on files written here, encodings, and the hostile folder."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest

from hostile_files import HTML, make_docx, make_docx_xml, make_hostile_folder, make_pdf, make_zip_bomb_docx
from nomoat.kb.readers import Extracted, ReadError, Unsupported, read_file, supported


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def test_text_keeps_lines_and_normalizes_line_ends(tmp_path: Path) -> None:
    doc = read_file(write(tmp_path, "notes.txt", b"one\r\ntwo\rthree\n"))
    assert doc == Extracted("one\ntwo\nthree\n", "text")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("naïve café ☕\n".encode("utf-8-sig"), "naïve café ☕\n"),
        ("naïve café ☕\n".encode("utf-16"), "naïve café ☕\n"),  # with BOM
        ("naïve café ☕\n".encode("utf-16-be"), "naïve café ☕\n"),  # BOM-less, ASCII-range detected
        ("plain ascii words and more words here\n".encode("utf-16-le"), "plain ascii words and more words here\n"),
        ("Le café crème brûlée était très bon. Déjà vu.\n".encode("cp1252"), "Le café crème brûlée était très bon."),
        ("Привет, как дела? Это тест кодировки.\n".encode("cp1251"), "Привет, как дела? Это тест кодировки."),
        ("héllo\n".encode("cp1252"), "héllo\n"),  # too short for charset-normalizer alone
        ("Zażółć gęślą jaźń\n".encode("cp1250"), "Zażółć gęślą jaźń"),
        ("日本語のテキストです。これはテストです。\n".encode("shift_jis"), "日本語のテキストです。"),
        # UTF-8 with one broken byte stays UTF-8; the bad byte becomes U+FFFD instead of mojibake everywhere.
        ("naïve café ".encode() + b"\xff" + " déjà vu\n".encode(), "naïve café \ufffd déjà vu"),
    ],
)
def test_encodings(tmp_path: Path, data: bytes, expected: str) -> None:
    assert expected in read_file(write(tmp_path, "enc.txt", data)).text


def test_markdown_and_rst_titles(tmp_path: Path) -> None:
    md = read_file(write(tmp_path, "a.md", "```\n# not a title\n```\n\n## Real title ##\n\ntext\n"))
    assert (md.kind, md.title) == ("markdown", "Real title")
    rst = read_file(write(tmp_path, "a.rst", "Guide\n=====\n\nBody.\n"))
    assert (rst.kind, rst.title) == ("rst", "Guide")


def test_html_drops_chrome_and_keeps_structure(tmp_path: Path) -> None:
    doc = read_file(write(tmp_path, "page.html", HTML))
    assert doc.kind == "html"
    assert doc.title == "My Page"
    assert doc.text == (
        "# Guide & Intro\n\nFirst paragraph with bold text.\n\n## Install\n\n- step one\n- step two\n\n"
        "```\npip install nomoat\n\nnomoat ingest ~/notes\n```\n\nKey | Value\na | 1\n\nLine one\nLine two\n\n"
        "### Linux\n\nUse apt."
    )
    for dropped in ("script text", "color", "Site logo", "Nav item", "Sidebar", "Related", "Copyright", "Enable JS"):
        assert dropped not in doc.text


def test_html_declared_charset_and_unclosed_tags(tmp_path: Path) -> None:
    data = '<html><head><meta charset="windows-1252"><body><p>Café<p>Crème<div><nav>menu'.encode("cp1252")
    assert read_file(write(tmp_path, "legacy.htm", data)).text == "Café\n\nCrème"


def test_pdf_pages(tmp_path: Path) -> None:
    pages = ["Alpha page one\nsecond line", "Beta page two", "Gamma page three"]
    doc = read_file(write(tmp_path, "three.pdf", make_pdf(pages)))
    assert doc.kind == "pdf"
    assert len(doc.pages) == 3 and doc.pages[0] == 0
    bounds = [*doc.pages, len(doc.text)]
    got = [doc.text[bounds[i] : bounds[i + 1]].strip() for i in range(3)]
    assert got == pages


def test_docx_headings_lists_tables(tmp_path: Path) -> None:
    blocks = [
        ("Title", "Handbook"),
        ("Heading1", "Install"),
        ("", "Run\tthe installer."),
        ("List", "first"),
        ("List", "second"),
        ("Heading2", "Linux"),
        ("MyHeading", "Custom style based on Heading 2"),
        ("table", [["Key", "Value"], ["a", "1 & 2"]]),
        ("", "The end."),
    ]
    doc = read_file(write(tmp_path, "h.docx", make_docx(blocks)))
    assert doc.kind == "docx"
    assert doc.title == "Handbook"
    assert doc.text == (
        "# Handbook\n\n# Install\n\nRun\tthe installer.\n\n- first\n- second\n\n## Linux\n\n"
        "## Custom style based on Heading 2\n\nKey | Value\na | 1 & 2\n\nThe end."
    )


def test_docx_zip_bomb_is_refused_before_inflating(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match=r"zip bomb: expands to 33\.6 MB"):
        read_file(write(tmp_path, "bomb.docx", make_zip_bomb_docx(32)))
    # Total size limit: 16x max_bytes, whatever the ratio.
    big = make_docx([("", "x" * 200_000)])
    with pytest.raises(ReadError, match="zip bomb"):
        read_file(write(tmp_path, "big.docx", big), max_bytes=10_000)
    # An archive that under-declares its sizes cannot expand past them: zipfile stops at the declared size.
    path = write(tmp_path, "lying.docx", make_zip_bomb_docx(2))
    raw = bytearray(path.read_bytes())
    for offset in (raw.find(b"PK\x03\x04") + 22, raw.find(b"PK\x01\x02") + 24):
        raw[offset : offset + 4] = (100).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(ReadError):
        read_file(path)


def test_docx_expansion_is_bounded_and_each_bound_is_the_reason(tmp_path: Path, monkeypatch: Any) -> None:
    """Issue 18: a 15.9 MiB DOCX expanded to 963 MiB of text; one of empty elements took 1.8 GiB for 16 chars."""
    from nomoat.kb.readers import limits

    para = '<w:p><w:r><w:t xml:space="preserve">{}</w:t></w:r></w:p>'
    cases = [
        ("MAX_XML_ELEMENTS", 10_000, "<w:p/>" * 20_000, "over 10,000 XML elements"),
        ("MAX_TEXT_CHARS", 5_000, para.format("word " * 400) * 5, "too much text: over 5,000 characters"),
        ("MAX_XML_BYTES", 100_000, "<w:p/>" * 30_000, "expands past"),
        ("MAX_DEPTH", 1_000, "<w:sdt>" * 2_000 + "</w:sdt>" * 2_000, "nested over 1,000 deep"),
    ]
    for name, value, body, reason in cases:
        monkeypatch.setattr(limits, name, value)
        with pytest.raises(ReadError, match=reason):
            read_file(write(tmp_path, f"{name}.docx", make_docx_xml(body)))
        monkeypatch.undo()
    ok = read_file(write(tmp_path, "ok.docx", make_docx_xml(para.format("fine"))))
    assert ok.text == "fine"


def test_docx_dtd_is_found_past_the_first_4_kib(tmp_path: Path) -> None:
    for prolog in ("<!--" + "x" * 8192 + "-->", " " * 70_000):  # before: only data[:4096] was looked at
        bomb = prolog + '<!DOCTYPE w:document [<!ENTITY a "aaaaaaaaaa">]>'
        with pytest.raises(ReadError, match="declares a DTD"):
            read_file(write(tmp_path, "dtd.docx", make_docx_xml("<w:p><w:r><w:t>&a;</w:t></w:r></w:p>", bomb)))


def test_docx_of_empty_elements_reads_in_flat_memory(tmp_path: Path) -> None:
    import tracemalloc

    from nomoat.kb.readers import docx

    body = "<w:p/>" * 300_000 + "<w:p><w:r><w:t>sixteen chars ok</w:t></w:r></w:p>"
    data = make_docx_xml(body)
    tracemalloc.start()  # around the reader alone (read_file's read buffer is max_bytes, whatever the file)
    try:
        doc = docx.read_docx(data, 64 * 2**20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert doc.text == "sixteen chars ok"
    assert peak < 8 * 2**20, f"{peak / 2**20:.1f} MiB"  # before: every finished element stayed in the tree


def test_every_reader_is_held_to_the_text_bound(tmp_path: Path, monkeypatch: Any) -> None:
    from nomoat.kb.readers import limits

    monkeypatch.setattr(limits, "MAX_TEXT_CHARS", 1_000)
    for name, data in (("a.html", f"<p>{'word ' * 500}</p>"), ("a.txt", "word " * 500)):
        with pytest.raises(ReadError, match="too much text"):
            read_file(write(tmp_path, name, data))
    with pytest.raises(ReadError, match="too much text"):
        read_file(write(tmp_path, "a.pdf", make_pdf(["word " * 150] * 3)))


def test_code_csv_json(tmp_path: Path) -> None:
    assert read_file(write(tmp_path, "m.py", "def f():\n    return 1\n")).kind == "code"
    assert read_file(write(tmp_path, "Makefile", "all:\n\techo hi\n")).kind == "code"
    assert read_file(write(tmp_path, "t.csv", "a,b\n1,2\n")) == Extracted("a,b\n1,2\n", "csv")
    pretty = '{\n  "a": 1\n}\n'
    assert read_file(write(tmp_path, "p.json", pretty)).text == pretty  # already line-structured: untouched
    minified = json.dumps({"items": [{"id": i, "name": f"item {i}"} for i in range(200)]})
    doc = read_file(write(tmp_path, "min.json", minified))
    assert doc.kind == "json" and doc.text.count("\n") > 200 and json.loads(doc.text) == json.loads(minified)
    jsonl = "".join(json.dumps({"id": i, "text": "x" * 1500}) + "\n" for i in range(3))
    assert read_file(write(tmp_path, "rows.jsonl", jsonl)).text == jsonl  # one record per line: kept


def test_unknown_suffix_is_sniffed(tmp_path: Path) -> None:
    assert read_file(write(tmp_path, "notes.weird", "hello\n")) == Extracted("hello\n", "text")
    with pytest.raises(Unsupported, match=r"binary file \(gzip\)"):
        read_file(write(tmp_path, "data.weird", b"\x1f\x8b\x08\x00" + bytes(100)))


def test_supported() -> None:
    for name in ("a.txt", "A.MD", "x.rst", "i.html", "p.pdf", "d.docx", "s.py", "s.rs", "d.csv", "d.json", "README",
                 "a.png", "b.JPG", "c.tiff", "d.webp", "e.gif", "f.bmp"):  # fmt: skip
        assert supported(Path(name)), name
    for name in ("a.svg", "a.exe", "a.doc", "noext", ".env"):
        assert not supported(Path(name)), name


def test_size_limit_and_not_regular(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match="too large"):
        read_file(write(tmp_path, "big.txt", "x" * 2000), max_bytes=1000)
    with pytest.raises(Unsupported, match="not a regular file"):
        read_file(tmp_path)
    with pytest.raises(ReadError, match="cannot read"):
        read_file(tmp_path / "missing.txt")


def test_hostile_folder_each_file_fails_with_its_reason(tmp_path: Path) -> None:
    expected = make_hostile_folder(tmp_path, fifo=hasattr(os, "mkfifo"))
    assert {p.name for p in tmp_path.iterdir()} == set(expected)
    for name, keyword in expected.items():
        assert supported(tmp_path / name), name
        with pytest.raises(ReadError) as info:  # and nothing else: any other exception fails the test
            read_file(tmp_path / name)
        assert keyword in str(info.value).lower(), (name, str(info.value))
        assert len(str(info.value)) <= 200


def test_parser_exceptions_become_read_errors(tmp_path: Path) -> None:
    bad_xml = zipfile.ZipFile(tmp_path / "bad.docx", "w")
    bad_xml.writestr("word/document.xml", "<w:document><unclosed>")
    bad_xml.close()
    with pytest.raises(ReadError, match="cannot read"):
        read_file(tmp_path / "bad.docx")
    dtd = zipfile.ZipFile(tmp_path / "dtd.docx", "w")
    dtd.writestr("word/document.xml", '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>')
    dtd.close()
    with pytest.raises(ReadError, match="DTD"):
        read_file(tmp_path / "dtd.docx")
