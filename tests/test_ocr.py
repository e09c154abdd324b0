"""OCR: pictures drawn by the tests are read back by the real default engine; everything around the engine (image
formats, scanned and embedded PDF pictures, DOCX pictures, limits, locations, re-ingest, search and ask) runs
against a fake engine that reports what it was shown.

The real engine runs on a handful of small pictures, each OCR'd once per session (module fixtures), so this file
stays a few seconds of OCR on two cores.
"""

from __future__ import annotations

import difflib
import re
import signal
import time
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image

import nomoat
from fakes import FakeChatModel, FakeEmbedder
from hostile_files import make_docx, make_jpeg, make_pdf, make_png_bomb
from nomoat import cli
from nomoat.config import OCR_ENGINES, IngestConfig, OcrConfig
from nomoat.errors import UserError
from nomoat.kb import ingest
from nomoat.kb.chunking import chunk
from nomoat.kb.readers import ReadError, Unsupported, ocr, read_file
from nomoat.kb.readers.limits import PageTimeout, page_deadline
from nomoat.kb.readers.pdf import read_pdf
from pictures import MONO, PHOTO, SANS, SERIF, draw_text, encode, image_pdf, pdf_with_picture

LINES = [  # several sizes and three fonts, one sentence each
    ("The quarterly budget meeting moved to Thursday.", SANS, 18),
    ("Invoice 4471 is due on 12 March 2024.", SERIF, 24),
    ("backup --keep 7 --dest /srv/archive", MONO, 20),
    ("Ask Maria about the Lisbon office lease.", SERIF, 34),
    ("small print: the warranty lasts two years", SANS, 15),
]
PAGE_ONE = [("Scanned page one: the pump pressure is 4 bar.", SERIF, 26)]
PAGE_TWO = [("Scanned page two: replace the filter every May.", SANS, 26)]
NO_TEXT = "no text found in the image (OCR)"


def similar(expected: str, text: str) -> float:
    """How well the best-matching line of ``text`` matches ``expected`` (1.0 = identical)."""
    return max(difflib.SequenceMatcher(None, expected, line).ratio() for line in text.splitlines() or [""])


# --- the real default engine -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ocr") / "note.png"
    path.write_bytes(encode(draw_text(LINES), "PNG"))
    doc = read_file(path)
    assert doc.kind == "image" and doc.ocr == ((0, len(doc.text), "note.png (OCR)"),)
    return doc.text


@pytest.mark.parametrize("line", LINES, ids=lambda line: f"{Path(line[1]).stem}-{line[2]}px")
def test_drawn_text_is_read_back(drawn: str, line: tuple[str, str, int]) -> None:
    assert similar(line[0], drawn) >= 0.95, drawn


def test_an_image_only_pdf_gets_page_locations(tmp_path: Path) -> None:
    path = tmp_path / "scan.pdf"
    path.write_bytes(image_pdf([draw_text(PAGE_ONE), draw_text(PAGE_TWO)]))
    chunks = chunk(read_file(path))
    assert [c.location for c in chunks] == ["page 1, scanned (OCR)", "page 2, scanned (OCR)"]
    assert similar(PAGE_ONE[0][0], chunks[0].text) >= 0.95 and similar(PAGE_TWO[0][0], chunks[1].text) >= 0.95


def test_a_picture_with_text_in_a_text_pdf_is_read_and_a_photo_is_not(tmp_path: Path) -> None:
    labelled = tmp_path / "report.pdf"
    labelled.write_bytes(pdf_with_picture("Quarterly report, see the chart below.", draw_text(PAGE_ONE)))
    chunks = chunk(read_file(labelled))
    assert [c.location for c in chunks] == ["page 1", "image 1 on page 1 (OCR)"]
    assert similar(PAGE_ONE[0][0], chunks[1].text) >= 0.95
    photo = tmp_path / "portrait.pdf"
    photo.write_bytes(pdf_with_picture("Our founder, pictured below, in a portrait.", Image.open(PHOTO)))
    doc = read_file(photo)
    assert doc.ocr == () and [c.location for c in chunk(doc)] == ["page 1"]


def test_a_photo_without_text_adds_no_chunks(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "portrait.jpg").write_bytes(PHOTO.read_bytes())
    report = nomoat.ingest(docs, kb="t", embedder=FakeEmbedder())
    assert report["chunks"] == 0 and report["added"] == 0
    assert report["failed"] == [{"path": str((docs / "portrait.jpg").resolve()), "error": NO_TEXT}]


@pytest.mark.skipif(
    ocr.Tesseract.missing() is not None, reason="tesseract not installed (apt-get install tesseract-ocr)"
)
def test_tesseract_reads_drawn_text_too(tmp_path: Path) -> None:
    path = tmp_path / "note.png"
    path.write_bytes(encode(draw_text(LINES[:2]), "PNG"))
    text = read_file(path, ocr=OcrConfig(engine="tesseract")).text
    assert all(similar(line[0], text) >= 0.95 for line in LINES[:2]), text


