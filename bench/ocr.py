"""OCR engines side by side on a real PDF, then a scanned copy of it ingested and asked about.

    python bench/ocr.py                        # R-data pages 9-20, both engines, then ingest + ask (~15 min)
    python bench/ocr.py --manual R-intro --pages 1-113 --engines rapidocr --parts engines

Corpus: the R manuals from Debian's r-doc-pdf (bench/corpus.py), typeset by texinfo/LaTeX with a true text layer.

* engines: every page is rendered at --dpi by pdfium (what nomoat does to a scanned page) and OCR'd by each engine
  through nomoat's own reader code (``ocr.prepare`` then the engine's ``read``), one page at a time, in the same
  process, engines interleaved page by page so machine load hits both alike. Accuracy is the character error rate
  (Levenshtein distance / reference length) against the page's text layer as nomoat's PDF reader extracts it,
  both sides NFKC-normalised with curly quotes and dashes made ASCII, dot leaders dropped and runs of whitespace
  made one space (a second figure ignores whitespace altogether). Speed is pages/s of OCR alone (rendering is
  timed apart).
* ask: the rendered pages are saved as an image-only PDF (no text layer: what a scanner writes), ingested with
  the default engine into a fresh KB beside another R manual with a text layer (R-FAQ), and `nomoat ask` with the
  bundled model answers a question whose answer is only in the scan; the run checks that a citation names the
  scanned file at "page N, scanned (OCR)" where N is the page that holds the answer in the original (offset by
  where the page range starts).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import r_doc_pdf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
LEADERS = re.compile(r"(?:\.[ \t]*){3,}")
ASCII = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"', "–": "-", "—": "-", "−": "-", "\u00a0": " "})
# A question answered on one page of R-data only (section 2.2), and the words the answer must hold.
QUESTION = {"R-data": ("Which R function reads fixed-width-format files?", "read.fwf")}


def normalise(text: str) -> str:
    """NFKC, ASCII quotes and dashes, no dot leaders (". . . ." in a table of contents is filler that both the
    layer and the engines render inconsistently), one space for any run of whitespace."""
    text = unicodedata.normalize("NFKC", text).translate(ASCII)
    return " ".join(LEADERS.sub(" ", text).split())


def levenshtein(a: str, b: str) -> int:
    """Edit distance, one numpy row per character of ``a``: the insertion chain cur[j] = min(cur[j], cur[j-1] + 1)
    is a running minimum of cur[j] - j, so each row is O(len(b)) vector work."""
    if not a or not b:
        return max(len(a), len(b))
    bb = np.frombuffer(b.encode("utf-32-le"), np.uint32)
    idx = np.arange(len(b) + 1)
    prev = idx.copy()
    for i, ch in enumerate(a, 1):
        cur = np.empty_like(prev)
        cur[0] = i
        cur[1:] = np.minimum(prev[1:] + 1, prev[:-1] + (bb != ord(ch)))  # deletion, substitution
        prev = np.minimum.accumulate(cur - idx) + idx  # insertion
    return int(prev[-1])


def cer(reference: str, hypothesis: str) -> float:
    return levenshtein(reference, hypothesis) / max(1, len(reference))


def render_pages(pdf: Path, pages: list[int], dpi: int) -> tuple[list, float]:
    """PIL images of the given 1-based pages at ``dpi`` (grayscale, as nomoat renders scans) and seconds/page."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(str(pdf))
    start = time.perf_counter()
    images = [doc[p - 1].render(scale=dpi / 72, grayscale=True).to_pil().copy() for p in pages]
    took = (time.perf_counter() - start) / len(pages)
    doc.close()
    return images, took


