"""Test files made on the fly: valid PDFs/DOCX with known text, and a folder of hostile files.

`make_hostile_folder(root)` is shared by the reader tests and the ingest test "a hostile folder ingests without a
crash": every file it writes has a supported suffix, so a folder walker hands each one to `read_file`, which must
raise ReadError whose message contains the keyword returned for that file name (compare lowercased).
"""

from __future__ import annotations

import functools
import os
import random
import struct
import zipfile
import zlib
from pathlib import Path

# A page with everything the HTML reader must drop (script, style, nav, header, aside, footer, noscript) or keep.
HTML = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>My  Page</title>
<style>body { color: red }</style><script>var x = "<p>script text</p>";</script></head><body>
<header>Site logo</header><nav><ul><li>Nav item</li></ul></nav><div role="navigation">Sidebar</div>
<main><article><header><h1>Guide &amp; Intro<a class="headerlink" href="#x">¶</a></h1></header>
<p>First   paragraph
with <b>bold</b> text.</p>
<h2>Install</h2><ul><li>step one</li><li><p>step two</p></li></ul>
<pre><code>pip install nomoat

nomoat ingest ~/notes</code></pre>
<table><tr><th>Key</th><th>Value</th></tr><tr><td>a</td><td>1</td></tr></table>
<p>Line one<br>Line two</p><h3>Linux</h3><p>Use apt.</p></article></main>
<aside>Related links</aside><footer>Copyright 2024</footer><noscript>Enable JS</noscript></body></html>"""


def make_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF with one Helvetica text line per line of each page's text (ASCII only)."""
    n = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(n))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, text in enumerate(pages):
        ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
        for line in text.split("\n"):
            escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
            ops.append(f"({escaped}) Tj T*")
        stream = "\n".join([*ops, "ET"]).encode("latin-1")
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {5 + 2 * i} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


_W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_WP_NS = "http://schemas.openxmlformats.org/drawingml/2006/wordprocessingDrawing"
_A_NS = "http://schemas.openxmlformats.org/drawingml/2006/main"
_PIC_NS = "http://schemas.openxmlformats.org/drawingml/2006/picture"
_R_NS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_STYLES = (
    f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:styles xmlns:w="{_W_NS}">'
    '<w:style w:type="paragraph" w:styleId="Title"><w:name w:val="Title"/></w:style>'
    '<w:style w:type="paragraph" w:styleId="Heading1"><w:name w:val="heading 1"/>'
    '<w:pPr><w:outlineLvl w:val="0"/></w:pPr></w:style>'
    '<w:style w:type="paragraph" w:styleId="Heading2"><w:name w:val="heading 2"/>'
    '<w:pPr><w:outlineLvl w:val="1"/></w:pPr></w:style>'
    '<w:style w:type="paragraph" w:styleId="MyHeading"><w:name w:val="My Heading"/><w:basedOn w:val="Heading2"/>'
    "</w:style></w:styles>"
)


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def make_docx(blocks: list[tuple[str, str | list[list[str]]]], media: dict[str, bytes] | None = None) -> bytes:
    """A minimal valid .docx. blocks: ("Title"|"Heading1"|"Heading2"|"MyHeading"|"List"|"" , text) paragraphs,
    ("table", [[cell, ...], ...]), or ("picture", name): a paragraph holding the picture word/media/name from
    ``media`` (a DrawingML inline picture, as Word writes one)."""
    body = []
    pictures = {name: f"rIdPic{i}" for i, name in enumerate(media or {}, 1)}
    for style, content in blocks:
        if style == "picture":
            body.append(
                f'<w:p><w:r><w:drawing><wp:inline xmlns:wp="{_WP_NS}"><a:graphic xmlns:a="{_A_NS}"><a:graphicData>'
                f'<pic:pic xmlns:pic="{_PIC_NS}"><pic:blipFill>'
                f'<a:blip xmlns:r="{_R_NS}" r:embed="{pictures[content]}"/>'
                "</pic:blipFill></pic:pic></a:graphicData></a:graphic></wp:inline></w:drawing></w:r></w:p>"
            )
            continue
        if style == "table":
            rows = "".join(
                "<w:tr>" + "".join(f"<w:tc><w:p><w:r><w:t>{_esc(c)}</w:t></w:r></w:p></w:tc>" for c in row) + "</w:tr>"
                for row in content
            )
            body.append(f"<w:tbl>{rows}</w:tbl>")
            continue
        ppr = ""
        if style == "List":
            ppr = '<w:pPr><w:numPr><w:ilvl w:val="0"/><w:numId w:val="1"/></w:numPr></w:pPr>'
        elif style:
            ppr = f'<w:pPr><w:pStyle w:val="{style}"/></w:pPr>'
        assert isinstance(content, str)
        runs = "<w:r><w:tab/></w:r>".join(
            f'<w:r><w:t xml:space="preserve">{_esc(t)}</w:t></w:r>' for t in content.split("\t")
        )
        body.append(f"<w:p>{ppr}{runs}</w:p>")
    document = (
        f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:document xmlns:w="{_W_NS}"><w:body>'
        + "".join(body)
        + "</w:body></w:document>"
    )
    ct = "application/vnd.openxmlformats-officedocument.wordprocessingml"
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    buf = _zip(
        {
            "[Content_Types].xml": '<?xml version="1.0" encoding="UTF-8"?>'
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            f'<Override PartName="/word/document.xml" ContentType="{ct}.document.main+xml"/>'
            f'<Override PartName="/word/styles.xml" ContentType="{ct}.styles+xml"/></Types>',
            "_rels/.rels": '<?xml version="1.0" encoding="UTF-8"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            f'<Relationship Id="rId1" Type="{rel}/officeDocument" Target="word/document.xml"/></Relationships>',
            "word/_rels/document.xml.rels": '<?xml version="1.0" encoding="UTF-8"?>'
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            f'<Relationship Id="rId1" Type="{rel}/styles" Target="styles.xml"/>'
            + "".join(
                f'<Relationship Id="{rid}" Type="{rel}/image" Target="media/{name}"/>' for name, rid in pictures.items()
            )
            + "</Relationships>",
            "word/document.xml": document,
            "word/styles.xml": _STYLES,
            **{f"word/media/{name}": data for name, data in (media or {}).items()},
        }
    )
    return buf


