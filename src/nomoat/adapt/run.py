"""``nomoat kb adapt``: pseudo queries -> held-out split -> tune the query encoder -> export -> keep only if better.

Nothing in the knowledge base changes until the end: the new encoder is written to its own folder (named by its
hash), then one transaction records it. A run killed at any moment leaves the KB as it was, searchable, with at
most an unrecorded folder that the next run removes; ``--undo`` forgets the record and the folder.
"""

from __future__ import annotations

import datetime
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from nomoat.adapt.queries import Query, pseudo_queries
from nomoat.config import DEFAULT_KB, AdaptConfig, parse_duration
from nomoat.errors import UserError
from nomoat.kb import queryenc, store
from nomoat.kb.embeddings import DEFAULT_NAME, Embedder, load_embedder, minilm_dir

MIN_DOCUMENTS = 4
"""Fewer documents leave nothing to hold out and nothing to tell apart."""
RESERVE_S = 45.0
"""Time kept from the budget for the export to ONNX int8 and the held-out check (about 30 s for MiniLM here)."""


def adapt(
    kb: str = DEFAULT_KB,
    *,
    time_budget: str | float | None = None,
    undo: bool = False,
    base_dir: Path | None = None,
    embedder: Embedder | None = None,
    progress: bool = False,
    config: AdaptConfig | None = None,
) -> dict[str, Any]:
    """Adapt ``kb``'s query encoder within ``time_budget`` (seconds or "20m"; default ``AdaptConfig.time``).

    ``base_dir`` and ``embedder`` (the model folder the KB's vectors came from, and that embedder) are for tests:
    by default the stock MiniLM. Returns ``{"kb", "kept", "held_out": {"before", "after"}, "queries", ...}``.
    Raises UserError for an unknown KB, one without vectors, one too small, or one embedded by another model.
    """
    config = config or AdaptConfig()
    with store.connect(kb) as conn, store.kb_lock(kb):  # connect first: an unknown KB gets no lock file
        if undo:
            return _undo(kb, conn)
        recorded = store.embedder_of(conn)
        if recorded is None:
            raise UserError(f"knowledge base '{kb}' has no vectors yet: ingest files first")
        if base_dir is None and recorded[0] != DEFAULT_NAME:
            raise UserError(f"kb adapt tunes {DEFAULT_NAME}; knowledge base '{kb}' was embedded with {recorded[0]}")
        seconds = _budget(time_budget if time_budget is not None else config.time)
        started = time.perf_counter()
        queryenc.remove_unused(kb, _recorded_folder(kb, conn))  # what a killed run may have left
        ids, vectors = store.all_vectors(conn)
        chunks = store.all_chunks_to_embed(conn)
        state = store.state(conn)
    # The lock is released while training: search, ask and serve read the KB as usual meanwhile, and a concurrent
    # ingest is detected at the end (the KB's state changed) rather than blocked for twenty minutes.
    documents = [path for _, path, *_ in chunks]  # row i of vectors is chunk i (both by id; store.verify)
    if len(set(documents)) < MIN_DOCUMENTS:
        raise UserError(f"knowledge base '{kb}' has {len(set(documents))} documents; kb adapt needs {MIN_DOCUMENTS}")
    held, train_q, check_q = _questions(chunks, documents, config)
    if len(train_q) < 10 * config.batch_size or len(check_q) < 20:
        raise UserError(f"knowledge base '{kb}' yields too few questions to adapt to ({len(train_q)} for training)")

    from nomoat.adapt import train as trainer

    base = base_dir or minilm_dir()
    answers = [q.document for q in check_q]

    def measure(encoder: Embedder) -> dict[str, float]:
        return trainer.rank_documents(encoder.embed([q.text for q in check_q]), vectors, documents, answers)

    before = measure(embedder or load_embedder(recorded[0]))
    keep_rows = np.array([d not in held for d in documents])
    rows = {cid: i for i, cid in enumerate(np.asarray(ids)[keep_rows].tolist())}
    left = seconds - (time.perf_counter() - started) - min(RESERVE_S, 0.25 * seconds)
    if left < min(10.0, 0.25 * seconds):
        raise UserError(f"--time {seconds:.0f}s leaves no time to train (the preparation took the budget)")
    model, stats = trainer.train(
        base, [q.text for q in train_q], [rows[q.chunk_id] for q in train_q], vectors[keep_rows],
        [d for d, k in zip(documents, keep_rows, strict=True) if k], left, config, progress,
    )  # fmt: skip
    _say(progress, "adapt: exporting the tuned encoder to ONNX int8 ...")
    tuned, sha, staging = _export(kb, recorded[0], trainer, model, base)
    try:
        after = measure(tuned)
        kept = after["recall@5"] >= before["recall@5"] + config.min_gain
        result = {"kept": kept, "held_out": {"before": before, "after": after}, "encoder": None}
        if kept:
            rec = {
                "name": tuned.name,
                "sha256": sha,
                "for": recorded[0],
                "made_at": _now(),
                "held_out": result["held_out"],
            }
            result["encoder"] = str(_install(kb, state, staging, rec))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    kinds = dict(Counter(q.kind for q in train_q))
    result.update(kb=kb, queries={"train": len(train_q), "held_out": len(check_q), "kinds": kinds},
                  training=stats, seconds=round(time.perf_counter() - started, 1))  # fmt: skip
    return result