def bench_engines(pdf: Path, pages: list[int], images: list, engines: list[str]) -> dict[str, dict[str, float]]:
    from nomoat.kb.readers import ocr
    from nomoat.kb.readers.pdf import read_pdf

    layer = read_pdf(pdf.read_bytes(), None)  # the text layer, exactly as nomoat extracts it (no OCR)
    bounds = [*layer.pages, len(layer.text)]
    refs = {p: normalise(layer.text[bounds[p - 1] : bounds[p]]) for p in pages}
    loaded = {}
    for name in engines:
        start = time.perf_counter()
        loaded[name] = ocr.engine(name)
        print(f"{name}: loaded in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    seconds = {name: 0.0 for name in engines}
    errors = {name: 0 for name in engines}
    errors_nows = {name: 0 for name in engines}
    ref_chars = ref_chars_nows = 0
    per_page: dict[str, list[float]] = {name: [] for name in engines}
    for p, image in zip(pages, images, strict=True):
        ref = refs[p]
        ref_chars += len(ref)
        ref_chars_nows += len(ref.replace(" ", ""))
        for name in engines:  # interleaved: the same load on both
            start = time.perf_counter()
            text = loaded[name].read(ocr.prepare(image))
            seconds[name] += time.perf_counter() - start
            hyp = normalise(text)
            errors[name] += levenshtein(ref, hyp)
            errors_nows[name] += levenshtein(ref.replace(" ", ""), hyp.replace(" ", ""))
            per_page[name].append(cer(ref, hyp))
        print(f"page {p}: " + ", ".join(f"{n} {per_page[n][-1]:.3f}" for n in engines), file=sys.stderr)
    return {
        name: {
            "pages": len(pages), "cer": errors[name] / ref_chars, "cer_no_space": errors_nows[name] / ref_chars_nows,
            "median_page_cer": statistics.median(per_page[name]), "worst_page_cer": max(per_page[name]),
            "pages_per_s": len(pages) / seconds[name], "s_per_page": seconds[name] / len(pages),
        }
        for name in engines
    }  # fmt: skip


def bench_ask(manual: str, pdf: Path, pages: list[int], images: list, dpi: int, others: list[Path]) -> dict:
    import nomoat
    from nomoat.kb.readers.pdf import read_pdf

    question, needle = QUESTION[manual]
    layer = read_pdf(pdf.read_bytes(), None)
    bounds = [*layer.pages, len(layer.text)]
    gold = [i for i in pages if needle in layer.text[bounds[i - 1] : bounds[i]]]  # original page numbers
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NOMOAT_HOME"] = str(Path(tmp) / "home")
        folder = Path(tmp) / "docs"
        folder.mkdir()
        scan = folder / f"{manual}-scanned.pdf"
        images[0].save(scan, save_all=True, append_images=images[1:], resolution=dpi)
        for other in others:
            (folder / other.name).write_bytes(other.read_bytes())
        assert not read_pdf(scan.read_bytes(), None).text.strip(), "the scan must have no text layer"
        start = time.perf_counter()
        report = nomoat.ingest(folder, kb="ocrbench")
        ingest_s = time.perf_counter() - start
        start = time.perf_counter()
        answer = nomoat.ask(question, kb="ocrbench")
        ask_s = time.perf_counter() - start
    pages_cited = [
        int(m.group(1)) + pages[0] - 1  # the scan's page 1 is the original's pages[0]
        for c in answer["citations"]
        if c["path"] == str(scan.resolve()) and (m := re.fullmatch(r"page (\d+), scanned \(OCR\)", c["location"]))
    ]
    return {
        "question": question, "needle": needle, "gold_pages": gold, "answer": answer["answer"],
        "grounded": answer["grounded"],
        "citations": [(Path(c["path"]).name, c["location"]) for c in answer["citations"]],
        "cited_gold_page": any(p in gold for p in pages_cited), "answer_has_needle": needle in answer["answer"],
        "ingest_s": ingest_s, "ask_s": ask_s, "added": report["added"], "chunks": report["chunks"],
        "failed": report["failed"], "incomplete": report["incomplete"],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manual", default="R-data", help="which R manual (default R-data, 41 pages)")
    parser.add_argument("--pages", default="9-20", help="page range, 1-based (default 9-20: body text of R-data "
                        "chapters 1-2, with the page that answers the question)")  # fmt: skip
    parser.add_argument("--dpi", type=int, default=150)
    parser.add_argument("--engines", default="rapidocr,tesseract")
    parser.add_argument("--parts", default="engines,ask")
    args = parser.parse_args()
    manuals = r_doc_pdf()
    pdf = manuals[args.manual]
    from pypdf import PdfReader

    count = len(PdfReader(pdf).pages)
    first, _, last = args.pages.partition("-")
    pages = list(range(int(first), min(int(last or first), count) + 1))
    images, render_s = render_pages(pdf, pages, args.dpi)
    print(f"{pdf.name}: {len(pages)} pages rendered at {args.dpi} dpi ({images[0].size[0]} x {images[0].size[1]}), "
          f"{render_s * 1000:.0f} ms/page")  # fmt: skip
    parts = args.parts.split(",")
    if "engines" in parts:
        engines = args.engines.split(",")
        results = bench_engines(pdf, pages, images, engines)
        print(f"{'engine':10} {'pages':>5} {'CER':>7} {'CER no-space':>12} {'median':>7} {'worst':>7} {'pages/s':>8}")
        for name, r in results.items():
            print(f"{name:10} {r['pages']:5d} {r['cer']:7.2%} {r['cer_no_space']:12.2%} {r['median_page_cer']:7.2%} "
                  f"{r['worst_page_cer']:7.2%} {r['pages_per_s']:8.3f}")  # fmt: skip
        if len(engines) == 2:
            a, b = engines
            print(f"{a} / {b}: speed x{results[a]['pages_per_s'] / results[b]['pages_per_s']:.2f}, "
                  f"CER x{results[a]['cer'] / max(results[b]['cer'], 1e-9):.2f}")  # fmt: skip
    if "ask" in parts:
        result = bench_ask(args.manual, pdf, pages, images, args.dpi, [manuals["R-FAQ"]])
        for key, value in result.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