# --- a fake engine: what the readers hand to OCR, and what they do with its text ------------------------------
class FakeOcr:
    """Reports each picture it is shown: its size and how bright it is (so a frame or a flattened alpha shows).
    A picture that is one flat colour holds no text. ``sleep`` makes every read that slow."""

    shown: ClassVar[list[tuple[int, int]]] = []
    sleep = 0.0

    def read(self, image: Image.Image) -> str:
        assert image.mode == "RGB"
        FakeOcr.shown.append(image.size)
        time.sleep(FakeOcr.sleep)
        low, high = image.convert("L").getextrema()
        if low == high:
            return ""
        mean = sum(image.convert("L").get_flattened_data()) / (image.width * image.height)
        return f"Fake text of a {image.width} x {image.height} picture, brightness {mean:.0f}."


@pytest.fixture
def fake_ocr(monkeypatch: pytest.MonkeyPatch) -> type[FakeOcr]:
    """The default engine replaced by FakeOcr (and the engine cache emptied around the test)."""
    monkeypatch.setitem(ocr.ENGINES, "rapidocr", FakeOcr)  # type: ignore[arg-type]
    monkeypatch.setattr(FakeOcr, "shown", [])
    monkeypatch.setattr(FakeOcr, "sleep", 0.0)
    ocr.engine.cache_clear()
    yield FakeOcr
    ocr.engine.cache_clear()


def picture(width: int = 200, height: int = 80, mode: str = "RGB") -> Image.Image:
    image = Image.new(mode, (width, height), "white")
    image.paste("black" if mode != "RGBA" else (0, 0, 0, 255), (10, 10, 60, 30))
    return image


@pytest.mark.parametrize("suffix,fmt", [(".png", "PNG"), (".jpg", "JPEG"), (".webp", "WEBP"), (".bmp", "BMP"),
                                        (".gif", "GIF"), (".tif", "TIFF")])  # fmt: skip
def test_each_image_format_is_one_located_picture(tmp_path: Path, fake_ocr: type[FakeOcr], suffix: str, fmt: str):
    path = tmp_path / f"shot{suffix}"
    path.write_bytes(encode(picture(), fmt))
    doc = read_file(path)
    assert doc.kind == "image" and doc.text.startswith("Fake text of a 200 x 80 picture")
    assert [c.location for c in chunk(doc)] == [f"shot{suffix} (OCR)"] and fake_ocr.shown == [(200, 80)]


def test_gif_first_frame_tiff_pages_and_transparency(tmp_path: Path, fake_ocr: type[FakeOcr]) -> None:
    frames = [picture(), picture(300, 90), picture(400, 100)]
    (tmp_path / "anim.gif").write_bytes(encode(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    assert read_file(tmp_path / "anim.gif").ocr[0][2] == "anim.gif (OCR)" and fake_ocr.shown == [(200, 80)]
    (tmp_path / "fax.tif").write_bytes(encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]))
    doc = read_file(tmp_path / "fax.tif", ocr=OcrConfig(max_pages=2))
    assert [where for _, _, where in doc.ocr] == ["page 1 (OCR)", "page 2 (OCR)"]
    assert doc.problems == ("page 3: not read (limit 2 pages per file)",)
    # A transparent screenshot is read on white, not black: the fake reports its brightness.
    clear = Image.new("RGBA", (200, 80), (0, 0, 0, 0))
    clear.paste((0, 0, 0, 255), (10, 10, 60, 30))
    (tmp_path / "clear.png").write_bytes(encode(clear, "PNG"))
    brightness = int(re.search(r"brightness (\d+)", read_file(tmp_path / "clear.png").text).group(1))
    assert brightness > 200


def test_bombs_and_damaged_images_fail_cleanly_without_ocr(tmp_path: Path, fake_ocr: type[FakeOcr]) -> None:
    (tmp_path / "bomb.png").write_bytes(make_png_bomb(20_000))
    with pytest.raises(ReadError, match=r"image too large: 400 megapixels \(limit 64 megapixels\)"):
        read_file(tmp_path / "bomb.png")
    (tmp_path / "big.png").write_bytes(make_png_bomb(9_000))  # past our limit, under Pillow's own
    with pytest.raises(ReadError, match=r"image too large: 9,000 x 9,000 pixels"):
        read_file(tmp_path / "big.png")
    (tmp_path / "cut.jpg").write_bytes(make_jpeg(640, 480)[:6000])
    with pytest.raises(ReadError, match="damaged image: image file is truncated"):
        read_file(tmp_path / "cut.jpg")
    (tmp_path / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * 100)
    with pytest.raises(ReadError, match="damaged image"):
        read_file(tmp_path / "fake.png")
    assert fake_ocr.shown == []
    report = ingest.run([tmp_path], "t", embedder=FakeEmbedder(), progress=False)
    reasons = {Path(f["path"]).name: f["error"] for f in report["failed"]}
    assert set(reasons) == {"bomb.png", "big.png", "cut.jpg", "fake.png"} and report["chunks"] == 0


