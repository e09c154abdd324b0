"""`ask` on a real knowledge base, side by side in one run: plain vs prompt-lookup decoding, or serving formats.

    python -u bench/answers.py [--limit 20] [--lookup 1,4] [--threads N] [--kb gitdoc] [--warm]
    python -u bench/answers.py --formats [--limit 20]   # the bundled Q4_1 as shipped vs its served Q8_0 copy
    python -u bench/answers.py --prefix [--limit 20]    # cold prompts evaluated whole vs from the saved start
    python -u bench/answers.py --sources 1200,600/96 [--split report]  # ask's source tokens [/answer tokens]

The questions are bench/questions/git_doc.jsonl's answerable ones; the KB is Debian's git-doc (bench/corpus.py)
ingested as ``gitdoc`` under bench/.cache/nomoat-home (done on the first run). One model is loaded once; each
question goes through the whole of ``rag.ask`` (retrieval, prompt, generation, citation check) once per side,
the sides alternating first place question by question so machine noise hits both alike. Before every answer
the KV cache is emptied (a fresh ``nomoat ask`` process has none), unless ``--warm``: then each side keeps the
cache its previous question left, as in one chat/eval/serve process, and gets its own model so the other side's
cache is never reused. With ``--formats`` the sides are the bundled model's file as shipped and the copy
:mod:`nomoat.llm.formats` serves (both plain decoding, each its own model). With ``--prefix`` both sides run the
served file cold; one evaluates every prompt whole, the other loads the saved start of the prompt
(:mod:`nomoat.llm.prefix`), as a second ``nomoat ask`` process does. With ``--sources`` each side gives the
sources that many prompt tokens (``RagConfig.max_source_tokens``; after a "/", the answer's most tokens,
``max_answer_tokens``), every side on the one served model, cold; the questions
are then git-doc's answerable ones of ``--split`` (both question files), and each side's answers are also scored:
the share containing the question's expected fact, and the share in the model's own words that passed the check.

Prints, per side: p50/p95 end-to-end latency of ``ask``, p50 time to first token (the prompt's prefill), decode
tok/s (tokens after the first over the time after the first), tokens per decode call (1 + accepted drafts), the
share of drafted tokens accepted, and how many answers are identical to the plain side's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from corpus import CACHE, git_doc_html  # noqa: E402

QUESTIONS = HERE / "questions" / "git_doc.jsonl"


@dataclass
class Run:
    latency: float  # whole ask(), seconds
    ttft: float  # chat() called -> first text piece
    decode_tok_s: float
    tokens: int
    steps: int
    drafted: int
    accepted: int
    answer: str
    mode: str
    prompt_tokens: int = 0


class Timed:
    """The loaded model with its ``chat`` timed: when it was called, when its first piece came, its counters."""

    def __init__(self, model: Any):
        self.model = model
        self.called = self.first = self.last = 0.0
        self.generation: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def chat(self, messages: Any, gen: Any = None, **kw: Any) -> Any:
        self.called, self.first = time.perf_counter(), 0.0
        generation = self.generation = self.model.chat(messages, gen, **kw)
        pieces = generation.pieces

        def timed() -> Any:
            for piece in pieces:
                self.first = self.first or time.perf_counter()
                yield piece
            self.last = time.perf_counter()

        generation.pieces = timed()
        return generation


def ensure_kb(kb: str) -> None:
    """Ingest git-doc into ``kb`` under NOMOAT_HOME unless it is there already."""
    from nomoat.paths import kb_path

    if kb_path(kb).exists():
        return
    corpus = Path(tempfile.mkdtemp(prefix="nomoat-gitdoc-")) / "html"
    shutil.copytree(git_doc_html()[0].parent, corpus)
    try:
        subprocess.run([sys.executable, "-m", "nomoat", "ingest", str(corpus), "--kb", kb, "--json"], check=True)
    finally:
        shutil.rmtree(corpus.parent, ignore_errors=True)


def ask_once(timed: Timed, question: str, kb: str, lookup: int, warm: bool, rag_config: Any = None) -> Run:
    from nomoat.answer import rag

    timed.model.config.lookup_tokens = lookup
    if not warm:
        timed.model.llama.reset()
    start = time.perf_counter()
    timed.generation = None
    result = rag.ask(question, kb, model=timed, config=rag_config)
    latency = time.perf_counter() - start
    g = timed.generation
    if g is None:  # abstained before generating
        return Run(latency, float("nan"), float("nan"), 0, 0, 0, 0, result["answer"], result["mode"])
    decode = (g.completion_tokens - 1) / (timed.last - timed.first) if g.completion_tokens > 1 else float("nan")
    d = g.drafting
    return Run(latency, timed.first - timed.called, decode, g.completion_tokens, d.steps, d.drafted, d.accepted,
               result["answer"], result["mode"], g.prompt_tokens)  # fmt: skip


@dataclass
class Side:
    name: str
    lookup: int
    fast_format: bool = False
    prefix_cache: bool = False
    rag: Any = None  # the RagConfig of this side (None = the default)
    runs: list[Run] = field(default_factory=list)


def rag_setting(spec: str) -> Any:
    """ "600" -> RagConfig(max_source_tokens=600); "600/96" also max_answer_tokens=96."""
    from nomoat.config import RagConfig

    sources, _, answer = spec.partition("/")
    return RagConfig(max_source_tokens=int(sources), **({"max_answer_tokens": int(answer)} if answer else {}))


def pct(values: list[float], q: float) -> float:
    values = sorted(v for v in values if v == v)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")


def main() -> None:
    from nomoat.config import RuntimeConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=20, help="answerable questions asked (default 20)")
    ap.add_argument("--lookup", default="1,4", help="draft tokens of each lookup side, comma-separated (default 1,4)")
    ap.add_argument("--threads", type=int, default=RuntimeConfig().n_threads)
    ap.add_argument("--kb", default="gitdoc")
    ap.add_argument("--warm", action="store_true", help="keep each side's KV cache between questions")
    ap.add_argument("--json", type=Path, help="also write every run here")
    ap.add_argument("--formats", action="store_true", help="compare the shipped Q4_1 with its served copy instead")
    ap.add_argument("--prefix", action="store_true", help="compare whole cold prompts with the saved prompt start")
    ap.add_argument("--sources", help="source token budgets to compare, comma-separated (e.g. 1200,600)")
    ap.add_argument("--split", choices=("all", "tune", "report"), default="all", help="questions (with --sources)")
    ap.add_argument("--corpus", default="git-doc", help="with --sources: bench/retrieval.py's corpus (its KB too)")
    args = ap.parse_args()
    os.environ.setdefault("NOMOAT_HOME", str(CACHE / "nomoat-home"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ensure_kb(args.kb)

    from nomoat.llm import runtime
    from nomoat.llm.models import resolve

    if args.sources:  # both question files, one split: budgets are chosen on "tune" and reported on "report"
        from retrieval import CORPORA, load_questions

        rows = load_questions(CORPORA[args.corpus].questions, args.split)
        args.kb = CORPORA[args.corpus].kb
    else:
        rows = [json.loads(line) for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if r.get("gold")][: args.limit]
    questions = [r["question"] for r in rows]
    config = RuntimeConfig(n_threads=args.threads, fast_format=False, prefix_cache=False)
    plain_model = runtime.Model(resolve("default"), replace(config))
    if args.formats:
        sides = [Side("as shipped", 0), Side("served", 0, fast_format=True)]
    elif args.sources:
        sides = [Side(f"sources {n}", 0, True, rag=rag_setting(n)) for n in args.sources.split(",")]
    elif args.prefix:
        sides = [Side("whole prompt", 0, fast_format=True), Side("saved start", 0, True, prefix_cache=True)]
    else:
        sides = [Side("plain", 0), *(Side(f"lookup {n}", int(n)) for n in args.lookup.split(","))]

    def model_for(side: Side) -> Any:  # --warm: a model per side, so no side reuses another's cache
        if side.fast_format or (args.warm and side.lookup):
            return runtime.Model(resolve("default"), replace(config, fast_format=side.fast_format,
                                                             prefix_cache=side.prefix_cache))  # fmt: skip
        return plain_model

    if args.sources:  # the budgets differ in the prompt only: one served model, reset before every answer
        models = dict.fromkeys((side.name for side in sides), Timed(model_for(sides[0])))
    else:
        models = {side.name: Timed(model_for(side)) for side in sides}
    for side in sides:  # warm-up: page in weights and the embedder, build kernels' buffers
        ask_once(models[side.name], questions[0], args.kb, side.lookup, warm=False, rag_config=side.rag)
    for i, question in enumerate(questions):
        for side in sides if i % 2 == 0 else sides[::-1]:
            side.runs.append(ask_once(models[side.name], question, args.kb, side.lookup, args.warm, side.rag))
        runs = [s.runs[-1] for s in sides]
        cells = " ".join(f"{r.latency:6.2f}s {'=' if r.answer == runs[0].answer else 'DIFF'}" for r in runs[1:])
        print(f"{i + 1:3} {runs[0].latency:6.2f}s {cells}  {runs[0].mode:10} {question[:50]}", flush=True)

    files = ", ".join(f"{s.name}={models[s.name].model.path.name}" for s in sides)
    print(f"\nmodel={plain_model.name} ({files}) threads={args.threads} questions={len(questions)} "
          f"cache={'warm (kept between questions)' if args.warm else 'cold (reset before each answer)'}")  # fmt: skip
    head = ("side", "p50 s", "p95 s", "TTFT p50", "decode tok/s", "tok/step", "accepted", "same answer")
    print(f"{head[0]:12}" + "".join(f"{h:>13}" for h in head[1:]))
    plain = sides[0].runs
    for side in sides:
        gen = [r for r in side.runs if r.tokens]
        latency = [r.latency for r in side.runs]
        steps, drafted = sum(r.steps for r in gen), sum(r.drafted for r in gen)
        same = sum(r.answer == p.answer and r.mode == p.mode for r, p in zip(side.runs, plain, strict=True))
        cells = [
            f"{pct(latency, 0.5):.2f}",
            f"{pct(latency, 0.95):.2f}",
            f"{pct([r.ttft for r in gen], 0.5):.2f}",
            f"{statistics.median(r.decode_tok_s for r in gen):.1f}",
            f"{sum(r.tokens for r in gen) / max(steps, 1):.2f}",
            f"{sum(r.accepted for r in gen) / drafted:.0%}" if drafted else "-",
            f"{same}/{len(side.runs)}",
        ]
        print(f"{side.name:12}" + "".join(f"{c:>13}" for c in cells))
    if args.sources:
        print(f"\n{'side':12}{'prompt tok p50':>16}{'has the fact':>14}{'own words ok':>14}  modes")
        for side in sides:
            pairs = zip(side.runs, rows, strict=True)
            fact = sum(any(e.lower() in r.answer.lower() for e in q["expect"]) for r, q in pairs)
            modes = {m: sum(r.mode == m for r in side.runs) for m in sorted({r.mode for r in side.runs})}
            prompt = pct([r.prompt_tokens for r in side.runs if r.tokens], 0.5)
            print(f"{side.name:12}{prompt:>16.0f}{fact / len(rows):>14.2f}"
                  f"{modes.get('generated', 0) / len(rows):>14.2f}  {modes}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({s.name: [r.__dict__ for r in s.runs] for s in sides}, indent=1))


if __name__ == "__main__":
    main()
