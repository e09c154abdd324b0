"""One source of defaults: a dataclass per stage. CLI flags and config files only override these."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_KB = "default"
"""The knowledge base every command uses unless ``--kb NAME`` is given."""
DEFAULT_MODEL = "default"
"""``--model default``: the bundled SmolLM2-135M-Instruct (see :mod:`nomoat.llm.models`)."""


def default_threads() -> int:
    """CPUs this process may use. llama.cpp's own default (half the cores) leaves one of two idle here."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


@dataclass
class RuntimeConfig:
    """How a GGUF model is loaded into llama.cpp."""

    n_ctx: int = 4096
    """Context window in tokens (capped at the model's trained context length)."""
    n_threads: int = field(default_factory=default_threads)
    """CPU threads for decoding and prompt processing."""
    n_batch: int = 512
    """Prompt tokens processed per llama.cpp decode call."""
    seed: int = 0
    """Sampling seed; the same seed and prompt give the same text."""
    lookup_tokens: int = 0
    """Prompt-lookup speculative decoding: up to this many tokens drafted by copying what followed the text's
    last n-gram in the prompt, checked in one decode (0 = off). Off: on 2 cores it was no faster, and llama.cpp's
    batched kernels give slightly different logits, so answers can differ (docs/benchmarks.md)."""
    lookup_ngram: int = 3  # longest n-gram lookup matches (it falls back to shorter ones, down to one token)
    prefix_cache: bool = True  # a cold prompt loads the KV state of the usual start from the cache (llm/prefix.py)
    fast_format: bool = True
    """Serve a model whose weight format is slow on this CPU (Q4_1 on x86, the bundled model's) from a copy
    requantized once to a faster one (Q8_0: 1.4x prefill, same answers; :mod:`nomoat.llm.formats`)."""


@dataclass
class GenerationConfig:
    """Sampling settings for one answer."""

    max_tokens: int = 512
    """Upper bound on generated tokens (lowered automatically to what the context has left)."""
    temperature: float = 0.2
    """0 is greedy; small models ramble at high temperatures."""
    top_p: float = 0.95
    top_k: int = 40
    repeat_penalty: float = 1.1
    """>1 discourages loops, which 135M models fall into easily."""
    stop: tuple[str, ...] = ()
    """Extra stop strings; the model's end-of-turn tokens always stop."""
    seed: int | None = None  # overrides RuntimeConfig.seed for this answer


@dataclass
class ChatConfig:
    """Interactive chat."""

    system: str | None = None
    """System prompt; None keeps the model template's own default."""


@dataclass
class StoreConfig:
    """How a knowledge base's SQLite file is opened."""

    busy_timeout_ms: int = 5000
    """How long a writer waits for another connection's lock before SQLite raises 'database is locked'."""


OCR_ENGINES = ("rapidocr", "tesseract", "off")
"""What ``--ocr`` accepts (``nomoat.kb.readers.ocr.ENGINES`` and "off")."""


@dataclass
class OcrConfig:
    """Reading text from pictures: image files, scanned PDF pages, and images inside PDF and DOCX files."""

    engine: str = "rapidocr"
    """"rapidocr" (PP-OCR models inside the rapidocr-onnxruntime wheel; the better of the two on the R manuals,
    docs/benchmarks.md), "tesseract" (needs Debian's tesseract-ocr), or "off"."""
    dpi: int = 150
    """Resolution a scanned PDF page is rendered at before OCR (150: CER 3.0%, median page 0.75%, on an R manual)."""
    max_pixels: int = 64_000_000
    """An image with more pixels than this (about 8000 x 8000) is refused before it is decoded: decompression
    bombs (a 20,000 x 20,000 PNG is 1.2 GB of RGB) and posters nobody meant to index."""
    max_pages: int = 300
    """Most pages and images OCR'd in one file; the rest are listed as not read (with the file's other text kept)."""
    page_timeout_s: float = 180.0
    """Wall-clock limit for the OCR of one page or image (a page of a manual takes seconds to tens of seconds on
    two busy cores: docs/benchmarks.md). This time does not count against ``file_timeout_s``, so a long scanned
    PDF is bounded by ``max_pages`` x this instead."""
    min_page_chars: int = 20
    """A PDF page with an image and fewer letters and digits than this in its text layer (none, or a page number)
    is a scan: it is rendered and OCR'd whole."""
    min_image_side: int = 48
    """Images narrower or shorter than this many pixels (icons, bullets, rules) are never OCR'd."""
    min_text_chars: int = 4
    """OCR output with fewer letters and digits than this is noise from a photo or a drawing, not text."""


