"""Knowledge base and grounded answers on a real corpus: ingest, retrieval quality, latency, answers.

    python bench/retrieval.py                     # everything (~25 min on 2 cores)
    python bench/retrieval.py --parts quality     # any of: ingest,quality,scale,calibration,answers
    python bench/retrieval.py --corpus postgres --split tune --parts quality

Corpora (bench/corpus.py), copied to a temp folder and ingested with the real default embedder:

* git-doc (default; knowledge base "gitdoc"): Debian's git-doc, the HTML manual pages and their AsciiDoc .txt
  sources. Questions: bench/questions/git_doc.jsonl (50 user questions with the pages that answer them and the
  fact an answer must contain, plus 24 that the corpus does not answer) and git_doc_more.jsonl (40 + 10 more).
  A page is its file stem, so git-reset.html and git-reset.txt are the same gold page.
* postgres ("pgdoc"): PostgreSQL 15's HTML manual (postgresql-doc-15; DocBook pages, each with the same
  navigation header and footer), a corpus of another kind so that choices are not tuned to git-doc alone.
  Questions: bench/questions/postgres_doc.jsonl (79 answerable, 24 not).

Every question line of the newer files has a "split", "tune" or "report" alternately; git_doc.jsonl's lines have
none and count as "tune". Tune choices with --split tune and report them with --split report.

* ingest: first ingest (chunks/s, MB/s of chunk text), re-ingest of the unchanged corpus as a fraction of it, an
  edited and a deleted file reflected on the next run; the baseline embeds a random sample (--baseline-sample) of
  the same chunk texts with plain sentence-transformers all-MiniLM-L6-v2 (batch 32), right after, in the same
  process. The baseline is only the embedding step; nomoat's time includes reading, chunking and storing.
* quality: gold-page recall@1/5/10 and MRR of nomoat search vs rank_bm25 over the same chunks (and nomoat's
  FTS5-only and vector-only rankings, to show what fusion adds); p50/p95 query latency (warm). The FTS5-only
  and fused rows, and the latency, are shown for the old lexical search (FTS5's plain OR query) and the new
  one (kb/lexical.py at SearchConfig.common_terms, or at each --common-terms value), with the share of the old
  BM25 top 10 / top 50 the new one keeps.
* scale: p50/p95 search latency on a synthetic knowledge base of --scale chunks (corpus sentences reshuffled,
  random unit vectors), queries embedded for real; old and new lexical search side by side, queries
  alternating which goes first, plus BM25 alone and the share of its top 10 / top 50 kept.
* answers: with the bundled model, the share of answerable questions whose answer contains the expected fact
  (with retrieval via `ask`, and without: plain chat), correct citations, abstentions on the unanswerable
  ones, and answers stating a number their cited chunks lack (must be 0).

The --scale synthetic knowledge base is built from the chosen corpus's sentences.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import CACHE, git_doc_html, postgres_doc_html

os.environ.setdefault("HF_HUB_OFFLINE", "1")
QUESTIONS = Path(__file__).resolve().parent / "questions"
WORD = re.compile(r"\w+")
NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


# -- corpora ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Corpus:
    """One benchmark corpus: how to copy it into a folder, its question files, the knowledge base it is ingested
    into, and the file the ingest part edits and the one it deletes (globs, checked on the next sync)."""

    copy: Callable[[Path], None]
    questions: tuple[str, ...]
    kb: str
    edited: str
    deleted: str


def _copy_git_doc(dest: Path) -> None:
    """The whole html folder: the pages, their .txt sources and the howto/technical subfolders, as measured so far."""
    shutil.copytree(git_doc_html()[0].parent, dest)


def _copy_postgres_doc(dest: Path) -> None:
    """Only the .html pages: the stylesheet and three SVG figures are no part of what the questions ask about."""
    dest.mkdir(parents=True)
    for path in postgres_doc_html():
        shutil.copy2(path, dest / path.name)


CORPORA = {
    "git-doc": Corpus(_copy_git_doc, ("git_doc.jsonl", "git_doc_more.jsonl"), "gitdoc", "git-stash.*", "git-bisect.*"),
    # The edited and deleted pages are no question's gold page, so the ingest part does not move the quality numbers.
    "postgres": Corpus(_copy_postgres_doc, ("postgres_doc.jsonl",), "pgdoc", "sql-checkpoint.html", "sql-discard.html"),
}


def load_questions(files: tuple[str, ...], split: str) -> list[dict]:
    """The questions of ``files`` (under bench/questions) in ``split`` ("all", "tune" or "report"); a line without a
    "split" is "tune" (git_doc.jsonl predates the split, and its numbers were what the defaults were chosen on)."""
    questions = [
        json.loads(line) for name in files for line in (QUESTIONS / name).read_text().splitlines() if line.strip()
    ]
    return [q for q in questions if split == "all" or q.get("split", "tune") == split]


def page(path: str) -> str:
    return Path(path).stem


def ranks(pages: list[str], gold: set[str]) -> int | None:
    """1-based rank of the first gold page in a ranked list of chunk pages, or None."""
    return next((i for i, p in enumerate(pages, 1) if p in gold), None)


def summarize(found: list[int | None]) -> dict[str, float]:
    n = len(found)
    return {
        "R@1": sum(r is not None and r <= 1 for r in found) / n,
        "R@5": sum(r is not None and r <= 5 for r in found) / n,
        "R@10": sum(r is not None and r <= 10 for r in found) / n,
        "MRR": sum(1 / r for r in found if r) / n,
    }


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


# -- ingest ----------------------------------------------------------------------------------------------------------
def bench_ingest(corpus: Path, kb: str, baseline_sample: int, edited: str, deleted: str) -> list[str]:
    from nomoat.kb import ingest, store

    t = time.perf_counter()
    first = ingest.run([corpus], kb, progress=True)
    t_first = time.perf_counter() - t
    conn = store.open_kb(kb, create=False)
    texts = [text for _, text in store.all_chunk_texts(conn)]
    conn.close()
    mb = sum(len(x.encode()) for x in texts) / 1e6
    t = time.perf_counter()
    again = ingest.run([corpus], kb, progress=False)
    t_again = time.perf_counter() - t

    victim, gone = sorted(corpus.glob(edited))[0], sorted(corpus.glob(deleted))[0]
    victim.write_text(victim.read_text() + "\nA sentence added by the benchmark: zanzibar quokka.\n")
    gone.unlink()
    synced = ingest.run([corpus], kb, progress=False)
    edit_seen = any("zanzibar" in h["text"] for h in _search("zanzibar quokka", kb, 3))

    sample = random.Random(0).sample(texts, min(baseline_sample, len(texts)))
    baseline_rate = _baseline_rate(sample)
    rate = len(texts) / t_first
    print(f"\n## ingest ({first['added']} files, {len(texts)} chunks, {mb:.1f} MB of chunk text)")
    print("| | chunks/s | MB/s | ratio |\n|---|---:|---:|---:|")
    print(
        f"| sentence-transformers MiniLM, embedding only | {baseline_rate:.1f} | "
        f"{baseline_rate * sum(len(x.encode()) for x in sample) / len(sample) / 1e6:.3f} | 1.00 |"
    )
    print(
        f"| nomoat ingest (read, chunk, embed, store) | {rate:.1f} | {mb / t_first:.3f} | {rate / baseline_rate:.2f} |"
    )
    print(
        f"first ingest {t_first:.1f} s; unchanged re-ingest {t_again:.2f} s = {100 * t_again / t_first:.2f}% "
        f"({again['unchanged']} unchanged); after edit+delete: updated {synced['updated']}, "
        f"removed {synced['removed']}, edit searchable: {edit_seen}"
    )
    return texts


def _baseline_rate(texts: list[str]) -> float:
    from sentence_transformers import SentenceTransformer

    from nomoat.kb.embeddings import minilm_dir

    model = SentenceTransformer(str(minilm_dir()), device="cpu")
    model.encode(texts[:32], batch_size=32)  # warm-up
    t = time.perf_counter()
    model.encode(texts, batch_size=32)
    return len(texts) / (time.perf_counter() - t)


def _search(query: str, kb: str, k: int, config=None) -> list[dict]:
    from nomoat.kb import retrieval

    return retrieval.search(query, kb=kb, k=k, config=config)


def _lexical_variants(common: list[float] | None) -> dict[str, object]:
    """``{label: SearchConfig}``: FTS5's plain OR query (the old lexical search) and the split one (kb/lexical.py)
    at the default ``common_terms`` or at each value of --common-terms."""
    from nomoat.config import SearchConfig

    values = common or [SearchConfig().common_terms]
    return {"old (plain FTS5 OR)": SearchConfig(common_terms=0.0)} | {
        f"new (common > {c:g})": SearchConfig(common_terms=c) for c in values
    }


def _overlap(old: list[int], new: list[int], k: int) -> float:
    return len(set(old[:k]) & set(new[:k])) / max(1, len(old[:k]))


def _time_lexical(conn, query: str, variants: dict, fts_ms: dict, same: dict) -> dict[str, list[int]]:
    """Each variant's BM25 top 50 for ``query``, timed into ``fts_ms``, and its overlap with the first (plain)
    variant's top 10 and top 50 added to ``same``. Returns ``{variant: ids}``."""
    from nomoat.kb import lexical, retrieval

    match, plain, found = retrieval.fts_query(query), None, {}
    for name, config in variants.items():
        t = time.perf_counter()
        found[name] = fts = lexical.fts_search(conn, match, 50, common=config.common_terms)
        fts_ms[name].append((time.perf_counter() - t) * 1000)
        plain = plain or fts
        same[name] += [_overlap(plain, fts, 10), _overlap(plain, fts, 50)]
    return found


