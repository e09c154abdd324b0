"""Image files -> text by OCR, and the one guarded way every reader decodes a picture (:func:`open_picture`).

An image file's text is one block per frame that holds text: a PNG, JPEG, WebP, BMP or GIF (first frame) is one
picture located as ``"photo.jpg (OCR)"``; a multi-page TIFF (what scanners and fax software write) has one per page,
``"page 2 (OCR)"``. A picture without text (a photo) gives no text, so the file is listed as having none.
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from typing import TYPE_CHECKING

from nomoat.config import OcrConfig
from nomoat.kb.readers import ocr
from nomoat.kb.readers.limits import PageTimeout, check_pixels
from nomoat.kb.readers.text import Extracted, ReadError, Unsupported, short

if TYPE_CHECKING:
    from PIL import Image

SUFFIXES = ".png .jpg .jpeg .jpe .jfif .webp .tif .tiff .gif .bmp .dib"


def open_picture(data: bytes, max_pixels: int) -> Image.Image:
    """The picture in ``data``, header parsed and size checked but no pixel decoded yet (``load()`` decodes).

    Raises ReadError for more than ``max_pixels`` pixels (checked before decoding, so a small file that expands to
    gigabytes costs nothing) and for bytes Pillow cannot identify.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # past Pillow's hard limit (179 MP): refused inside open()
        m = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(m.group(1)) / 1e6:,.0f} megapixels" if m else "too many pixels"
        raise ReadError(f"image too large: {size} (limit {max_pixels / 1e6:g} megapixels)") from None
    except UnidentifiedImageError:
        raise ReadError("not an image Pillow can read (damaged, or an unknown format)") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:  # a header cut short or garbled
        raise ReadError(short(f"damaged image: {exc}")) from None
    check_pixels(image.width, image.height, max_pixels)
    return image


def decode(image: Image.Image, max_side: int = ocr.MAX_SIDE) -> Image.Image:
    """Decode the current frame. A JPEG is decoded straight at the smallest 1/2^k scale still >= ``max_side``
    (libjpeg's DCT scaling: a 48 MP photo costs a quarter of the time and memory). Raises ReadError when the
    data is truncated or damaged."""
    try:
        if image.format == "JPEG" and max(image.size) > 2 * max_side:
            image.draft("RGB", (max_side, max_side))
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as exc:  # Pillow's
        raise ReadError(short(f"damaged image: {exc}")) from None
    return image


def read_image(data: bytes, name: str, config: OcrConfig, progress: ocr.ProgressFn | None = None) -> Extracted:
    """OCR an image file (see the module docstring). Raises ReadError (Unsupported when OCR is off)."""
    if config.engine == "off":
        raise Unsupported("image (OCR is off)")
    image = open_picture(data, config.max_pixels)
    frames = getattr(image, "n_frames", 1) if image.format == "TIFF" else 1  # a GIF's other frames are animation
    count = min(frames, config.max_pages)
    blocks: list[tuple[str, str | None]] = []
    problems: list[str] = []
    for i in range(count):
        label = f"page {i + 1}{ocr.MARK}" if frames > 1 else f"{name}{ocr.MARK}"
        try:
            if i:
                image.seek(i)
                check_pixels(image.width, image.height, config.max_pixels, f"page {i + 1}")
            blocks.append((ocr.read_picture(decode(image), config), label))
        except PageTimeout:
            problems.append(f"{label}: OCR timed out after {config.page_timeout_s:g} s")
        except ReadError as exc:
            if frames == 1:
                raise
            problems.append(f"page {i + 1}: {exc}")
        if progress:
            progress(i + 1, count)
    if frames > count:
        pages = f"page {frames}" if frames == count + 1 else f"pages {count + 1}-{frames}"
        problems.append(f"{pages}: not read (limit {config.max_pages} pages per file)")
    text, spans = ocr.join_blocks(blocks)
    if not text:
        raise ReadError(problems[0]) if problems else Unsupported("no text found in the image (OCR)")
    return Extracted(text, "image", ocr=tuple(spans), problems=tuple(problems))