@dataclass
class IngestConfig:
    """Walking, reading, chunking and embedding files into a knowledge base."""

    max_file_bytes: int = 64 * 2**20
    """Files larger than this are recorded as failed without being read (also passed to the reader)."""
    file_timeout_s: float = 30.0
    """Wall-clock limit for reading and chunking one file; a looping parser is failed with 'timed out'."""
    embed_batch: int = 256
    """Chunks embedded per embedder call; several small documents share one call for throughput."""
    target_tokens: int = 200
    """Chunk size handed to the chunker."""
    overlap_tokens: int = 30
    """Tokens shared by neighbouring chunks, so a sentence cut at a boundary is still found whole."""
    read_batch_docs: int = 256
    read_batch_chars: int = 32 * 2**20
    """Documents (or characters of text) read before any of them is chunked, so lines repeated across them are
    recognised as site furniture from the first batch of a new KB on; bounds the text held in memory."""
    repeated_share: float = 0.1
    """A line held by at least this share of the KB's documents is furniture (navigation, headers, footers) and
    masked before chunking; headings and code are never masked (kb/cleaning.py)."""
    repeated_least: int = 4  # ... and by at least this many documents (a KB smaller than this masks nothing)
    skip_dirs: tuple[str, ...] = ("node_modules", "__pycache__")  # never entered (nor hidden ones such as .git)
    ocr: OcrConfig = field(default_factory=OcrConfig)
    """Text from images and scanned pages."""


@dataclass
class SearchConfig:
    """Fusing BM25 and vector search."""

    candidates: int = 50  # hits taken from each of BM25 and vector search before fusion (at least k)
    rrf_k: int = 10  # reciprocal rank fusion: score = sum(w / (rrf_k + rank)); tuned by bench/fusion.py
    k: int = 5  # results `nomoat search` shows
    per_document: int = 1
    """Most chunks one document may place in the results (0 = no cap), so a long page cannot fill the top k. On
    git-doc, cap 1 vs none: recall@10 0.80 vs 0.70, recall@5 0.64 vs 0.60 (docs/benchmarks.md)."""
    common_terms: float = 0.05
    """Query phrases in more than this share of chunks are scored only in chunks holding a rarer one (kb/lexical.py:
    FTS5's own scores; 0 = the plain OR query). 100k chunks: BM25 p95 32 vs 130 ms, git-doc recall unchanged."""
    fts_weights: tuple[float, float, float] = (1.0, 0.5, 0.0)  # bm25(): chunk text, heading, file name + title
    vector_weight: float = 1.5  # the vector ranking's weight in the fusion (BM25's is 1): bench/fusion.py
    document_evidence: float = 0.5  # a document's score: its best chunk's + this x the sum of its other chunks'
    duplicate_overlap: float = 0.5
    """A hit whose word triples are this share contained in a hit above it is not shown (0 = off): the same text
    in page.html and page.txt, or an included section, fills one slot (git-doc recall@10 0.73 -> 0.80)."""


@dataclass
class AdaptConfig:
    """``nomoat kb adapt``: the query encoder tuned on pseudo queries of the KB's own chunks (adapt/train.py)."""

    time: str = "20m"  # the whole run; training gets what the queries, the check and the export leave
    held_out: float = 0.15  # share of documents never trained on: the gate judges the tuned encoder on them
    min_gain: float = 0.01  # kept only if held-out recall@5 rises by at least this much
    batch_size: int = 32
    learning_rate: float = 3e-5
    scale: float = 20.0  # logits = cosine x scale, as sentence-transformers' MultipleNegativesRankingLoss
    anchor: float = 1.0  # weight of 1 - cos(tuned, stock vector) per query: stays near the model it started from
    kinds: tuple[str, ...] = ("heading", "extract", "sentence")  # pseudo questions used (adapt/queries.py)
    max_query_tokens: int = 64
    max_queries: int = 40000
    seed: int = 0


