"""What is not content stays out of chunks, FTS and vectors: lines repeated across a KB's documents (site furniture),
running headers, footers and footnote markers of a PDF; offsets, lines and pages stay the file's own."""

from __future__ import annotations

from pathlib import Path

from fakes import FakeEmbedder
from nomoat.config import IngestConfig
from nomoat.kb import cleaning, ingest, store
from nomoat.kb.chunking import chunk
from nomoat.kb.readers import Extracted

NAV = "Home | Prev | Next | Up\nCopyright 2024 The Example Project"


def _page(i: int) -> str:
    body = f"Topic {i} explains how the frobnicator number {i} is calibrated with the dial set to {i * 7}."
    return f"# Topic {i}\n\n{NAV}\n\n{body}\n\n{NAV}\n"


def _kb_text(kb: str = "t") -> dict[str, str]:
    with store.connect(kb) as conn:
        rows = conn.execute("SELECT d.path, c.text FROM chunks c JOIN documents d ON d.id = c.doc_id").fetchall()
        assert store.verify(conn) == []
    out: dict[str, str] = {}
    for path, text in rows:
        out[Path(path).name] = out.get(Path(path).name, "") + text
    return out


def test_lines_repeated_across_documents_are_masked_keeping_offsets() -> None:
    doc = Extracted(_page(3), "markdown")
    furniture = cleaning.line_keys(Extracted(NAV, "text"))
    masked, n = cleaning.mask_lines(doc, furniture)
    assert n == 4 and len(masked.text) == len(doc.text) and masked.text.count("\n") == doc.text.count("\n")
    assert "Home" not in masked.text and "Copyright" not in masked.text
    assert "# Topic 3" in masked.text and "calibrated" in masked.text  # headings and content stay
    for c in chunk(masked):
        assert c.text == masked.text[c.start : c.end] and "Prev" not in c.text


def test_headings_code_and_long_lines_are_never_furniture() -> None:
    text = "# OPTIONS\n\n```\n$ make install\n```\n\n" + "word " * 40 + "\n"
    assert cleaning.line_keys(Extracted(text, "markdown")) == set()


def test_a_document_of_nothing_but_repeated_lines_is_kept_whole() -> None:
    doc = Extracted("short note\n", "text")
    assert cleaning.mask_lines(doc, cleaning.line_keys(doc)) == (doc, 0)


def test_ingest_masks_site_furniture_from_the_first_batch_on(tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    for i in range(10):
        (root / f"topic{i}.md").write_text(_page(i))
    report = ingest.run([root], "t", embedder=FakeEmbedder(), progress=False)
    assert report["added"] == 10 and report["boilerplate_lines"] == 40 and report["recleaned"] == 0
    texts = _kb_text()
    assert all("Home | Prev" not in t and "Copyright" not in t for t in texts.values())
    assert all(f"frobnicator number {i}" in texts[f"topic{i}.md"] for i in range(10))
    with store.connect("t") as conn:  # and none of it is searchable
        assert store.fts_search(conn, '"copyright"', 10) == []


def test_what_repeats_is_recomputed_as_the_kb_grows_and_shrinks(tmp_path: Path) -> None:
    config = IngestConfig(repeated_least=4, repeated_share=0.5)
    root = tmp_path / "site"
    root.mkdir()
    for i in range(3):  # three pages share the footer: below `repeated_least`, nothing is furniture yet
        (root / f"topic{i}.md").write_text(_page(i))
    ingest.run([root], "t", embedder=FakeEmbedder(), progress=False, config=config)
    assert all("Copyright" in t for t in _kb_text().values())
    for i in range(3, 5):
        (root / f"topic{i}.md").write_text(_page(i))
    grown = ingest.run([root], "t", embedder=FakeEmbedder(), progress=False, config=config)
    # the two new pages are masked as they arrive; the three older ones are re-chunked, nothing else
    assert (grown["added"], grown["unchanged"], grown["recleaned"]) == (2, 3, 3)
    assert all("Copyright" not in t for t in _kb_text().values())
    for i in range(2, 5):
        (root / f"topic{i}.md").unlink()
    shrunk = ingest.run([root], "t", embedder=FakeEmbedder(), progress=False, config=config)
    assert (shrunk["removed"], shrunk["recleaned"]) == (3, 2)
    assert all("Copyright" in t for t in _kb_text().values())  # two pages alone: their footer is content again
    again = ingest.run([root], "t", embedder=FakeEmbedder(), progress=False, config=config)
    assert (again["unchanged"], again["recleaned"], again["chunks"]) == (2, 0, 0)


def _pdf(pages: list[str]) -> Extracted:
    starts, text = [], ""
    for p in pages:
        starts.append(len(text))
        text += p + "\n\n"
    return Extracted(text, "pdf", tuple(starts))


def test_running_headers_page_numbers_and_footnote_markers_of_a_pdf() -> None:
    pages = [
        f"Chapter 1: Introduction and preliminaries {n}\nAt this point the workspace is saved to a file called "
        f".RData{n} in the current directory.\nThe rest of page {n} talks about sessions.\n"
        f"{n} The leading dot makes the file invisible.\n{n + 10}"
        for n in range(4, 9)
    ]
    doc = _pdf(pages)
    cleaned, n = cleaning.clean_pages(doc)
    assert len(cleaned.text) == len(doc.text) and cleaned.pages == doc.pages
    assert "Chapter 1" not in cleaned.text and ".RData " in cleaned.text and ".RData5" not in cleaned.text
    assert "5 The leading dot makes the file invisible." in cleaned.text  # the footnote itself is content
    assert "14" not in cleaned.text.split()  # a page-number line
    assert "The rest of page 5 talks" in cleaned.text and n == 5 * 3
    assert [c.location for c in chunk(cleaned)][:2] == ["page 1", "page 2"]


def test_first_lines_that_do_not_repeat_and_short_pages_are_kept() -> None:
    openings = ["Dear Ada, thanks for the parts.", "The invoice is attached below.", "Shipping took three weeks."]
    doc = _pdf([f"{o}\nBody text {i}.\nRegards, Bob" for i, o in enumerate(openings)])
    cleaned = cleaning.clean_pages(doc)[0].text
    assert all(o in cleaned for o in openings) and "Regards, Bob" not in cleaned  # the repeated closing goes
    short = _pdf([f"Note {i}\nSee you soon." for i in range(4)])  # two lines a page: nothing is a header
    assert cleaning.clean_pages(short)[0].text == short.text
