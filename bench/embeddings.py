"""Embedding throughput and retrieval quality of nomoat's default embedder vs plain sentence-transformers.

    python bench/embeddings.py            # full git-doc corpus (~3.8k chunks; ~20 min on 2 busy cores)
    python bench/embeddings.py --quick    # 3 chunks per file, smaller timing sample (~4 min)

Corpus: Debian's git-doc HTML (bench/corpus.py), tags stripped and cut into ~800-character chunks (crude on
purpose: the same chunks go to every candidate). Questions: bench/questions/git_doc.jsonl (answerable ones), user
questions with the manual pages that answer them. A question counts as found at k when any of the top-k chunks
comes from one of its gold files (50 questions: one question is 0.02).

Throughput is measured side by side on one fixed sample of chunks, candidates interleaved, ``--repeats`` rounds,
medians; ratios are against the baseline ``SentenceTransformer(dir).encode(chunks, batch_size=32)`` measured in
the same rounds (wall clock, and process CPU time, which a shared machine disturbs less). ``setup s`` is the
time to get a ready embedder (with ``--cold`` nomoat's one-off ONNX export + int8 quantisation is included).
Recall is computed on the whole corpus; "fused" is recall@5 after reciprocal-rank fusion with BM25, the way
search combines them.
"""

from __future__ import annotations

import argparse
import html.parser
import json
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus import CACHE, git_doc_html

os.environ.setdefault("HF_HUB_OFFLINE", "1")
QUESTIONS = Path(__file__).resolve().parent / "questions" / "git_doc.jsonl"
Embed = Callable[[Sequence[str]], np.ndarray]