@dataclass
class RagConfig:
    """Answering from a knowledge base (``nomoat ask``, grounded chat): retrieval, prompt budget, checks."""

    k: int = 5
    """Chunks retrieved per question; the best-ranked ones that fit ``max_source_tokens`` go into the prompt."""
    max_source_tokens: int = 600
    """Prompt tokens for sources (also capped by the context): the best ~3 chunks. On git-doc vs 1200, the bundled
    model states the fact more often (0.30 vs 0.20) in 0.68x the time (bench/answers.py --sources)."""
    min_source_tokens: int = 48  # a source trimmed to fewer tokens than this is dropped, not shown as a fragment
    max_answer_tokens: int = 160
    """Answer length when no GenerationConfig is given (answers are meant to be one or two sentences)."""
    min_cosine: float = 0.50
    """Answer only if some hit's query/chunk cosine similarity (retrieval's ``"cosine"``) reaches this. Calibrated
    for all-MiniLM-L6-v2 on Debian git-doc (6150 chunks of 200 tokens, RRF top 5): 50 answerable
    questions (bench/questions/git_doc.jsonl) and 24 unanswerable ones (off-topic, and near-topic such as
    "GitHub Actions", "Jenkins"). Max top-5 cosine: 0.44 answers 96% / abstains 71%, 0.48 -> 92% / 79%,
    0.50 -> 90% / 83%, 0.52 -> 86% / 83%. Another embedder needs its own value."""
    min_coverage: float = 1.0
    """... or some hit holds this fraction of the question's content terms (a keyword query such as
    "push timeout" can have a low cosine). Below 1.0 it let through "file my tax return" (0.67) in calibration."""
    min_support: float = 0.5
    """Fraction of a generated answer's content terms that must occur in its cited sources."""
    quote_chars: int = 200
    """Longest quote shown under a citation; longer sentences are cut to their best-matching window."""
    extract_sentences: int = 2
    """Most sentences an extractive (fallback) answer quotes."""
    history_turns: int = 2
    """Earlier user turns joined to a follow-up question ("and its default?") to form the retrieval query."""
    answer_temperature: float = 0.0
    """Answers from sources are greedy: the most likely wording is the one copied from them."""

    def generation(self) -> GenerationConfig:
        """The sampling settings of an answer from the knowledge base, when the user sets none."""
        return GenerationConfig(max_tokens=self.max_answer_tokens, temperature=self.answer_temperature)


@dataclass
class CurateConfig:
    """Building an instruction dataset from a knowledge base (``nomoat data build``)."""

    output: str = "data.jsonl"
    """Where the training rows go (``OUT.eval.jsonl`` and the card ``OUT.md`` beside it)."""
    eval_fraction: float = 0.1
    """Share of rows held out for evaluation, as whole source documents."""
    min_chunk_words: int = 6
    """Chunks with fewer words are skipped as near-empty."""
    min_support: float = 0.8
    """Share of an answer's content terms that must occur in its source chunk."""
    min_question_overlap: float = 0.3
    """Share of a question's content terms that must occur in the chunk (the question is about it)."""
    min_question_chars: int = 12
    max_question_chars: int = 300
    min_answer_chars: int = 15
    max_answer_chars: int = 1200
    max_repetition: float = 0.3
    """Highest share of repeated word trigrams in an answer (small models loop)."""
    dedup_threshold: float = 0.8
    """MinHash Jaccard similarity above which a row is a near-duplicate of an earlier one."""
    target: str = "rag"
    """Row format: "rag" (ask's own prompt with the KB's sources and a cited answer, dataset/raft.py) or "chat"
    (the question alone). RAG rows train the model for the job ask gives it (docs/benchmarks.md)."""
    rag_missing_share: float = 0.05
    """Share of RAG rows whose golden chunk is taken out; their answer says the files do not say. At 0.2 a
    30-minute loop's model declined 98 % of answerable questions (docs/benchmarks.md); ask's relevance gate
    already abstains on unanswerable ones."""
    model_budget_s: float = 600.0
    """Time for model-written pairs when no --time is given (planned and printed with an ETA before it starts)."""
    model_answer_tokens: int = 96
    model_temperature: float = 0.3
    model_chunk_chars: int = 1500
    """The model reads at most this much of a chunk (keeps each call a few seconds on a CPU)."""
    seed: int = 0


