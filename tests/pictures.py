"""Pictures made by the tests: text drawn by Pillow in fonts that ship with matplotlib (a nomoat dependency, so
every machine has them), an image-only PDF (what a scanner writes) and a text PDF with a picture inside."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
from PIL import Image, ImageDraw, ImageFont

FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
SANS, SERIF, MONO = (str(FONTS / name) for name in ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono-Bold.ttf"))
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
"""A real photograph (a portrait, 512 x 600) with no text in it."""


def draw_text(lines: list[tuple[str, str, int]], width: int = 720, margin: int = 16) -> Image.Image:
    """Black ``(text, font file, pixel size)`` lines on white, each below the last with a half-line gap."""
    fonts = [ImageFont.truetype(font, size) for _, font, size in lines]
    height = margin * 2 + sum(int(size * 1.6) for _, _, size in lines)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    y = margin
    for (text, _, size), font in zip(lines, fonts, strict=True):
        draw.text((margin, y), text, font=font, fill="black")
        y += int(size * 1.6)
    return image


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def image_pdf(pages: list[Image.Image], dpi: int = 100) -> bytes:
    """A PDF whose pages are only these pictures, no text layer (Pillow's PDF writer, as a scanner's output)."""
    out = io.BytesIO()
    pages[0].save(out, "PDF", save_all=True, append_images=pages[1:], resolution=dpi)
    return out.getvalue()


def pdf_with_picture(text: str, picture: Image.Image) -> bytes:
    """One letter-size page: a line of Helvetica text, and below it ``picture`` as a JPEG image XObject."""
    jpeg = encode(picture.convert("RGB"), "JPEG", quality=95)
    w, h = picture.size
    content = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET q {w * 0.75:.1f} 0 0 {h * 0.75:.1f} 72 400 cm /Im1 Do Q".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [4 0 R] /Count 1 >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 3 0 R >> /XObject << /Im1 6 0 R >> >> /Contents 5 0 R >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB /BitsPerComponent 8 "
        b"/Filter /DCTDecode /Length %d >>\nstream\n%s\nendstream" % (w, h, len(jpeg), jpeg),
    ]
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