# -- corpus ------------------------------------------------------------------------------------------------------
class _Text(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag in ("script", "style", "head"):
            self.skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head") and self.skip:
            self.skip -= 1

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def chunks_of(path: Path, size: int = 800) -> list[str]:
    parser = _Text()
    parser.feed(path.read_text(errors="replace"))
    words = " ".join(parser.parts).split()
    out, cur, n = [], [], 0
    for word in words:
        cur.append(word)
        n += len(word) + 1
        if n >= size:
            out.append(" ".join(cur))
            cur, n = [], 0
    return [*out, " ".join(cur)] if cur else out


# -- retrieval ---------------------------------------------------------------------------------------------------
def bm25_scores(chunks: list[str], queries: list[str], k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    docs = [re.findall(r"\w+", c.lower()) for c in chunks]
    lens = np.array([len(d) for d in docs], np.float64)
    postings: dict[str, dict[int, int]] = {}
    for i, doc in enumerate(docs):
        for word, tf in Counter(doc).items():
            postings.setdefault(word, {})[i] = tf
    norm = k1 * (1 - b + b * lens / lens.mean())
    out = np.zeros((len(queries), len(docs)))  # (q, n)
    for qi, query in enumerate(queries):
        for word in set(re.findall(r"\w+", query.lower())) & postings.keys():
            hits = postings[word]
            idf = math.log(1 + (len(docs) - len(hits) + 0.5) / (len(hits) + 0.5))
            ids, tf = np.fromiter(hits.keys(), int), np.fromiter(hits.values(), float)
            out[qi, ids] += idf * tf * (k1 + 1) / (tf + norm[ids])
    return out


def rrf(*scores: np.ndarray, k: int = 60) -> np.ndarray:
    ranks = [np.argsort(np.argsort(-s, axis=1), axis=1) for s in scores]
    return sum(1.0 / (k + 1 + r) for r in ranks)


def recall(scores: np.ndarray, files: np.ndarray, gold: list[set[str]], k: int) -> float:
    top = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean([bool(set(files[row]) & g) for row, g in zip(top, gold, strict=True)]))


# -- candidates: name -> () -> embed function ----------------------------------------------------------------------
def sentence_transformers(bf16: bool = False) -> Embed:
    import torch
    from sentence_transformers import SentenceTransformer

    from nomoat.kb.embeddings import minilm_dir

    model = SentenceTransformer(str(minilm_dir()), device="cpu")

    def embed(texts: Sequence[str]) -> np.ndarray:
        if bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model.encode(list(texts), batch_size=32)
        return model.encode(list(texts), batch_size=32)

    return embed


def onnx_fp32() -> Embed:
    from nomoat.kb.embeddings import OnnxEmbedder, build_onnx, minilm_dir

    path = CACHE / "minilm-fp32.onnx"
    if not path.exists():
        build_onnx(minilm_dir(), path, quantize=False)
    return OnnxEmbedder(path, minilm_dir(), name="bench-fp32").embed


def nomoat_default(cold: bool) -> Callable[[], Embed]:
    def setup() -> Embed:
        if cold:
            os.environ["NOMOAT_HOME"] = tempfile.mkdtemp(prefix="nomoat-bench-")
        from nomoat.kb.embeddings import default_embedder

        return default_embedder().embed

    return setup


def static_distilled(dims: int = 256) -> Embed:
    """A model2vec-style static model distilled here from MiniLM (model2vec's distiller pins an older
    transformers): each vocabulary token's mean-pooled output for ``[CLS] token [SEP]``, PCA to ``dims``,
    Zipf/SIF weights by vocabulary rank (model2vec's defaults); a text is the mean of its tokens' rows."""
    from tokenizers import Tokenizer

    from nomoat.kb.embeddings import minilm_dir

    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    path = CACHE / f"static-minilm-{dims}.npy"
    if not path.exists():
        import torch
        from transformers import AutoModel

        model = AutoModel.from_pretrained(minilm_dir()).eval()
        vocab = tok.get_vocab_size()
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        states = np.zeros((vocab, model.config.hidden_size), np.float32)
        with torch.inference_mode():
            for i in range(0, vocab, 1024):
                ids = torch.arange(i, min(vocab, i + 1024))
                x = torch.stack([torch.full_like(ids, cls), ids, torch.full_like(ids, sep)], 1)
                states[i : i + len(ids)] = model(input_ids=x).last_hidden_state.mean(1).numpy()
        centred = states - states.mean(0)
        table = centred @ np.linalg.svd(centred, full_matrices=False)[2][:dims].T
        zipf = 1 / np.arange(2, vocab + 2)
        table *= (1e-4 / (1e-4 + zipf / zipf.sum()))[:, None]
        np.save(path, table.astype(np.float32))
    table = np.load(path)

    def embed(texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), table.shape[1]), np.float32)
        for i, enc in enumerate(tok.encode_batch(list(texts), add_special_tokens=False)):
            if enc.ids:
                out[i] = table[enc.ids].mean(0)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    return embed


def llama_cpp_gguf(path: Path) -> Callable[[], Embed]:
    def setup() -> Embed:
        import llama_cpp

        llm = llama_cpp.Llama(
            str(path), embedding=True, n_ctx=512, n_batch=512, n_ubatch=512, flash_attn=True, verbose=False
        )

        def embed(texts: Sequence[str]) -> np.ndarray:
            # Truncate like sentence-transformers: 256 word pieces including [CLS] and [SEP].
            cut = [llm.detokenize(llm.tokenize(t.encode())[:255]).decode(errors="ignore") for t in texts]
            return np.asarray(llm.embed(cut, normalize=True), np.float32).reshape(len(texts), -1)

        return embed

    return setup