@dataclass
class TuneConfig:
    """LoRA fine-tuning (``nomoat tune``). Defaults measured on a 2-core CPU with SmolLM2-135M."""

    rank: int = 16
    lora_layers: float = 1.0
    """Share of the layers, counted from the top, that get LoRA. Below the lowest, autograd keeps no activations
    and runs no backward, so a step costs less (measured in docs/benchmarks.md, bench/tune_layers.py)."""
    alpha: float | None = None
    """LoRA scaling numerator; default 2 x rank."""
    dropout: float = 0.0
    """LoRA dropout. Off by default: it costs time on a CPU and small datasets gain little from it."""
    lr: float = 2e-4
    batch_size: int = 8
    """Rows per optimizer step (per process under torchrun)."""
    max_length: int = 2048
    """Longest row in tokens (capped at the model's context); longer rows are an error (--skip-invalid). RAG rows
    (ask's prompt with its sources) run to about 1,400 tokens."""
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    """The cosine schedule ends at this fraction of ``lr``."""
    max_grad_norm: float = 1.0
    fsdp: bool = False  # under torchrun: shard base and LoRA over the processes (a base too big for one device)
    precision: str = "auto"
    """"bf16" (autocast, frozen weights stored in bf16), "fp32", or "auto": bf16 where the hardware has bf16
    arithmetic (CUDA, or x86 with AVX512-BF16/AMX: 2.4x faster than fp32 here, docs/benchmarks.md)."""
    eval_rows: int = 200
    """Eval loss is measured on at most this many eval rows (a fixed subset, so values are comparable)."""
    evals: int = 10
    """How many times eval loss is measured over a run (plus once before the first step)."""
    eval_share: float = 0.15
    """With ``--time``, all eval passes together take at most this share of the budget: the eval rows are cut to
    a prefix whose measured cost fits (never fewer than 16), so a short run on a slow machine still trains."""
    plan_after: int = 4
    """Steps timed (after the first, a warm-up) before a ``--time`` run plans its step count."""
    min_eval_rows: int = 16
    """The fewest eval rows a time budget can cut the eval set to."""
    checkpoint_every_s: float = 120.0  # a kill loses at most this; a 135M LoRA checkpoint (56 MB) takes ~0.2 s
    sample_prompts: int = 3
    """Eval prompts answered by the base and the tuned model in the run's summary."""
    sample_tokens: int = 64
    seed: int = 0


EXPORT_FORMATS = ("gguf", "adapter", "hf", "ollama", "all")
GGUF_QUANTS = ("f16", "q8_0", "q4_0", "q4_k_m")


@dataclass
class ExportConfig:
    """``nomoat export``: what is written by default."""

    format: str = "gguf"
    """gguf (merged, llama.cpp), adapter (LoRA GGUF), hf (safetensors folder), ollama (GGUF + Modelfile), all."""
    quant: str = "q8_0"
    """GGUF weight type: q8_0 keeps the tuned model's perplexity within 0.2 % of f16 (docs/benchmarks.md)."""


@dataclass
class EvalConfig:
    """``nomoat eval``: which questions, and how every configuration answers them."""

    limit: int = 30
    """Held-out questions asked (a seeded sample of the eval split)."""
    seed: int = 0
    """Which questions, the bootstrap resamples and the sampling seed: the same seed gives the same table."""
    max_tokens: int = 96
    """Longest answer of any configuration (greedy decoding)."""


@dataclass
class LearnConfig:
    """``nomoat learn FOLDER``: ingest, build data, tune, export and eval in one time budget."""

    time: str = "2h"  # the whole budget: ingest takes what it needs, the rest is split by the shares below
    adapt_share: float = 0.0
    """Share of the time left after ingest for ``nomoat kb adapt``; 0 = off: its gains on pseudo questions have
    not yet carried over to hand-written ones (docs/benchmarks.md)."""
    data_share: float = 0.2
    """Share for model-written pairs (``data build --time``), spent only where the files' own pairs are fewer than
    twice the rows the tune can take at ``row_seconds`` each (on PostgreSQL's manual they were 33x the model's)."""
    row_seconds: float = 1.4  # a tune step's time per RAG row on 2 cores (58 steps of 8 rows in 11 minutes)
    tune_share: float = 0.55  # share for ``nomoat tune --time`` (the rest, less export, goes to eval)
    tune_lora_layers: float = 0.33
    tune_lr: float = 1e-3
    """A learn loop's tune has minutes, not hours: LoRA on the top third of the layers takes 1.9x the tokens/s,
    and at 1e-3 the eval loss after six steps was 0.79x that of 2e-4 (bench/tune_layers.py, docs/benchmarks.md)."""
    export_s: float = 120.0  # planned time for the export with its parity check (the bundled model's: ~1 minute)
    export_quants: tuple[str, ...] = ("q8_0",)
    """GGUF types tried in order, fastest first: the first to pass its parity check is delivered. q4_0 prefills
    faster but is allowed a 15 % perplexity gap, too much for a model this small (docs/benchmarks.md)."""