def _export(kb: str, for_name: str, trainer: Any, model: Any, base: Path) -> tuple[Embedder, str, Path]:
    """The tuned encoder as an ONNX folder next to the KB (named ``.query-partial-*`` until it is installed, so
    the next run removes it if this one is killed), loaded, with its sha256."""
    import hashlib
    import tempfile

    from nomoat import paths
    from nomoat.kb.embeddings import OnnxEmbedder

    staging = Path(tempfile.mkdtemp(prefix=f"{kb}.query-partial-", dir=paths.kb_dir()))
    trainer.save(model, base, staging)
    sha = hashlib.sha256((staging / "model.onnx").read_bytes()).hexdigest()
    return OnnxEmbedder(staging / "model.onnx", staging, name=f"{for_name}+query-{sha[:16]}"), sha, staging


def _install(kb: str, state: str, staging: Path, rec: dict[str, Any]) -> Path:
    """Move the encoder to its final folder and record it, in that order: a record never names a missing file."""
    from nomoat import paths

    with store.connect(kb) as conn, store.kb_lock(kb):
        if store.state(conn) != state:
            raise UserError(f"knowledge base '{kb}' changed while adapting; run `nomoat kb adapt` again")
        final = queryenc.folder(kb, rec["sha256"])
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        paths.fsync_dir(final.parent)
        with store.transaction(conn):
            queryenc.set_record(conn, rec)
        queryenc.remove_unused(kb, final)
    return final


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _undo(kb: str, conn: store.Connection) -> dict[str, Any]:
    had = queryenc.record(conn) is not None
    with store.transaction(conn):
        queryenc.clear(conn)
    queryenc.remove_unused(kb)
    return {"kb": kb, "undone": had}


def _recorded_folder(kb: str, conn: store.Connection) -> Path | None:
    rec = queryenc.record(conn)
    return queryenc.folder(kb, rec["sha256"]) if rec else None


def _questions(chunks: list, documents: list[str], config: AdaptConfig) -> tuple[set[str], list[Query], list[Query]]:
    """The held-out documents, the training questions (other documents', shuffled) and the held-out ones."""
    rng = random.Random(config.seed)
    names = sorted(set(documents))
    held = set(rng.sample(names, min(max(1, round(len(names) * config.held_out)), len(names) - 1)))
    queries = [q for q in pseudo_queries(chunks, rng) if q.kind in config.kinds]
    train_q = [q for q in queries if q.document not in held]
    rng.shuffle(train_q)
    return held, train_q[: config.max_queries], [q for q in queries if q.document in held][:1000]


def _budget(value: str | float) -> float:
    try:
        seconds = parse_duration(value) if isinstance(value, str) else float(value)
    except ValueError as exc:
        raise UserError(f"--time: {exc}") from None
    if seconds <= 0:
        raise UserError("--time must be positive")
    return seconds


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def format_adapt(result: dict[str, Any]) -> str:
    """What ``nomoat kb adapt`` prints: the held-out numbers and whether the encoder was kept."""
    if "undone" in result:
        return f"{result['kb']}: {'back to the stock query encoder' if result['undone'] else 'was not adapted'}"
    b, a = result["held_out"]["before"], result["held_out"]["after"]
    q, t = result["queries"], result["training"]
    lines = [
        f"{result['kb']}: {q['train']} pseudo questions, {t['steps']} steps in {t['seconds']:.0f} s "
        f"(loss {t['loss_start']} -> {t['loss_end']})",
        f"held-out documents ({q['held_out']} questions): recall@1 {b['recall@1']:.2f} -> {a['recall@1']:.2f}, "
        f"recall@5 {b['recall@5']:.2f} -> {a['recall@5']:.2f}, MRR {b['mrr']:.3f} -> {a['mrr']:.3f}",
    ]
    if result["kept"]:
        lines.append(f"kept: search in '{result['kb']}' now embeds questions with {result['encoder']}")
    else:
        lines.append("not kept: it did not beat the stock encoder on held-out documents; the KB is unchanged")
    return "\n".join(lines)