# -- quality ---------------------------------------------------------------------------------------------------------
def bench_quality(kb: str, questions: list[dict], common: list[float] | None = None) -> None:
    from rank_bm25 import BM25Okapi

    from nomoat.kb import store
    from nomoat.kb.embeddings import load_embedder

    variants = _lexical_variants(common)
    conn = store.open_kb(kb, create=False)
    rows = conn.execute("SELECT c.id, c.text, d.path FROM chunks c JOIN documents d ON d.id = c.doc_id").fetchall()
    page_of = {r[0]: page(r[2]) for r in rows}
    bm25 = BM25Okapi([WORD.findall(r[1].lower()) for r in rows])
    embedder = load_embedder(store.embedder_of(conn)[0])
    found: dict[str, list[int | None]] = {"rank_bm25 (baseline)": []}
    found |= {f"nomoat FTS5 only, {name}": [] for name in variants}
    found["nomoat vectors only"] = []
    found |= {f"nomoat search (fused), {name}": [] for name in variants}
    latency: dict[str, list[float]] = {name: [] for name in variants}
    fts_ms: dict[str, list[float]] = {name: [] for name in variants}
    same: dict[str, list[float]] = {name: [] for name in variants}
    for q in questions:
        gold = {page(g) for g in q["gold"]}
        scores = bm25.get_scores(WORD.findall(q["question"].lower()))
        top = np.argsort(-scores)[:10]
        found["rank_bm25 (baseline)"].append(ranks([page(rows[i][2]) for i in top], gold))
        for name, fts in _time_lexical(conn, q["question"], variants, fts_ms, same).items():
            found[f"nomoat FTS5 only, {name}"].append(ranks([page_of[i] for i in fts[:10]], gold))
        vec = store.vector_search(conn, embedder.embed([q["question"]])[0], 10)
        found["nomoat vectors only"].append(ranks([page_of[i] for i in vec], gold))
        for _ in range(3):
            for name, config in variants.items():
                t = time.perf_counter()
                hits = _search(q["question"], kb, 10, config)
                latency[name].append((time.perf_counter() - t) * 1000)
        for name, config in variants.items():
            hits = _search(q["question"], kb, 10, config)
            found[f"nomoat search (fused), {name}"].append(ranks([page(h["path"]) for h in hits], gold))
    conn.close()
    print(f"\n## retrieval quality ({len(questions)} questions, {len(rows)} chunks)")
    print("| | recall@1 | recall@5 | recall@10 | MRR |\n|---|---:|---:|---:|---:|")
    for name, f in found.items():
        s = summarize(f)
        print(f"| {name} | {s['R@1']:.2f} | {s['R@5']:.2f} | {s['R@10']:.2f} | {s['MRR']:.3f} |")
    print("\n| lexical search | BM25 top 50 p50 / p95 ms | search p50 / p95 ms | plain's top 10 / top 50 kept |")
    print("|---|---:|---:|---:|")
    for name in variants:
        print(
            f"| {name} | {pct(fts_ms[name], 50):.1f} / {pct(fts_ms[name], 95):.1f} | "
            f"{pct(latency[name], 50):.1f} / {pct(latency[name], 95):.1f} | "
            f"{np.mean(same[name][0::2]):.3f} / {np.mean(same[name][1::2]):.3f} |"
        )
    print("(search: k=10, warm, incl. query embedding)")