@dataclass
class ServeConfig:
    """``nomoat serve``: where it listens and the limits every request is held to (safe by default)."""

    host: str = "127.0.0.1"
    """Address to bind. Anything but loopback requires an API key."""
    port: int = 8000
    api_key: str | None = None
    """Bearer key clients must send; ``nomoat serve`` makes one up if none (:mod:`nomoat.serving.auth`)."""
    api_key_file: str | None = None  # the key from a file (kept out of ``ps``, unlike api_key on the command line)
    no_auth: bool = False  # serve without any key: only on a loopback address, and only when asked for
    allow_hosts: tuple[str, ...] = ()
    """Host header values accepted besides localhost, 127.0.0.1, [::1] and the bound host ('*' = any)."""
    cors_origins: tuple[str, ...] = ()
    """Browser origins allowed to call the API cross-site; none by default (CORS off)."""
    kb: str = "default"
    """Knowledge base behind the model id ``nomoat-rag``; always served."""
    kbs: tuple[str, ...] = ()
    """Other knowledge bases served (as ``kb:<name>``); no other one under NOMOAT_HOME is reachable."""
    max_body_bytes: int = 2**20
    """Largest request body; bigger ones get 413 while being read, before they are buffered."""
    parallel: int | None = None
    """Generations at once. The local model decodes them together in one llama.cpp context (continuous batching,
    nomoat.llm.batching; each has the full --ctx, so its KV cache is this many times one context); a backend gets
    them as concurrent requests. None: ``local_parallel`` or ``backend_parallel``."""
    local_parallel: int = 1
    """Local default: one at a time, no batch engine, until a quiet run measures batching faster (on 2 shared cores
    8 gave 1.13x the tokens/s, docs/benchmarks.md)."""
    backend_parallel: int = 8
    """Default with ``backend_url``: the engine behind batches concurrent requests itself."""
    max_queue: int = 8
    """Requests that may wait while ``parallel`` are generating; one more gets 429."""
    max_tokens: int = 2048
    """Largest ``max_tokens`` a request may ask for (also capped by what the context has left)."""
    max_messages: int = 256
    max_stop: int = 4
    """Most stop strings per request (OpenAI's limit)."""
    max_embedding_inputs: int = 256
    max_connections: int = 64
    """Open connections served at once. A new one past it first closes the oldest connection that is only waiting
    for its client (idle, or a request head or body not yet sent); when none is, it gets 503."""
    header_timeout: float = 10.0  # seconds to send a request's headers (from connecting, or from its first byte)
    body_timeout: float = 30.0  # seconds to send the whole body, once the headers are in
    keep_alive: float = 5.0  # seconds an idle keep-alive connection stays open between requests
    backend_url: str | None = None
    """An OpenAI-compatible server that generates instead of the local model (``http(s)://host:port/v1``);
    retrieval, prompts, the answer check and embeddings stay here. Its key: ``$NOMOAT_BACKEND_KEY``."""
    backend_model: str | None = None
    """The backend's model id; may be left out when the backend serves exactly one."""
    backend_timeout: float = 120.0
    """Seconds the backend may stay silent (before its first token too) before the request fails with 504."""
    backend_connect_timeout: float = 5.0  # seconds to open a connection to the backend


@dataclass
class PolicyConfig:
    """The owner's answer policy (``--policy FILE``, else ``policy.toml`` in NOMOAT_HOME): what a file leaves out."""

    file: str = "policy.toml"
    """The workspace policy, read from NOMOAT_HOME when ``--policy`` is not given and it exists."""
    refusal: str = "I can't help with that here."
    """What a refused question or a withdrawn answer says, unless the file sets ``refusal``."""
    hold_chars: int = 400
    """A streamed answer is released a sentence at a time; a sentence longer than this is released up to its last
    space (the last ``hold_chars // 5`` characters stay held), so a run-on answer cannot stall the stream."""


def parse_duration(text: str) -> float:
    """``"90s"``, ``"30m"``, ``"3h"``, ``"1h30m"`` or plain seconds → seconds. Raises ValueError."""
    import re

    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not text or not parts or not any(parts.groups()):
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 30m, 3h, 1h30m)")
    h, m, s = (int(g or 0) for g in parts.groups())
    return float(h * 3600 + m * 60 + s)
