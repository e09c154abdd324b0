"""Bounds every reader shares: pixels per image (checked before decoding) and wall-clock time per page.

The numbers live in :class:`nomoat.config.OcrConfig` (part of ``IngestConfig``); this module only enforces them.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

from nomoat.kb.readers.text import ReadError


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
