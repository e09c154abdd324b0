"""How search fuses its evidence, chosen on one half of the questions and reported on the other, in one run.

    python bench/fusion.py                 # after bench/retrieval.py (and bench/adapt.py) made the knowledge bases

For every question of the "tune" split the BM25 rankings (one per set of field weights) and the vector ranking
are computed once; then every combination of field weights, vector weight, RRF constant and document evidence is
scored from them with search's own fusion (``retrieval.rrf``, ``retrieval.by_document``). The combination with
the best mean recall@5 + recall@1 over the corpora is then reported on the "report" split, next to today's default
and to rank_bm25, with the numbers of the tune split beside it.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval import CACHE, CORPORA, load_questions, page, ranks, summarize

FTS_WEIGHTS = [(1.0, h, f) for h in (0.5, 1.0) for f in (0.0, 0.5, 1.0, 2.0)]
VECTOR_WEIGHTS = (0.5, 1.0, 1.5, 2.0, 3.0)
RRF_K = (10, 30, 60)
EVIDENCE = (0.0, 0.25, 0.5)


def rankings(kb: str, questions: list[dict], adapted: bool) -> tuple[list[dict], dict[int, str]]:
    """Per question: ``{"gold", "fts": {weights: ids}, "vec": ids}``; and every chunk's document path."""
    from nomoat.config import SearchConfig
    from nomoat.kb import lexical, queryenc, retrieval, store
    from nomoat.kb.embeddings import load_embedder

    out, paths = [], {}
    with store.connect(kb) as conn:
        stock = load_embedder(store.embedder_of(conn)[0])
        encoder = (queryenc.load(kb, conn) if adapted else None) or stock
        for q in questions:
            match = retrieval.fts_query(q["question"])
            fts = {w: lexical.fts_search(conn, match, 50, w, common=SearchConfig.common_terms) for w in FTS_WEIGHTS}
            vec = store.vector_search(conn, encoder.embed([q["question"]])[0], 50)
            out.append({"gold": {page(g) for g in q["gold"]}, "fts": fts, "vec": vec})
        paths = {
            r[0]: r[1] for r in conn.execute("SELECT c.id, d.path FROM chunks c JOIN documents d ON d.id = c.doc_id")
        }
    return out, paths


def score(data: list[dict], paths: dict[int, str], fts_w: tuple, vec_w: float, k: int, ev: float) -> dict:
    from nomoat.kb import retrieval

    found = []
    for q in data:
        fused = retrieval.rrf([q["fts"][fts_w], q["vec"]], k, [1.0, vec_w])
        top = retrieval.by_document(fused, paths, 1, ev)[:10]
        found.append(ranks([page(paths[i]) for i, _ in top], q["gold"]))
    return summarize(found)


def main() -> None:
    os.environ["NOMOAT_HOME"] = str(CACHE / "nomoat-home")
    from nomoat.config import SearchConfig
    from nomoat.kb import catalog

    kbs = [(name, c.kb, False) for name, c in CORPORA.items() if c.kb in catalog.names()]
    kbs += [(f"{name} (adapted)", f"{c.kb}_adapt", True) for name, c in CORPORA.items()
            if f"{c.kb}_adapt" in catalog.names()]  # fmt: skip
    data = {}
    for label, kb, adapted in kbs:
        corpus = CORPORA[label.split()[0]]
        qs = {s: [q for q in load_questions(corpus.questions, s) if q["gold"]] for s in ("tune", "report")}
        data[label] = {s: rankings(kb, qs[s], adapted) for s in qs}
    grid = list(itertools.product(FTS_WEIGHTS, VECTOR_WEIGHTS, RRF_K, EVIDENCE))
    stock = [label for label in data if "adapted" not in label]

    def objective(params: tuple) -> float:
        return sum(s["R@5"] + s["R@1"] for s in (score(*data[lb]["tune"], *params) for lb in stock)) / len(stock)

    best = max(grid, key=objective)
    d = SearchConfig()
    today = (d.fts_weights, 1.0, 60, 0.0)  # the fusion before this benchmark: equal weights, rrf_k 60, no evidence
    chosen = (d.fts_weights, d.vector_weight, d.rrf_k, d.document_evidence)
    print(f"defaults now: {chosen}; best of this run {'the same' if chosen == best else 'differs'}")
    print(f"grid of {len(grid)} settings; best on the tune split: fts weights {best[0]}, vector weight {best[1]}, "
          f"rrf_k {best[2]}, document evidence {best[3]}")  # fmt: skip
    print("\n| corpus | split | setting | recall@1 | recall@5 | recall@10 | MRR |\n|---|---|---|---:|---:|---:|---:|")
    for label in data:
        for split in ("tune", "report"):
            n = len(data[label][split][0])
            for name, params in (("before", today), ("tuned", best)):
                s = score(*data[label][split], *params)
                print(f"| {label} | {split} ({n}) | {name} | {s['R@1']:.2f} | {s['R@5']:.2f} | {s['R@10']:.2f} | "
                      f"{s['MRR']:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