def _zip(parts: dict[str, str | bytes]) -> bytes:
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in parts.items():
            z.writestr(name, text)
    return buf.getvalue()


def make_docx_xml(body: str, prolog: str = "") -> bytes:
    """A docx whose word/document.xml is ``prolog`` + a w:document around the raw ``body`` XML (hostile shapes)."""
    document = f'{prolog}<w:document xmlns:w="{_W_NS}"><w:body>{body}</w:body></w:document>'
    return _zip({"[Content_Types].xml": "<Types/>", "word/document.xml": document})


def make_zip_bomb_docx(expanded_mb: int = 256) -> bytes:
    """A real docx-shaped zip whose word/document.xml inflates to `expanded_mb` MiB (of zeros) from ~1 KB per MiB.

    Built from one deflate block repeated (a full flush makes every 1 MiB block identical), so writing it is fast;
    the CRC is the true one, so a reader that inflates it really gets `expanded_mb` MiB.
    """
    mib = bytes(2**20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(mib) + compressor.flush(zlib.Z_FULL_FLUSH)
    data = block * expanded_mb + compressor.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(expanded_mb):
        crc = zlib.crc32(mib, crc)
    size = expanded_mb * 2**20
    name = b"word/document.xml"
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(data), size, len(name), 0) + name
    central = struct.pack(
        "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc, len(data), size, len(name), 0, 0, 0, 0, 0, 0
    )
    central += name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    return local + data + central + end


@functools.cache  # ~0.3 s at 20,000, and several tests write the hostile folder
def make_png_bomb(side: int) -> bytes:
    """A valid side x side 1-bit PNG of zeros: 220 KB at 20,000 x 20,000, which is 1.2 GB once decoded to RGB.

    Rows are compressed a thousand at a time, so even a 20,000 x 20,000 one takes a moment and little memory.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(1)
    row = bytes(1 + (side + 7) // 8)  # filter byte 0, then the row's bits
    rows = row * 1000
    idat = b"".join(compressor.compress(rows[: len(row) * min(1000, side - i)]) for i in range(0, side, 1000))
    idat += compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def make_jpeg(width: int, height: int) -> bytes:
    """A JPEG with some structure (stripes and a gradient), for truncation."""
    import io

    from PIL import Image

    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    for x in range(0, width, 40):
        image.paste((200, 30, 30), (x, 0, x + 10, height))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def make_hostile_folder(root: Path, *, fifo: bool = False) -> dict[str, str]:
    """Write hostile files into `root`; return file name → keyword expected in str(ReadError) (lowercase compare).

    fifo=True adds a named pipe "pipe.txt" (POSIX only): a reader that opens it blocking would hang forever.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(3)
    files: dict[str, tuple[bytes, str]] = {
        "empty.txt": (b"", "empty"),
        "blank.md": (b"\n   \n\t\n", "no text"),
        "binary.txt": (b"\x01\x02\x03\x00\x00\x00data\x00" * 512, "binary file"),
        "image.md": (b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(2048)), "binary file (png)"),
        # Random bytes without NUL: no encoding makes text of them.
        "invalid_utf8.txt": (bytes(rng.randrange(1, 256) for _ in range(4096)), "not utf-8"),
        "huge_line.txt": (b"word " * (5 * 2**20 // 5), "line too long"),
        "bomb.docx": (make_zip_bomb_docx(), "zip bomb"),
        "not_a_zip.docx": (b"This is plain text with a .docx suffix.\n", "not a docx"),
        "malformed.pdf": (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\ngarbage", "malformed pdf"),
        "truncated.pdf": (make_pdf(["one", "two"])[:200], "malformed pdf"),
        "bomb.png": (make_png_bomb(20_000), "image too large"),
        "truncated.jpg": (make_jpeg(640, 480)[:6000], "damaged image"),
    }
    for name, (data, _) in files.items():
        (root / name).write_bytes(data)
    expected = {name: keyword for name, (_, keyword) in files.items()}
    if fifo and hasattr(os, "mkfifo"):
        os.mkfifo(root / "pipe.txt")
        expected["pipe.txt"] = "not a regular file"
    return expected
