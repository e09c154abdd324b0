"""chunking.chunk: invariants on every kind and on random documents, exact locations on known documents."""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path

import pytest

from hostile_files import HTML, make_docx, make_pdf
from nomoat.kb.chunking import CHARS_PER_TOKEN, Chunk, chunk, estimate_tokens
from nomoat.kb.readers import Extracted, read_file

LINE_KINDS = ("text", "markdown", "rst", "code", "csv", "json")


def check(doc: Extracted, chunks: list[Chunk], target: int) -> None:
    """The contract every chunk list must meet."""
    text = doc.text
    covered = 0
    last_start = -1
    for c in chunks:
        assert c.text == text[c.start : c.end]
        assert c.text and c.text.strip() == c.text, c
        assert c.end - c.start <= target * CHARS_PER_TOKEN, c
        assert c.start >= last_start  # in document order
        last_start = c.start
        assert not text[covered : c.start].strip(), f"text lost before {c}"  # every non-blank char is in a chunk
        covered = max(covered, c.end)
        first, last = text.count("\n", 0, c.start) + 1, text.count("\n", 0, c.end) + 1
        lines = f"line {first}" if first == last else f"lines {first}-{last}"
        span = next((span for span in doc.ocr if span[0] <= c.start < span[1]), None)
        if span is not None:
            assert c.end <= span[1] and c.location == span[2], "chunk crosses an OCR span's edge"
        elif doc.kind == "pdf":
            assert not any(a < c.end <= b or a < c.start < b for a, b, _ in doc.ocr), "chunk runs into OCR text"
            bounds = [*doc.pages, len(text)]
            page = next(i for i in range(len(doc.pages)) if bounds[i] <= c.start < bounds[i + 1])
            assert c.end <= bounds[page + 1], "chunk crosses a page boundary"
            assert c.location == f"page {page + 1}"
        elif doc.kind in LINE_KINDS or not c.heading:
            assert c.location == lines
        else:
            assert c.location == f"§ {c.heading}"
    assert not text[covered:].strip()


def docs(tmp_path: Path) -> list[Extracted]:
    rng = random.Random(1)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]

    def para(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n)) + "."

    md = "---\ntitle: x\n---\n\n# Top\n\n" + "\n\n".join(para(rng.randrange(3, 150)) for _ in range(30))
    md += "\n\n## Code\n\n```py\n" + "\n".join(f"x{i} = {i}" for i in range(200)) + "\n```\n\nSetext\n------\n\nEnd."
    rst = "=====\nTitle\n=====\n\n" + "\n\n".join(f"Part {i}\n-------\n\n{para(90)}" for i in range(10))
    code = "\n\n".join(f"def f{i}():\n" + "\n".join(f"    y = {j}" for j in range(i)) for i in range(60))
    csv = "id,name\n" + "".join(f"{i},{para(4)}\n" for i in range(500))
    paths = {
        "page.html": HTML,
        "three.pdf": make_pdf([para(200), "short", para(30)]),
        "d.docx": make_docx([("Heading1", "One"), ("", para(300)), ("Heading2", "Two"), ("", para(20))]),
    }
    read = []
    for name, data in paths.items():
        (tmp_path / name).write_bytes(data.encode() if isinstance(data, str) else data)
        read.append(read_file(tmp_path / name))
    return [
        Extracted(para(1000), "text"),
        Extracted(md, "markdown"),
        Extracted(rst, "rst"),
        Extracted(code, "code"),
        Extracted(csv, "csv"),
        Extracted('{\n "a": [\n' + ",\n".join(f'  "{para(3)}"' for _ in range(300)) + "\n ]\n}", "json"),
        *read,
    ]


@pytest.mark.parametrize(("target", "overlap"), [(200, 30), (50, 10), (8, 0), (1, 0)])
def test_invariants_on_every_kind(tmp_path: Path, target: int, overlap: int) -> None:
    for doc in docs(tmp_path):
        chunks = chunk(doc, target_tokens=target, overlap_tokens=overlap)
        assert chunks, doc.kind
        check(doc, chunks, target)