def test_scanned_pages_are_replaced_and_text_pages_keep_their_layer(tmp_path: Path, fake_ocr: type[FakeOcr]):
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(image_pdf([picture(400, 300), Image.new("RGB", (400, 300), "white"), picture(400, 300)]))
    seen: list[tuple[int, int]] = []
    doc = read_file(scan, progress=lambda done, total: seen.append((done, total)))
    assert [c.location for c in chunk(doc)] == ["page 1, scanned (OCR)", "page 3, scanned (OCR)"]  # page 2 blank
    assert seen == [(1, 3), (2, 3), (3, 3)] and doc.pages[2] > doc.pages[1]
    # 150 dpi: a 400 x 300 picture saved at 100 dpi is 4 x 3 inches, rendered at 600 x 450 (pdfium rounds up).
    assert len(fake_ocr.shown) == 3 and all(abs(w - 600) + abs(h - 450) <= 2 for w, h in fake_ocr.shown)
    text = tmp_path / "text.pdf"
    text.write_bytes(make_pdf(["A page of real text with enough letters to be text.", "short"]))
    assert read_file(text).ocr == () and len(fake_ocr.shown) == 3  # no picture: nothing rendered


def test_ocr_off_says_why(tmp_path: Path, fake_ocr: type[FakeOcr]) -> None:
    (tmp_path / "scan.pdf").write_bytes(image_pdf([picture(400, 300)]))
    with pytest.raises(Unsupported, match=r"no text \(a scanned PDF, and OCR is off\)"):
        read_file(tmp_path / "scan.pdf", ocr=OcrConfig(engine="off"))
    (tmp_path / "shot.png").write_bytes(encode(picture(), "PNG"))
    with pytest.raises(Unsupported, match=r"image \(OCR is off\)"):
        read_file(tmp_path / "shot.png", ocr=OcrConfig(engine="off"))
    assert fake_ocr.shown == []


def test_pdf_limits_pages_and_time_per_page(tmp_path: Path, fake_ocr: type[FakeOcr]) -> None:
    scan = tmp_path / "scan.pdf"
    scan.write_bytes(image_pdf([picture(400, 300)] * 3))
    doc = read_file(scan, ocr=OcrConfig(max_pages=2))
    assert len(doc.ocr) == 2 and doc.problems == ("page 3, scanned: not OCR'd (limit 2 pages and images per file)",)
    fake_ocr.sleep = 5.0  # each page is cut at 0.2 s (this test would take 15 s otherwise) and the next one tried
    slow = read_pdf(scan.read_bytes(), OcrConfig(page_timeout_s=0.2))
    assert slow.problems == tuple(f"page {n}, scanned (OCR): OCR timed out after 0.2 s" for n in (1, 2, 3))
    with pytest.raises(ReadError, match=r"page 1, scanned \(OCR\): OCR timed out after 0.2 s"):
        read_file(scan, ocr=OcrConfig(page_timeout_s=0.2, max_pages=1))  # no text at all: the file fails


def test_a_timeout_inside_an_engine_that_wraps_errors_is_still_a_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Wrapping:  # rapidocr re-raises whatever onnxruntime raised as its own ONNXRuntimeError
        def read(self, image: Image.Image) -> str:
            try:
                time.sleep(5)
            except PageTimeout as exc:
                raise RuntimeError("inference failed") from exc
            return "never"

    monkeypatch.setitem(ocr.ENGINES, "rapidocr", Wrapping)  # type: ignore[arg-type]
    ocr.engine.cache_clear()
    (tmp_path / "shot.png").write_bytes(encode(picture(), "PNG"))
    with pytest.raises(ReadError, match=r"shot.png \(OCR\): OCR timed out after 0.1 s"):
        read_file(tmp_path / "shot.png", ocr=OcrConfig(page_timeout_s=0.1))
    ocr.engine.cache_clear()


