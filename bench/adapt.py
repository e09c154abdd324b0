"""kb adapt on a real corpus: recall of the stock and the adapted query encoder side by side, in one run.

    python bench/adapt.py --corpus git-doc --time 20m        # after bench/retrieval.py has ingested the corpus

The corpus's knowledge base (made by ``bench/retrieval.py --parts ingest``) is copied to ``<kb>_adapt`` first, so
the original stays stock. The hand-written questions are never used in training (adapt trains on pseudo questions
of the chunks only); ``--split report`` reports on the half no choice was tuned on.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval import CACHE, CORPORA, load_questions, page, ranks, summarize


def quality(kb: str, questions: list[dict], adapted: bool) -> dict[str, dict[str, float]]:
    from nomoat.kb import queryenc, retrieval, store
    from nomoat.kb.embeddings import load_embedder

    with store.connect(kb) as conn:
        stock = load_embedder(store.embedder_of(conn)[0])
        encoder = (queryenc.load(kb, conn) if adapted else None) or stock
        vec, fused = [], []
        for q in questions:
            gold = {page(g) for g in q["gold"]}
            ids = store.vector_search(conn, encoder.embed([q["question"]])[0], 40)
            rows = store.get_chunks(conn, ids)
            pages = list(dict.fromkeys(page(rows[i]["path"]) for i in ids))[:10]
            vec.append(ranks(pages, gold))
            fused.append(ranks([page(h["path"]) for h in retrieval.search(q["question"], kb, 10)], gold))
    return {"vectors only": summarize(vec), "search (fused)": summarize(fused)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", choices=sorted(CORPORA), default="git-doc")
    ap.add_argument("--time", default="20m", help="kb adapt --time")
    ap.add_argument("--split", choices=["all", "tune", "report"], default="all")
    ap.add_argument("--keep", action="store_true", help="keep the tuned encoder even if the gate would not")
    ap.add_argument("--kinds", help="pseudo questions to train on, comma-separated (default: AdaptConfig.kinds)")
    ap.add_argument("--anchor", type=float, help="AdaptConfig.anchor")
    args = ap.parse_args()
    os.environ["NOMOAT_HOME"] = str(CACHE / "nomoat-home")
    from nomoat.adapt.run import adapt, format_adapt
    from nomoat.kb import catalog, store

    chosen = CORPORA[args.corpus]
    questions = [q for q in load_questions(chosen.questions, args.split) if q["gold"]]
    kb = f"{chosen.kb}_adapt"
    if kb in catalog.names():
        catalog.remove_kb(kb)
    with store.connect(chosen.kb) as src, store.connect(kb, create=True) as dst:
        src.backup(dst)
    before = quality(kb, questions, adapted=False)
    t = time.perf_counter()
    from nomoat.config import AdaptConfig

    config = AdaptConfig(min_gain=-1.0) if args.keep else AdaptConfig()
    if args.kinds:
        config.kinds = tuple(args.kinds.split(","))
    if args.anchor is not None:
        config.anchor = args.anchor
    result = adapt(kb, time_budget=args.time, progress=True, config=config)
    wall = time.perf_counter() - t
    after = quality(kb, questions, adapted=True)
    with store.connect(kb) as conn:
        chunks = conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
    print(f"\n## kb adapt on {args.corpus} ({chunks} chunks; {len(questions)} questions, split {args.split})")
    print(format_adapt(result))
    print(f"trained on {result['queries']['kinds']}; anchor {config.anchor}")
    print(f"adapt wall time {wall:.0f} s (budget {args.time})\n")
    print("| | recall@1 | recall@5 | recall@10 | MRR |\n|---|---:|---:|---:|---:|")
    for name in before:
        for label, table in (("stock", before), ("adapted", after)):
            s = table[name]
            print(f"| {name}, {label} | {s['R@1']:.2f} | {s['R@5']:.2f} | {s['R@10']:.2f} | {s['MRR']:.3f} |")


if __name__ == "__main__":
    main()