# -- scale -----------------------------------------------------------------------------------------------------------
def bench_scale(texts: list[str], n: int, questions: list[dict], common: list[float] | None = None) -> None:
    from nomoat import paths
    from nomoat.kb import store

    kb = "scale"
    t, built = time.perf_counter(), "reused"
    if not paths.kb_path(kb).exists():  # --keep-scale leaves an earlier run's KB in place
        _build_scale(kb, texts, n)
        built = f"built in {time.perf_counter() - t:.0f} s"
    variants = _lexical_variants(common)
    for q in questions[:5]:
        for config in variants.values():
            _search(q["question"], kb, 10, config)  # warm caches
    latency: dict[str, list[float]] = {name: [] for name in variants}
    fts_ms: dict[str, list[float]] = {name: [] for name in variants}
    same: dict[str, list[float]] = {name: [] for name in variants}
    conn = store.open_kb(kb, create=False)
    for j, q in enumerate(questions):
        order = list(variants.items())
        for name, config in order if j % 2 else order[::-1]:  # alternate who goes first (warm caches)
            t = time.perf_counter()
            _search(q["question"], kb, 10, config)
            latency[name].append((time.perf_counter() - t) * 1000)
        _time_lexical(conn, q["question"], variants, fts_ms, same)
    conn.close()
    print(f"\n## scale: {n} synthetic chunks ({built}), {len(questions)} queries, k=10")
    print("| lexical search | search p50 / p95 ms | BM25 top 50 p50 / p95 ms | plain's top 10 / top 50 kept |")
    print("|---|---:|---:|---:|")
    for name in variants:
        print(
            f"| {name} | {pct(latency[name], 50):.1f} / {pct(latency[name], 95):.1f} | "
            f"{pct(fts_ms[name], 50):.1f} / {pct(fts_ms[name], 95):.1f} | "
            f"{np.mean(same[name][0::2]):.3f} / {np.mean(same[name][1::2]):.3f} |"
        )


