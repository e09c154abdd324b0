"""Text from pictures: the OCR engines and what every reader does with one picture (:func:`read_picture`).

Two engines, chosen by ``OcrConfig.engine`` (measured side by side on the R manuals: docs/benchmarks.md):

- ``rapidocr`` (default): PaddleOCR's PP-OCRv4 detection and recognition models, which ship inside the
  ``rapidocr-onnxruntime`` wheel and run on onnxruntime; nothing is downloaded at run time.
- ``tesseract``: Debian's ``tesseract-ocr`` binary, fed a PNG on stdin (no Python binding to install).

Each engine is loaded once per process (:func:`engine`), on the first picture that needs it; importing this
module imports neither. A missing engine is a one-line ReadError that says how to install it.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from nomoat.config import OcrConfig, default_threads
from nomoat.errors import UserError
from nomoat.kb.readers.limits import PageTimeout, page_deadline
from nomoat.kb.readers.text import ReadError, Span, normalize, short

if TYPE_CHECKING:
    from PIL import Image

MARK = " (OCR)"
"""Ends the location of every chunk read by OCR ("page 3, scanned (OCR)"), so search, citations and the UI say so."""
MAX_SIDE = 2000
"""Pictures are scaled down to this longest side before OCR: detail past it costs time and adds nothing for text
(both engines were measured at 150 dpi, 1275 x 1650 for a letter page)."""


# The PP-OCR recognition model is Chinese/English: it writes ASCII punctuation in its full-width forms
# ("read.table（"x"），" for 'read.table("x"),'). U+FF01-FF5E map one to one onto U+0021-007E.
_FULL_WIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}


class OcrUnavailable(ReadError):
    """The engine is not installed; str(e) says how to install it."""


class Engine(Protocol):
    def read(self, image: Image.Image) -> str:
        """The text of an RGB image in reading order: lines end with \\n, blocks are apart by a blank line."""
        ...


class RapidOcr:
    """PP-OCRv4 (multilingual Chinese/English recognition) through onnxruntime."""

    hint = "OCR needs the rapidocr-onnxruntime package: pip install rapidocr-onnxruntime"

    @classmethod
    def missing(cls) -> str | None:
        return None if importlib.util.find_spec("rapidocr_onnxruntime") else cls.hint

    def __init__(self) -> None:
        import logging

        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:  # also cv2 without its system libraries (libGL)
            raise OcrUnavailable(short(f"{self.hint} ({exc})")) from None
        for name in ("RapidOCR", "OrtInferSession"):  # they log to stderr, over the progress bar
            logging.getLogger(name).setLevel(logging.ERROR)
        # limit_type "max": detection at most 1280 px on the long side. The package's default ("min", 736) blows a
        # 300 x 60 screenshot crop up to 3680 x 736 before detecting, 50x the work; recognition still reads the
        # full-resolution crops.
        self._ocr = RapidOCR(
            det_limit_type="max", det_limit_side_len=1280, intra_op_num_threads=default_threads(),
            inter_op_num_threads=1, use_cls=False,
        )  # fmt: skip

    def read(self, image: Image.Image) -> str:
        result, _ = self._ocr(image)
        boxes = []
        for points, text, score in result or ():
            if score >= 0.5 and text.strip():  # the package's own text_score cut
                xs, ys = [p[0] for p in points], [p[1] for p in points]
                boxes.append((min(xs), min(ys), max(xs), max(ys), text.strip().translate(_FULL_WIDTH)))
        return layout(boxes)


class Tesseract:
    """Debian's tesseract-ocr (English model), one process per picture."""

    hint = "the tesseract OCR engine needs Debian's tesseract-ocr: apt-get install tesseract-ocr (or use rapidocr)"

    @classmethod
    def missing(cls) -> str | None:
        return None if shutil.which("tesseract") else cls.hint

    def __init__(self) -> None:
        binary = shutil.which("tesseract")
        if binary is None:
            raise OcrUnavailable(self.hint)
        self._binary = binary

    def read(self, image: Image.Image) -> str:
        png = io.BytesIO()
        image.save(png, "PNG", compress_level=1)
        # OMP_THREAD_LIMIT=1: tesseract's OpenMP threads only contend with each other on small machines
        # (its own documentation advises it for one page at a time).
        done = subprocess.run(
            [self._binary, "stdin", "stdout", "-l", "eng", "--psm", "3"],
            input=png.getvalue(), capture_output=True, env={**os.environ, "OMP_THREAD_LIMIT": "1"},
            check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise ReadError(short(f"tesseract failed: {done.stderr.decode(errors='replace').strip()}"))
        return re.sub(r"\n{3,}", "\n\n", done.stdout.decode("utf-8", errors="replace").replace("\f", "")).strip()


ENGINES: dict[str, type[RapidOcr] | type[Tesseract]] = {"rapidocr": RapidOcr, "tesseract": Tesseract}
"""OCR engines by ``OcrConfig.engine`` name ("off" is no engine)."""


def check_engine(name: str) -> None:
    """Raise UserError when ``name`` is not an engine or "off", or its package or program is not installed."""
    if name == "off":
        return
    if name not in ENGINES:
        raise UserError(f"unknown OCR engine {name!r}: choose one of {', '.join([*ENGINES, 'off'])}")
    hint = ENGINES[name].missing()
    if hint:
        raise UserError(hint)


@functools.cache
def engine(name: str) -> Engine:
    """The engine called ``name``, loaded once per process. Raises OcrUnavailable when it is not installed."""
    if name not in ENGINES:
        raise OcrUnavailable(f"unknown OCR engine {name!r}")
    return ENGINES[name]()


def read_picture(image: Image.Image, config: OcrConfig) -> str:
    """OCR one picture under ``config.page_timeout_s``: "" when it holds no text (a photo, a chart without
    labels). Raises ReadError when the engine is missing or fails; PageTimeout (limits) past the time limit."""
    reader = engine(config.engine)
    try:
        with page_deadline(config.page_timeout_s):
            text = normalize(reader.read(prepare(image))).strip()
    except (ReadError, PageTimeout):
        raise
    except Exception as exc:  # rapidocr wraps whatever onnxruntime raised, our alarm's PageTimeout included
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, PageTimeout):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise PageTimeout from None
        raise ReadError(short(f"OCR failed: {type(exc).__name__}: {exc}")) from exc
    return text if len(re.findall(r"[^\W_]", text)) >= config.min_text_chars else ""