def test_a_page_deadline_pauses_the_outer_alarm() -> None:
    class Outer(Exception):
        pass

    def alarm(signum: int, frame: object) -> None:
        raise Outer

    previous = signal.signal(signal.SIGALRM, alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with page_deadline(2.0):
            time.sleep(0.5)  # past the outer alarm's 0.3 s: paused, so it does not fire here
        with pytest.raises(Outer):
            time.sleep(1.0)  # ... and fires once resumed
        with pytest.raises(PageTimeout), page_deadline(0.1):
            time.sleep(1.0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_docx_pictures_are_read_once_in_document_order(tmp_path: Path, fake_ocr: type[FakeOcr]) -> None:
    media = {"chart.png": encode(picture(300, 100), "PNG"), "blank.png": encode(Image.new("RGB", (90, 90)), "PNG"),
             "logo.jpg": encode(picture(120, 60), "JPEG")}  # fmt: skip
    blocks = [("Heading1", "Results"), ("", "See the chart."), ("picture", "chart.png"), ("picture", "blank.png"),
              ("picture", "logo.jpg"), ("", "Again the logo:"), ("picture", "logo.jpg")]  # fmt: skip
    path = tmp_path / "report.docx"
    path.write_bytes(make_docx(blocks, media))
    doc = read_file(path)
    assert [c.location for c in chunk(doc)] == ["§ Results", "image 1 (OCR)", "image 3 (OCR)", "§ Results"]
    assert fake_ocr.shown == [(300, 100), (90, 90), (120, 60)]  # the blank one holds no text; the logo is read once
    assert [doc.text[a:b][:30] for a, b, _ in doc.ocr] == [
        "Fake text of a 300 x 100 pictu",
        "Fake text of a 120 x 60 pictur",
    ]


def test_reingest_of_unchanged_files_never_ocrs_again(tmp_path: Path, fake_ocr: type[FakeOcr]) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "shot.png").write_bytes(encode(picture(), "PNG"))
    (docs / "scan.pdf").write_bytes(image_pdf([picture(400, 300)] * 2))
    first = nomoat.ingest(docs, kb="t", embedder=FakeEmbedder())
    assert first["added"] == 2 and len(fake_ocr.shown) == 3
    assert nomoat.ingest(docs, kb="t", embedder=FakeEmbedder())["unchanged"] == 2
    (docs / "shot.png").touch()  # new mtime, same bytes: hashed, not read
    assert nomoat.ingest(docs, kb="t", embedder=FakeEmbedder())["unchanged"] == 2 and len(fake_ocr.shown) == 3


def test_search_shows_and_ask_cites_the_ocr_location(
    tmp_path: Path, fake_ocr: type[FakeOcr], monkeypatch: pytest.MonkeyPatch
) -> None:
    from nomoat.kb import retrieval

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "scan.pdf").write_bytes(image_pdf([picture(400, 300)]))
    nomoat.ingest(docs, kb="t", embedder=FakeEmbedder())
    monkeypatch.setattr(retrieval, "_load", lambda name: FakeEmbedder())
    (hit,) = nomoat.search("fake text picture brightness", kb="t", k=1)
    assert hit["location"] == "page 1, scanned (OCR)"
    model = FakeChatModel("It is fake text of a picture [1].")
    answer = nomoat.ask("what picture is it?", kb="t", model=model)
    assert answer["grounded"] and answer["citations"][0]["location"] == "page 1, scanned (OCR)"
    assert "page 1, scanned (OCR)" in model.calls[0][-1]["content"]  # the prompt's source header says so too


def test_a_missing_engine_is_one_line_with_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(ocr.shutil, "which", lambda name: None)
    ocr.engine.cache_clear()
    with pytest.raises(UserError, match="apt-get install tesseract-ocr"):
        ocr.check_engine("tesseract")
    with pytest.raises(UserError, match="unknown OCR engine 'easyocr'"):
        ocr.check_engine("easyocr")
    (tmp_path / "a.md").write_text("# A\n\ntext\n")
    assert cli.main(["ingest", str(tmp_path), "--kb", "t", "--ocr", "tesseract"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "apt-get install tesseract-ocr" in err
    (tmp_path / "shot.png").write_bytes(encode(picture(), "PNG"))
    with pytest.raises(ReadError, match="apt-get install tesseract-ocr"):  # the same hint when reading
        read_file(tmp_path / "shot.png", ocr=OcrConfig(engine="tesseract"))
    labelled = tmp_path / "report.pdf"  # a text PDF keeps its text and says its picture was not read
    labelled.write_bytes(pdf_with_picture("Quarterly report, see the chart below.", picture(300, 100)))
    doc = read_file(labelled, ocr=OcrConfig(engine="tesseract"))
    assert doc.text.startswith("Quarterly report") and "apt-get install tesseract-ocr" in doc.problems[0]
    ocr.engine.cache_clear()


def test_engines_match_the_flag_and_layout_orders_boxes() -> None:
    assert [*ocr.ENGINES, "off"] == list(OCR_ENGINES) and IngestConfig().ocr.engine in ocr.ENGINES
    boxes = [(120, 52, 200, 70, "world"), (10, 50, 110, 72, "Hello"), (10, 80, 90, 98, "next"),
             (10, 140, 90, 160, "New block")]  # fmt: skip
    assert ocr.layout(boxes) == "Hello world\nnext\n\nNew block"
    assert ocr.layout([]) == ""