def test_invariants_on_random_documents() -> None:
    rng = random.Random(7)
    atoms = ["word", "x" * 300, " ", "\n", "\n\n", "\n\n\n  \n", "# H\n", "## Sub\n", "```\n", "Title\n=====\n"]
    atoms += ["End. ", "Q? ", "\t", "a.b", "-----\n", "~~~\n", "¶", "é", "\r"]
    for _ in range(200):
        text = "".join(rng.choice(atoms) for _ in range(rng.randrange(1, 120)))
        kind = rng.choice(["text", "markdown", "rst", "html", "docx", "code"])
        target = rng.choice([1, 3, 20, 200])
        doc = Extracted(text, kind)
        check(doc, chunk(doc, target_tokens=target, overlap_tokens=rng.randrange(0, target)), target)
    pages = Extracted("one\n\n\n\ntwo three\n\n", "pdf", pages=(0, 3, 5, 14))
    check(pages, chunk(pages, target_tokens=1, overlap_tokens=0), 1)


def test_markdown_locations_and_heading_paths() -> None:
    text = "# Title\n\nIntro para.\n\n## Install\n\n### Linux\n\nRun it.\n\n## Use\n\nUse it.\n"
    got = [(c.location, c.heading, c.text) for c in chunk(Extracted(text, "markdown"))]
    assert got == [
        ("lines 1-3", "Title", "# Title\n\nIntro para."),
        # "## Install" has no text of its own: it travels with its child section
        ("lines 5-9", "Title > Install > Linux", "## Install\n\n### Linux\n\nRun it."),
        ("lines 11-13", "Title > Use", "## Use\n\nUse it."),
    ]


def test_rst_heading_levels_follow_adornment_order() -> None:
    text = (
        "=====\nGuide\n=====\n\nIntro.\n\nSetup\n-----\n\nA.\n\nDeep\n~~~~\n\nB.\n\n"
        "Usage\n-----\n\nC.\nnot a title\n-----------\n"
    )
    got = [(c.heading, c.location) for c in chunk(Extracted(text, "rst"))]
    assert got == [
        ("Guide", "lines 1-5"),
        ("Guide > Setup", "lines 7-10"),
        ("Guide > Setup > Deep", "lines 12-15"),
        ("Guide > Usage", "lines 17-22"),  # no blank line before "not a title": not a title
    ]


def test_html_and_docx_locations_are_heading_paths(tmp_path: Path) -> None:
    (tmp_path / "p.html").write_text(HTML)
    got = [(c.location, c.heading) for c in chunk(read_file(tmp_path / "p.html"))]
    assert got == [
        ("§ Guide & Intro", "Guide & Intro"),
        ("§ Guide & Intro > Install", "Guide & Intro > Install"),
        ("§ Guide & Intro > Install > Linux", "Guide & Intro > Install > Linux"),
    ]
    (tmp_path / "d.docx").write_bytes(make_docx([("", "Preamble."), ("Heading1", "Scope"), ("", "Body.")]))
    got = [(c.location, c.text) for c in chunk(read_file(tmp_path / "d.docx"))]
    assert got == [("line 1", "Preamble."), ("§ Scope", "# Scope\n\nBody.")]


def test_pdf_chunks_stay_on_their_page(tmp_path: Path) -> None:
    pages = ["Alpha " * 150, "Beta " * 10, "Gamma " * 100]
    (tmp_path / "p.pdf").write_bytes(make_pdf([p.strip() for p in pages]))
    doc = read_file(tmp_path / "p.pdf")
    chunks = chunk(doc, target_tokens=50, overlap_tokens=10)
    check(doc, chunks, 50)
    for c in chunks:
        word = {"page 1": "Alpha", "page 2": "Beta", "page 3": "Gamma"}[c.location]
        assert set(c.text.split()) == {word}
    assert [c.location for c in chunks].count("page 2") == 1


def test_line_numbers_on_a_known_file() -> None:
    text = "".join(f"row {i:04d} " + "v" * 30 + "\n" for i in range(1, 101))
    for c in chunk(Extracted(text, "csv"), target_tokens=30, overlap_tokens=8):
        first, last = (int(n) for n in c.location.removeprefix("lines ").split("-"))
        assert c.text.splitlines()[-1].startswith(f"row {last:04d}")
        if c.text.startswith("row"):
            assert c.text.startswith(f"row {first:04d}")


def test_overlap_between_consecutive_chunks_of_a_section() -> None:
    text = " ".join(f"Sentence {i} says something short." for i in range(60))
    chunks = chunk(Extracted(text, "text"), target_tokens=40, overlap_tokens=10)
    assert len(chunks) > 5
    for a, b in itertools.pairwise(chunks):
        assert a.start < b.start < a.end, "consecutive chunks should overlap"
        assert a.end - b.start <= 10 * CHARS_PER_TOKEN
        assert b.text.startswith("Sentence"), "overlap starts at a sentence"
    # No overlap across sections.
    two = "# A\n\n" + "word " * 300 + "\n\n# B\n\n" + "term " * 300
    chunks = chunk(Extracted(two, "markdown"), target_tokens=50, overlap_tokens=10)
    b_start = two.index("# B")
    assert all(c.end <= b_start or c.start >= b_start for c in chunks)


