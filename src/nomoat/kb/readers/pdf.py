"""PDF -> text, page by page (pypdf); ``Extracted.pages`` holds where each page starts.

With OCR on (``OcrConfig.engine``), pdfium (pypdfium2) adds what the text layer lacks: a page with an image and
almost no text ("scanned": fewer than ``min_page_chars`` letters) is rendered at ``dpi`` and OCR'd instead; on the
other pages, each image of at least ``min_image_side`` pixels is decoded and OCR'd, and the text it holds follows
the page's own, as ``"image 2 on page 5 (OCR)"``. Sizes come from the PDF before anything is decoded or rendered.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from nomoat.config import OcrConfig
from nomoat.kb.readers import ocr
from nomoat.kb.readers.limits import PageTimeout, check_pixels, check_text
from nomoat.kb.readers.text import Extracted, ReadError, normalize, short

if TYPE_CHECKING:
    from PIL import Image

Block = tuple[str, str | None]  # (text, location when OCR read it)
_LETTERS = re.compile(r"[^\W_]")


def read_pdf(data: bytes, config: OcrConfig | None = None, progress: ocr.ProgressFn | None = None) -> Extracted:
    """The PDF's text, OCR'd where it has none when ``config`` is given and its engine is not "off"."""
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
                raise ReadError(short(f"encrypted PDF: {e}")) from None
            if not ok:
                raise ReadError("encrypted PDF (needs a password)")
        pages = list(reader.pages)
    except ReadError:
        raise
    except Exception as e:
        raise ReadError(short(f"malformed PDF: {e}")) from None
    if not pages:
        raise ReadError("malformed PDF: no pages")
    texts, errors, chars = [], [], 0
    for number, page in enumerate(pages, 1):
        try:
            texts.append(normalize(page.extract_text() or "").strip())
        except Exception as e:  # one broken page should not lose the others
            texts.append("")
            errors.append(f"page {number}: {e}")
        chars += len(texts[-1])
        check_text(chars)  # page by page: a PDF of repeated content streams is refused before it is all text
    if len(errors) == len(pages) and not (config and config.engine != "off"):
        raise ReadError(short(f"malformed PDF: {errors[0]}"))
    blocks: list[list[Block]] = [[(text, None)] for text in texts]
    problems = [short(e) for e in errors]
    if config is not None and config.engine != "off":
        problems += _ocr(data, texts, blocks, config, progress)
    joined = [ocr.join_blocks(page_blocks) for page_blocks in blocks]
    starts, spans = [0], []
    for i, (text, page_spans) in enumerate(joined):
        spans += [(starts[i] + a, starts[i] + b, where) for a, b, where in page_spans]
        starts.append(starts[i] + len(text) + 2)  # pages are joined by a blank line
    title = ""
    with contextlib.suppress(Exception):
        title = str((reader.metadata or {}).get("/Title") or "").strip()
    return Extracted(
        "\n\n".join(text for text, _ in joined), "pdf", pages=tuple(starts[:-1]), title=title[:200],
        ocr=tuple(spans), problems=tuple(problems),
    )  # fmt: skip


def _ocr(
    data: bytes, texts: list[str], blocks: list[list[Block]], config: OcrConfig, progress: ocr.ProgressFn | None
) -> list[str]:
    """OCR the scanned pages and the images of the others into ``blocks``; returns what could not be read."""
    import pypdfium2 as pdfium

    try:
        doc = pdfium.PdfDocument(data)
    except Exception as e:  # pdfium is stricter than pypdf on some damaged files: the text layer stays
        return [short(f"pages not OCR'd: pdfium cannot open the file: {e}")]
    problems: list[str] = []
    over = ""
    try:
        work = list(_plan(doc, texts, config, problems))
        if len(work) > config.max_pages:
            rest = [where.removesuffix(ocr.MARK) for _, _, where in work[config.max_pages :]]
            listed = ", ".join(rest[:3]) + (f" and {len(rest) - 3} more" if len(rest) > 3 else "")
            over = f"{listed}: not OCR'd (limit {config.max_pages} pages and images per file)"
            work = work[: config.max_pages]
        for done, (page_no, image_no, where) in enumerate(work, 1):
            try:
                text = ocr.read_picture(_picture(doc, page_no, image_no, config), config)
            except PageTimeout:
                problems.append(f"{where}: OCR timed out after {config.page_timeout_s:g} s")
                text = ""
            except ocr.OcrUnavailable as e:
                problems.append(f"pages not OCR'd: {e}")
                break
            except ReadError as e:
                problems.append(f"{where}: {e}")
                text = ""
            if text and image_no is None:
                blocks[page_no - 1] = [(text, where)]  # the scan's text replaces its page number or nothing
            elif text:
                blocks[page_no - 1].append((text, where))
            if progress:
                progress(done, len(work))
    finally:
        doc.close()
    return [*problems, over] if over else problems


def _plan(doc: Any, texts: list[str], config: OcrConfig, problems: list[str]) -> Iterator[tuple[int, int | None, str]]:
    """``(page number, image number or None for the whole page, location)`` of each picture to OCR."""
    for page_no, text in enumerate(texts, 1):
        sizes = _image_sizes(doc, page_no, config)
        if sizes and len(_LETTERS.findall(text)) < config.min_page_chars:  # a blank page has no image
            yield page_no, None, f"page {page_no}, scanned{ocr.MARK}"
            continue
        for image_no, (width, height) in enumerate(sizes, 1):
            where = f"image {image_no} on page {page_no}{ocr.MARK}"
            if width * height > config.max_pixels:
                problems.append(f"{where}: too large ({width:,} x {height:,} pixels)")
            else:
                yield page_no, image_no, where


def _images(page: Any, config: OcrConfig) -> Iterator[Any]:
    """The page's image objects (inside forms too) big enough to hold text, in drawing order."""
    import pypdfium2.raw as pdfium_c

    for obj in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=4):
        try:
            width, height = obj.get_px_size()
        except Exception:  # an image pdfium cannot size: it cannot decode it either
            continue
        if min(width, height) >= config.min_image_side:
            yield obj


def _image_sizes(doc: Any, page_no: int, config: OcrConfig) -> list[tuple[int, int]]:
    page = doc[page_no - 1]
    try:
        return [obj.get_px_size() for obj in _images(page, config)]
    except Exception:  # a page pdfium cannot walk keeps its text layer
        return []
    finally:
        page.close()


def _picture(doc: Any, page_no: int, image_no: int | None, config: OcrConfig) -> Image.Image:
    """The rendered page (``image_no`` None) or the page's ``image_no``-th image, as a PIL image."""
    page = doc[page_no - 1]
    try:
        if image_no is None:
            width, height = page.get_size()  # points (1/72 in)
            scale = min(config.dpi / 72, ocr.MAX_SIDE / max(width, height, 1))  # no bigger than OCR will use
            check_pixels(round(width * scale), round(height * scale), config.max_pixels, f"page {page_no}")
            bitmap = page.render(scale=scale, grayscale=True)
        else:
            obj = next(obj for i, obj in enumerate(_images(page, config), 1) if i == image_no)
            try:
                bitmap = obj.get_bitmap(render=False)
            except Exception:  # colour spaces pdfium only handles when drawing
                bitmap = obj.get_bitmap(render=True)
        return bitmap.to_pil().copy()  # to_pil may share pdfium's buffer, which goes with the bitmap
    except ReadError:
        raise
    except Exception as e:
        raise ReadError(short(f"cannot render: {e}")) from None
    finally:
        page.close()