def prepare(image: Image.Image) -> Image.Image:
    """RGB (alpha flattened onto white: transparent screenshots are black otherwise), at most MAX_SIDE pixels."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, "white")
        image = Image.alpha_composite(flat, rgba)
    if max(image.size) > MAX_SIDE:
        scale = MAX_SIDE / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image.convert("RGB") if image.mode != "RGB" else image


def layout(boxes: Sequence[tuple[float, float, float, float, str]]) -> str:
    """Text boxes ``(x0, y0, x1, y1, text)`` -> lines and blocks. Boxes whose vertical centres are within half a
    line of each other are one line (left to right); a gap taller than ~0.8 line starts a new block."""
    rows: list[list[tuple[float, float, float, float, str]]] = []
    for box in sorted(boxes, key=lambda b: (b[1] + b[3]) / 2):
        centre, height = (box[1] + box[3]) / 2, box[3] - box[1]
        if rows:
            last = rows[-1]
            last_centre = sum((b[1] + b[3]) / 2 for b in last) / len(last)
            if abs(centre - last_centre) < 0.5 * max(height, min(b[3] - b[1] for b in last)):
                last.append(box)
                continue
        rows.append([box])
    lines: list[str] = []
    previous_bottom: float | None = None
    heights = sorted(max(b[3] - b[1] for b in row) for row in rows)
    typical = heights[len(heights) // 2] if heights else 0.0
    for row in rows:
        top, bottom = min(b[1] for b in row), max(b[3] for b in row)
        if previous_bottom is not None and top - previous_bottom > 0.8 * typical:
            lines.append("")
        lines.append(" ".join(b[4] for b in sorted(row, key=lambda b: b[0])))
        previous_bottom = bottom
    return "\n".join(lines)


def join_blocks(blocks: Iterable[tuple[str, str | None]]) -> tuple[str, list[Span]]:
    """Non-empty blocks ``(text, location or None)`` joined by blank lines, and the spans of the located ones
    (``location`` is where OCR read them, ending in MARK)."""
    parts: list[str] = []
    spans: list[Span] = []
    length = 0
    for block, location in blocks:
        if not block:
            continue
        if parts:
            parts.append("\n\n")
            length += 2
        if location:
            spans.append((length, length + len(block), location))
        parts.append(block)
        length += len(block)
    return "".join(parts), spans


ProgressFn = Callable[[int, int], None]
"""``progress(done, total)``: called by readers after each page or image they OCR."""