def test_code_fence_kept_whole_when_it_fits() -> None:
    fence = "```python\n" + "\n\n".join(f"def f{i}(x):\n    return x + {i}" for i in range(12)) + "\n```"
    text = "Intro text here.\n\n" + fence + "\n\nAfter the fence."
    chunks = chunk(Extracted(text, "markdown"), target_tokens=200, overlap_tokens=30)
    assert any(fence in c.text for c in chunks)
    small = chunk(Extracted(text, "markdown"), target_tokens=30, overlap_tokens=5)  # too big: split at lines
    assert all(not c.text.endswith("return") for c in small)


def test_unbroken_token_is_hard_cut() -> None:
    doc = Extracted("x" * 5000, "text")
    chunks = chunk(doc, target_tokens=100, overlap_tokens=20)
    check(doc, chunks, 100)
    assert "".join(c.text for c in chunks) == doc.text  # no whitespace to overlap on: cuts are disjoint


def test_parameters_and_estimate() -> None:
    assert estimate_tokens("") == 0 and estimate_tokens("abcd") == 1 and estimate_tokens("abcde") == 2
    for target, overlap in [(0, 0), (10, 10), (10, -1)]:
        with pytest.raises(ValueError):
            chunk(Extracted("text", "text"), target_tokens=target, overlap_tokens=overlap)
    assert chunk(Extracted("  \n\n ", "markdown")) == []


def _timed(text: str, kind: str) -> float:
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        chunk(Extracted(text, kind))
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.parametrize(
    ("unit", "kind"),
    [
        ("word " * 200 + "\n", "text"),  # one huge paragraph of long lines: oversize splitting
        ("x" * 997 + "\n", "text"),  # no whitespace inside lines
        ("```\n" + "a = 1\n\n" * 3 + "```\n\nSome text. More.\n\n", "markdown"),  # fences and paragraphs
        ("## Head\n\nbody " * 20 + "\n\n", "markdown"),
        ("Title\n=====\n\n" + "words " * 50 + "\n\n", "rst"),
    ],
)
def test_chunking_is_linear(unit: str, kind: str) -> None:
    small = unit * (2**17 // len(unit))
    t_small, t_big = _timed(small, kind), _timed(small * 4, kind)
    assert t_big < 8 * t_small + 0.05, f"{t_small:.3f}s -> {t_big:.3f}s for 4x the text"


def test_embedding_text_heads_a_chunk_with_file_title_and_heading_once() -> None:
    from nomoat.kb.chunking import embedding_text

    html = embedding_text("/d/git-stash.html", "git-stash(1)", "git-stash(1) Manual Page > NAME", "body")
    assert html == "git-stash > git-stash(1) Manual Page > NAME\nbody"  # the title is inside the heading
    assert embedding_text("/d/notes.txt", "", "", "body") == "notes\nbody"
    assert embedding_text("/d/q3.pdf", "Quarterly report", "", "body") == "q3 > Quarterly report\nbody"


@pytest.mark.parametrize("target", [20, 200])
def test_ocr_spans_are_chunked_apart_and_located(target: int) -> None:
    from nomoat.kb.readers.ocr import join_blocks

    rng = random.Random(5)
    words = ["pump", "valve", "filter", "pressure", "bar", "May", "replace", "check"]

    def para(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n)) + "."

    page1, spans1 = join_blocks([(para(120), None), (para(60), "image 1 on page 1 (OCR)"), (para(9), None)])
    page2, spans2 = join_blocks([(para(150) + "\n\n" + para(40), "page 2, scanned (OCR)")])
    text = page1 + "\n\n" + page2
    start2 = len(page1) + 2
    ocr = (*spans1, *((a + start2, b + start2, where) for a, b, where in spans2))
    doc = Extracted(text, "pdf", pages=(0, start2), ocr=ocr)
    chunks = chunk(doc, target_tokens=target, overlap_tokens=target // 5)
    check(doc, chunks, target)
    assert {c.location for c in chunks} == {"page 1", "image 1 on page 1 (OCR)", "page 2, scanned (OCR)"}
    photo = Extracted("Budget meeting moved to Thursday.", "image", ocr=((0, 33, "note.png (OCR)"),))
    assert [c.location for c in chunk(photo)] == ["note.png (OCR)"]