# -- the run -------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 chunks per file, 64-chunk timing sample, 2 repeats")
    ap.add_argument("--repeats", type=int, help="timing rounds (default 3, quick 2)")
    ap.add_argument("--sample", type=int, help="chunks in the timing sample (default 192, quick 64)")
    ap.add_argument("--cold", action="store_true", help="fresh NOMOAT_HOME: include nomoat's first-use build")
    ap.add_argument("--gguf", type=Path, help="also time a GGUF conversion of MiniLM through llama-cpp-python")
    ap.add_argument("--bf16-recall", action="store_true", help="also embed the whole corpus with bf16 (slow)")
    args = ap.parse_args()
    repeats = args.repeats or (2 if args.quick else 3)

    chunks: list[str] = []
    files: list[str] = []
    for path in git_doc_html():
        parts = chunks_of(path)[: 3 if args.quick else None]
        chunks += parts
        files += [path.name] * len(parts)
    questions = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    questions = [q for q in questions if q["gold"]]  # the unanswerable ones are for bench/retrieval.py
    queries, gold = [q["question"] for q in questions], [set(q["gold"]) for q in questions]
    sample = random.Random(0).sample(chunks, min(len(chunks), args.sample or (64 if args.quick else 192)))
    print(
        f"{len(chunks)} chunks ({sum(map(len, chunks)) / 1e6:.1f} MB) from {len(set(files))} files, "
        f"{len(queries)} questions; timing on {len(sample)} chunks x {repeats} rounds",
        file=sys.stderr,
    )

    # (name, setup, compute recall?)
    candidates: list[tuple[str, Callable[[], Embed], bool]] = [
        ("sentence-transformers fp32 (baseline)", sentence_transformers, True),
        ("sentence-transformers bf16 autocast", lambda: sentence_transformers(bf16=True), args.bf16_recall),
        ("onnxruntime fp32", onnx_fp32, True),
        ("nomoat: onnxruntime int8", nomoat_default(args.cold), True),
        ("static, distilled from MiniLM", static_distilled, True),
    ]
    if args.gguf:
        candidates.append((f"llama.cpp {args.gguf.name}", llama_cpp_gguf(args.gguf), True))

    embedders, setup_s = {}, {}
    for name, setup, _ in candidates:
        t = time.perf_counter()
        embedders[name] = setup()
        embedders[name](sample[:2])  # warm-up
        setup_s[name] = time.perf_counter() - t
        print(f"ready: {name} ({setup_s[name]:.1f} s)", file=sys.stderr)

    wall: dict[str, list[float]] = {name: [] for name in embedders}
    cpu: dict[str, list[float]] = {name: [] for name in embedders}
    for _ in range(repeats):
        for name, embed in embedders.items():
            t, c = time.perf_counter(), time.process_time()
            embed(sample)
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)

    bm25 = bm25_scores(chunks, queries)
    file_arr = np.array(files)
    rows = [("BM25 (no vectors)", None, [recall(bm25, file_arr, gold, k) for k in (1, 5, 10)], None)]
    for name, _, with_recall in candidates:
        if not with_recall:
            rows.append((name, name, None, None))
            continue
        print(f"embedding the corpus: {name}", file=sys.stderr)
        docs, qs = embedders[name](chunks), embedders[name](queries)
        scores = qs @ docs.T
        rec = [recall(scores, file_arr, gold, k) for k in (1, 5, 10)]
        rows.append((name, name, rec, recall(rrf(scores, bm25), file_arr, gold, 5)))

    base = next(iter(embedders))
    bw, bc = statistics.median(wall[base]), statistics.median(cpu[base])
    kb = sum(len(s.encode()) for s in sample) / 1e3
    head = f"{'candidate':40s} {'chunks/s':>9s} {'KB/s':>7s} {'x wall':>7s} {'x cpu':>6s} {'setup s':>8s}"
    print(f"{head} {'R@1':>5s} {'R@5':>5s} {'R@10':>5s} {'fused R@5':>9s}")
    for label, name, rec, fused in rows:
        if name:
            w, c = statistics.median(wall[name]), statistics.median(cpu[name])
            speed = f"{len(sample) / w:9.1f} {kb / w:7.1f} {bw / w:7.2f} {bc / c:6.2f} {setup_s[name]:8.1f}"
        else:
            speed = f"{'':9s} {'':7s} {'':7s} {'':6s} {'':8s}"
        quality = " ".join(f"{r:5.2f}" for r in rec) if rec else f"{'-':>5s} {'-':>5s} {'-':>5s}"
        fused_s = "-" if fused is None else f"{fused:.2f}"
        print(f"{label:40s} {speed} {quality} {fused_s:>9s}")


if __name__ == "__main__":
    main()
