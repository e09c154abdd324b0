"""PDF -> text, page by page (pypdf); ``Extracted.pages`` holds where each page starts."""

from __future__ import annotations

import contextlib
import io

from nomoat.kb.readers.text import Extracted, ReadError, normalize, short


def read_pdf(data: bytes) -> Extracted:
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
    texts, errors = [], []
    for number, page in enumerate(pages, 1):
        try:
            texts.append(normalize(page.extract_text() or "").strip())
        except Exception as e:  # one broken page should not lose the others
            texts.append("")
            errors.append(f"page {number}: {e}")
    if len(errors) == len(pages):
        raise ReadError(short(f"malformed PDF: {errors[0]}"))
    starts = [0]
    for text in texts[:-1]:
        starts.append(starts[-1] + len(text) + 2)  # pages are joined by a blank line
    title = ""
    with contextlib.suppress(Exception):
        title = str((reader.metadata or {}).get("/Title") or "").strip()
    return Extracted("\n\n".join(texts), "pdf", pages=tuple(starts), title=title[:200])