def _build_scale(kb: str, texts: list[str], n: int) -> None:
    from nomoat.kb import store
    from nomoat.kb.embeddings import DEFAULT_NAME

    rng = random.Random(0)
    sentences = [s for t in texts for s in re.split(r"(?<=[.!?])\s+", t) if len(s) > 20]
    conn = store.open_kb(kb)
    with store.transaction(conn):
        store.set_embedder(conn, DEFAULT_NAME, 384)
    per_doc, vrng = 100, np.random.default_rng(0)
    for d in range(n // per_doc):
        chunks = []
        for i in range(per_doc):
            text = " ".join(rng.sample(sentences, 6))
            chunks.append(_Chunk(text, 0, len(text), f"chunk {i}", ""))
        vectors = vrng.standard_normal((per_doc, 384)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.write_document(conn, store.DocumentRecord(f"/synthetic/doc{d}.txt", 0, 0, None), chunks, vectors)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


class _Chunk:
    def __init__(self, text: str, start: int, end: int, location: str, heading: str) -> None:
        self.text, self.start, self.end, self.location, self.heading = text, start, end, location, heading


# -- answers ---------------------------------------------------------------------------------------------------------
def bench_answers(kb: str, questions: list[dict]) -> None:
    from nomoat.answer import chat, rag
    from nomoat.kb import store
    from nomoat.llm import runtime

    llm = runtime.load("default")
    conn = store.open_kb(kb, create=False)
    answerable = [q for q in questions if q["gold"]]
    unanswerable = [q for q in questions if not q["gold"]]
    with_rag = without = cited = unsupported_numbers = 0
    modes: dict[str, int] = {}
    t = time.perf_counter()
    for q in answerable:
        r = rag.ask(q["question"], kb, model=llm)
        modes[r["mode"]] = modes.get(r["mode"], 0) + 1
        with_rag += _contains(r["answer"], q["expect"])
        gold = {page(g) for g in q["gold"]}
        cited += any(page(c["path"]) in gold for c in r["citations"])
        unsupported_numbers += _numbers_missing(r, conn)
        plain = chat.run(q["question"], model="default", use_kb=False, gen=_greedy(160))  # the same cached Model
        without += _contains(plain["answer"], q["expect"])
    abstained = 0
    for q in unanswerable:
        r = rag.ask(q["question"], kb, model=llm)
        abstained += not r["grounded"]
        unsupported_numbers += _numbers_missing(r, conn)
    conn.close()
    n = len(answerable)
    print(
        f"\n## answers with the bundled model ({n} answerable, {len(unanswerable)} unanswerable; "
        f"{time.perf_counter() - t:.0f} s)"
    )
    print(
        f"contains the expected fact: with retrieval (ask) {with_rag / n:.2f}, without (plain chat) {without / n:.2f}"
    )
    print(f"answered with a citation on a gold page: {cited / n:.2f}; modes: {modes}")
    print(
        f"abstained on unanswerable: {abstained / len(unanswerable):.2f}; "
        f"answers stating a number their cited chunks lack: {unsupported_numbers}"
    )


def calibration(kb: str, questions: list[dict]) -> None:
    """Share of answerable questions kept / unanswerable ones refused by RagConfig.min_cosine thresholds, from the
    best cosine among each question's top-5 hits (the rule rag.relevant applies before its term-coverage check)."""
    best = {True: [], False: []}
    for q in questions:
        hits = _search(q["question"], kb, 5)
        best[bool(q["gold"])].append(max((h["cosine"] or 0.0) for h in hits) if hits else 0.0)
    print("\n## abstention threshold (max top-5 cosine)\n| min_cosine | answers | abstains |\n|---:|---:|---:|")
    for t in (0.40, 0.44, 0.48, 0.50, 0.52, 0.56):
        answers = sum(c >= t for c in best[True]) / len(best[True])
        abstains = sum(c < t for c in best[False]) / len(best[False])
        print(f"| {t:.2f} | {answers:.2f} | {abstains:.2f} |")


def _greedy(max_tokens: int):
    from nomoat.config import GenerationConfig

    return GenerationConfig(max_tokens=max_tokens, temperature=0.0)


def _contains(answer: str, expect: list[str]) -> bool:
    return any(e.lower() in answer.lower() for e in expect)


def _numbers_missing(result: dict, conn) -> int:
    """1 if the shown answer states a number that none of its cited chunks' full texts contain."""
    if not result["citations"]:
        return 0
    texts = []
    for c in result["citations"]:
        rows = conn.execute(
            "SELECT c.text FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE d.path = ?", (c["path"],)
        ).fetchall()
        texts += [r[0] for r in rows]
    body = re.sub(r"\[\d+\]", " ", result["answer"])
    return int(any(all(num not in t for t in texts) for num in NUMBER.findall(body)))


# -- main ------------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", default="ingest,quality,scale,answers")
    ap.add_argument("--corpus", choices=sorted(CORPORA), default="git-doc", help="which corpus and question files")
    ap.add_argument("--split", choices=("all", "tune", "report"), default="all", help="questions of this split only")
    ap.add_argument("--scale", type=int, default=100_000, help="chunks in the synthetic knowledge base")
    ap.add_argument(
        "--common-terms", type=float, nargs="*", help="SearchConfig.common_terms values to compare (default: its own)"
    )
    ap.add_argument(
        "--keep-scale", action="store_true", help="reuse the synthetic KB of an earlier run of the same --scale"
    )
    ap.add_argument("--baseline-sample", type=int, default=2000, help="chunks the baseline embeds (rate only)")
    args = ap.parse_args()
    parts = set(args.parts.split(","))

    home = CACHE / "nomoat-home"  # kept between runs: the embedder export is cached there
    os.environ["NOMOAT_HOME"] = str(home)
    from nomoat.kb import catalog, store
    from nomoat.kb.embeddings import default_embedder

    default_embedder()  # one-off ONNX export outside every timing
    chosen = CORPORA[args.corpus]
    questions = load_questions(chosen.questions, args.split)
    answerable = [q for q in questions if q["gold"]]
    kb = chosen.kb
    corpus = Path(tempfile.mkdtemp(prefix=f"nomoat-{kb}-")) / "html"
    chosen.copy(corpus)
    try:
        if "ingest" in parts or not (home / "kb" / f"{kb}.sqlite").exists():
            for name in (kb, "scale"):
                if (home / "kb" / f"{name}.sqlite").exists():
                    catalog.remove_kb(name)
            texts = bench_ingest(corpus, kb, args.baseline_sample, chosen.edited, chosen.deleted)
        else:
            conn = store.open_kb(kb, create=False)
            texts = [t for _, t in store.all_chunk_texts(conn)]
            conn.close()
        if "quality" in parts:
            bench_quality(kb, answerable, args.common_terms)
        if "scale" in parts:
            if (home / "kb" / "scale.sqlite").exists() and not args.keep_scale:
                catalog.remove_kb("scale")
            bench_scale(texts, args.scale, answerable, args.common_terms)
        if "calibration" in parts or "answers" in parts:
            calibration(kb, questions)
        if "answers" in parts:
            bench_answers(kb, questions)
    finally:
        shutil.rmtree(corpus.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
