"""Bounds every reader shares: pixels per image (checked before decoding), wall-clock time per page, and how much a
file may expand into: text characters, XML bytes inflated from a zip, XML elements, nesting depth.

The OCR numbers live in :class:`nomoat.config.OcrConfig` (part of ``IngestConfig``); the expansion bounds are
here. They keep one file's memory bounded whatever its reader: a 15.9 MiB DOCX used to expand to 963 MiB of text
and 1.29 M chunks at 3 GiB RSS, and a 5.4 MiB one of empty elements to 1.8 GiB while yielding 16 characters.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from nomoat.kb.readers.text import ReadError

MAX_TEXT_CHARS = 16 * 2**20
"""Extracted text per file (~8,000 pages of prose; ~30,000 chunks, ~50 MB of vectors). More fails the file."""
MAX_XML_BYTES = 256 * 2**20
"""XML inflated from one zip member (DOCX's word/document.xml), counted while it streams."""
MAX_XML_ELEMENTS = 2_000_000
"""XML elements in one part (a 500-page report has a few hundred thousand)."""
MAX_DEPTH = 1_000
"""Open elements at once (HTML, XML): real documents nest a few dozen deep."""


def check_text(chars: int, what: str = "text") -> None:
    """Raise ReadError once a file's extracted text passes MAX_TEXT_CHARS (call it as text accumulates)."""
    if chars > MAX_TEXT_CHARS:
        raise ReadError(f"too much {what}: over {MAX_TEXT_CHARS:,} characters (limit per file)")


class PageTimeout(Exception):
    """One page or image took longer than its own limit. Caught by the reader, which goes on with the next page;
    deliberately not a TimeoutError, which is the caller's whole-file deadline and must pass through."""


def check_pixels(width: int, height: int, limit: int, what: str = "image") -> None:
    """Raise ReadError when ``width x height`` exceeds ``limit``: call it on the header's size, before decoding."""
    if width * height > limit:
        raise ReadError(f"{what} too large: {width:,} x {height:,} pixels (limit {limit / 1e6:g} megapixels)")


@contextlib.contextmanager
def page_deadline(seconds: float) -> Iterator[None]:
    """Raise PageTimeout in this block after ``seconds``; the time spent here does not count against an outer
    alarm (ingest's per-file limit), which is paused on entry and re-armed with what it had left on exit.

    SIGALRM, so only in the main thread on POSIX; elsewhere (or with ``seconds <= 0``) there is no limit. Native
    code (onnxruntime, pdfium) sees the signal when its current call returns, so the bound is that coarse.
    """
    if seconds <= 0 or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return
    outer_left, _ = signal.setitimer(signal.ITIMER_REAL, 0)  # pauses the outer alarm, telling what it had left

    def _alarm(signum: int, frame: Any) -> None:
        raise PageTimeout

    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer_left > 0:
            signal.setitimer(signal.ITIMER_REAL, outer_left)
