"""The Python API: one plain function per command, taking the command's flags as arguments (``--max-tokens`` is
``max_tokens``). The CLI calls these same functions, so a script and a shell do exactly the same thing.

An argument left at ``None`` takes its default from the stage's dataclass in :mod:`nomoat.config`, the one place
defaults live. Stages are imported inside each function: ``import nomoat`` loads neither torch nor llama.cpp.
Mistakes raise :class:`nomoat.errors.UserError` with a one-line message.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from nomoat.config import DEFAULT_KB, DEFAULT_MODEL

if TYPE_CHECKING:
    from pathlib import Path

    from nomoat.answer.rag import Answer
    from nomoat.kb.embeddings import Embedder
    from nomoat.kb.retrieval import Hit
    from nomoat.policy.rules import Policy


def chat(
    message: str | None = None,
    *,
    model: str | Path | None = None,
    kb: str | None = None,
    no_kb: bool = False,
    system: str | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    ctx: int | None = None,
    threads: int | None = None,
    history: list[dict[str, str]] | None = None,
    on_text: Callable[[str], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
    policy: str | Path | Policy | None = None,
) -> dict[str, Any] | None:
    """``nomoat chat``: answer ``message`` (``--once``), or without one run the interactive loop on stdin/stdout.

    Answers come from knowledge base ``kb``, or from the default one when it exists, unless ``no_kb``: then the
    model answers alone. A grounded answer is :func:`ask`'s; a plain one ``{"answer", "model", "usage",
    "finish_reason", "notices"}``. ``on_text`` receives the answer as it streams. ``model`` None: the one
    ``nomoat learn`` made for the knowledge base, else the bundled one. ``policy`` is the owner's answer policy
    file (default: ``policy.toml`` in NOMOAT_HOME when it exists); what it did is listed under ``"policy"``.
    """
    from nomoat.answer import chat as stage
    from nomoat.config import ChatConfig
    from nomoat.policy.rules import find
    from nomoat.settings import runtime_settings

    rules = find(policy)

    model = _model_for(model, None if no_kb else kb or DEFAULT_KB)
    overrides = {"max_tokens": max_tokens, "temperature": temperature, "seed": seed}
    runtime = runtime_settings(ctx, threads)
    if message is None:
        stage.interactive(model=model, kb=kb, use_kb=not no_kb, config=ChatConfig(system=system),
                          overrides=overrides, runtime=runtime, policy=rules)  # fmt: skip
        return None
    return stage.run(message, model=model, kb=kb, use_kb=not no_kb, system=system, history=history,
                     overrides=overrides, runtime=runtime, on_text=on_text, on_notice=on_notice,
                     policy=rules)  # fmt: skip


def models(paths: Sequence[str | Path] = ()) -> list[dict[str, Any]]:
    """``nomoat models``: the models you can run (or those at ``paths``): name, architecture, quant, context, size."""
    from nomoat.llm import models as stage

    return [stage.describe(stage.resolve(p)) for p in paths] if paths else stage.available()


def ingest(
    paths: str | Path | Sequence[str | Path], *, kb: str = DEFAULT_KB, progress: bool = False,
    embedder: Embedder | None = None, ocr: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """``nomoat ingest``: bring knowledge base ``kb`` up to date with the files under ``paths``.

    Returns ``{"added", "updated", "unchanged", "removed", "failed": [{"path", "error"}], "chunks", "skipped",
    "incomplete": [{"path", "error"}]}``. ``ocr`` names the engine for images and scanned pages ("rapidocr",
    "tesseract", or "off"; UserError when it is not installed). ``embedder`` replaces the KB's (tests pass a
    fake); ``progress`` shows a bar on a terminal's stderr.
    """
    from nomoat.config import IngestConfig
    from nomoat.kb import ingest as stage

    config = IngestConfig()
    if ocr is not None:
        from nomoat.kb.readers.ocr import check_engine

        check_engine(ocr)
        config.ocr.engine = ocr
    return stage.run(paths, kb, embedder=embedder, progress=progress, config=config)


def search(query: str, *, kb: str = DEFAULT_KB, k: int | None = None, embedder: Embedder | None = None) -> list[Hit]:
    """``nomoat search``: the ``k`` best chunks, ``[{"path", "location", "score", "text", "chunk_id", "cosine"}]``."""
    from nomoat.kb import retrieval

    return retrieval.search(query, kb, k, embedder=embedder)


def ask(
    question: str,
    *,
    kb: str = DEFAULT_KB,
    model: str | Path | None = None,
    k: int | None = None,
    max_tokens: int | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    ctx: int | None = None,
    threads: int | None = None,
    policy: str | Path | Policy | None = None,
) -> Answer:
    """``nomoat ask``: an answer from knowledge base ``kb`` with checked citations:
    ``{"answer", "grounded", "citations": [{"n", "path", "location", "quote", "chunk_id"}], "model", "mode"}``.
    ``model`` None: the one ``nomoat learn`` made for ``kb``, else the bundled one. Under the owner's ``policy``
    (default: NOMOAT_HOME's ``policy.toml``) mode ``"refused"`` names its rule."""
    from nomoat.answer import rag
    from nomoat.config import RagConfig
    from nomoat.policy.rules import find
    from nomoat.settings import generation_settings, runtime_settings

    gen = generation_settings(RagConfig().generation(), max_tokens=max_tokens, temperature=temperature, seed=seed)
    return rag.ask(question, kb, model=_model_for(model, kb), k=k, gen=gen, runtime=runtime_settings(ctx, threads),
                   policy=find(policy))  # fmt: skip


def build_dataset(
    *,
    kb: str = DEFAULT_KB,
    output: str | Path | None = None,
    max: int | None = None,
    time: str | float | None = None,
    eval_fraction: float | None = None,
    model: str | Path = DEFAULT_MODEL,
    no_model: bool = False,
    target: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """``nomoat data build``: a grounded, deduplicated, PII-scrubbed chat dataset from knowledge base ``kb``.

    Writes ``output`` (default ``data.jsonl``), its eval split and a dataset card; ``max`` bounds the rows (and the
    model's work), ``time`` (``"30m"`` or seconds) the model's share of the work; ``no_model`` keeps only
    extractive pairs. ``target`` "rag" (``--for rag``, the default) writes rows in ``ask``'s own prompt format with
    the KB's sources, "chat" the bare question and answer.
    """
    from nomoat.dataset import curate

    return curate.build(kb, output, max_pairs=max, time_budget=_seconds(time, "--time"), eval_fraction=eval_fraction,
                        model=model, use_model=not no_model, target=target, progress=progress)  # fmt: skip


def import_dataset(file: str | Path, *, output: str | Path | None = None) -> dict[str, Any]:
    """``nomoat data import``: an OpenAI/ShareGPT/Alpaca JSONL file as nomoat's chat rows (default output:
    ``FILE.nomoat.jsonl``). Returns ``{"rows", "bad": [{"line", "error"}], "formats", "output"}``."""
    from pathlib import Path

    from nomoat.dataset import formats

    source = Path(file)
    return formats.import_file(source, output or source.with_name(source.stem + ".nomoat.jsonl"))


def dataset_stats(file: str | Path) -> dict[str, Any]:
    """``nomoat data stats``: rows, turns, lengths, sources and generators of a chat dataset."""
    from nomoat.dataset import formats

    return formats.stats(file)


def tune(
    data: str | Path | None = None,
    *,
    model: str | Path = DEFAULT_MODEL,
    time: str | float | None = None,
    steps: int | None = None,
    epochs: float | None = None,
    rank: int | None = None,
    lora_layers: float | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    max_length: int | None = None,
    precision: str | None = None,
    seed: int | None = None,
    fsdp: bool | None = None,
    eval_data: str | Path | None = None,
    output: str | Path | None = None,
    resume: str | Path | None = None,
    skip_invalid: bool = False,
    threads: int | None = None,
    progress: bool = False,
    on_step: Callable[[dict[str, Any]], Any] | None = None,
) -> dict[str, Any]:
    """``nomoat tune``: a LoRA adapter trained on chat dataset ``data``; returns the run's summary.

    Stops after ``time`` (``"20m"``), ``steps`` or ``epochs`` (default one epoch); ``resume`` continues a stopped
    run exactly. ``fsdp`` (under ``torchrun``) shards the base over the processes. ``on_step(record)`` is called
    after every step; returning True stops the run cleanly.
    """
    from nomoat.finetune import tune as stage

    overrides = {"rank": rank, "lora_layers": lora_layers, "lr": lr, "batch_size": batch_size,
                 "max_length": max_length, "precision": precision, "seed": seed, "fsdp": fsdp}  # fmt: skip
    return stage.run(data, model=model, time=time, steps=steps, epochs=epochs, output=output, resume=resume,
                     eval_data=eval_data, threads=threads, skip_invalid=skip_invalid, progress=progress,
                     on_step=on_step, **{k: v for k, v in overrides.items() if v is not None})  # fmt: skip


def export(run: str | Path, *, format: str | None = None, quant: str | None = None,
           output: str | Path | None = None) -> dict[str, Any]:  # fmt: skip
    """``nomoat export``: a run's model as GGUF / LoRA GGUF / HF folder / Ollama files, each parity-checked.
    Returns ``{"run", "files": [{"format", "path", "sha256", "bytes", ...}]}``."""
    from nomoat.exporting import export as stage

    return stage.run(run, format=format, quant=quant, output=output)


def evaluate(
    run: str | Path | None = None,
    *,
    model: str | Path | None = None,
    kb: str = DEFAULT_KB,
    no_kb: bool = False,
    questions: str | Path | None = None,
    limit: int | None = None,
    seed: int | None = None,
    output: str | Path | None = None,
    progress: bool = False,
    policy: str | Path | Policy | None = None,
) -> dict[str, Any]:
    """``nomoat eval``: base vs tuned vs each with retrieval on held-out questions; writes an HTML report.
    Returns ``{"table", "gains", "disagreements", "report", ...}``. Under a ``policy`` (default: NOMOAT_HOME's
    ``policy.toml``) each model also answers the shipped red-team set: ``"redteam"`` and the table's policy columns."""
    from nomoat.evaluation import evaluate as stage
    from nomoat.policy.rules import find

    return stage.run(run, model=model, kb=None if no_kb else kb, questions=questions, limit=limit, seed=seed,
                     output=output, progress=progress, policy=find(policy))  # fmt: skip


def serve(
    *,
    host: str | None = None,
    port: int | None = None,
    api_key: str | None = None,
    api_key_file: str | None = None,
    no_auth: bool = False,
    kb: str | Sequence[str] | None = None,
    allow_host: Sequence[str] = (),
    cors_origin: Sequence[str] = (),
    max_queue: int | None = None,
    parallel: int | None = None,
    model: str | Path | None = None,
    ctx: int | None = None,
    threads: int | None = None,
    on_ready: Callable[[str], None] | None = None,
    policy: str | Path | Policy | None = None,
    backend_url: str | None = None,
    backend_model: str | None = None,
    backend_timeout: float | None = None,
) -> None:
    """``nomoat serve``: the OpenAI-compatible API and web UI, until interrupted. ``on_ready(url)`` is called once
    the model is loaded and the port is open. Every answer is held to the owner's ``policy`` (default:
    NOMOAT_HOME's ``policy.toml`` when it exists), streamed ones too; refusals are logged with their rule.
    Requests need a key: ``api_key_file``, ``api_key``, ``$NOMOAT_API_KEY``, else a random token (in the URL,
    and in ``$NOMOAT_HOME/serve.token``); ``no_auth`` for none (loopback only). ``kb``: the knowledge base(s)
    served, the first behind ``nomoat-rag``. ``backend_url``: generate with that OpenAI-compatible server
    (``backend_model`` on it; its key from ``$NOMOAT_BACKEND_KEY``) instead of a local model."""
    from dataclasses import replace

    from nomoat import serving
    from nomoat.config import ServeConfig
    from nomoat.errors import UserError
    from nomoat.policy.rules import find
    from nomoat.settings import runtime_settings

    rules = find(policy)  # a bad policy file is a startup error

    kbs = [kb] if isinstance(kb, str) else list(kb or [])
    given = {"host": host, "port": port, "api_key": api_key, "api_key_file": api_key_file, "max_queue": max_queue,
             "parallel": parallel, "kb": kbs[0] if kbs else None, "kbs": tuple(kbs[1:]), "backend_url": backend_url,
             "backend_model": backend_model, "backend_timeout": backend_timeout}  # fmt: skip
    config = replace(ServeConfig(), no_auth=no_auth, **{k: v for k, v in given.items() if v is not None})
    config.allow_hosts, config.cors_origins = tuple(allow_host), tuple(cors_origin)
    if backend_url is not None and model is not None:
        raise UserError("--model and --backend-url exclude each other: the backend's model is --backend-model")
    chosen = None if backend_url is not None else _model_for(model, config.kb)
    serving.run(config, model=chosen, runtime=runtime_settings(ctx, threads), on_ready=on_ready, policy=rules)


def learn(
    folders: Sequence[str | Path] = (),
    *,
    kb: str = DEFAULT_KB,
    time: str | float | None = None,
    model: str | Path = DEFAULT_MODEL,
    resume: bool = False,
    restart: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """``nomoat learn FOLDER``: ingest -> kb adapt -> data build -> tune -> export -> eval in one ``time`` budget
    (default ``"2h"``), resumable (``resume``); afterwards ask/chat/serve on ``kb`` use the learned model. Returns
    ``{"learned_model", "report", "gain", "stages", ...}``."""
    from nomoat.pipeline import loop

    return loop.run(folders, kb=kb, time=time, model=model, resume=resume, restart=restart, progress=progress)


def list_kbs() -> list[dict[str, Any]]:
    """``nomoat kb list``: every knowledge base, ``[{"name", "documents", "chunks", "path", "bytes"}]``."""
    from nomoat.kb import catalog

    return catalog.list_kbs()


def kb_info(name: str = DEFAULT_KB) -> dict[str, Any]:
    """``nomoat kb info``: one knowledge base's counts, failures, embedder and schema."""
    from nomoat.kb import catalog

    return catalog.kb_info(name)


def adapt_kb(
    name: str = DEFAULT_KB, *, time: str | float | None = None, undo: bool = False, progress: bool = False
) -> dict[str, Any]:
    """``nomoat kb adapt``: tune the KB's query encoder on pseudo questions of its own chunks within ``time``
    (default ``AdaptConfig.time``), kept only if held-out recall@5 improves; ``undo`` returns to the stock one.
    Returns ``{"kept", "held_out": {"before", "after"}, "encoder", ...}`` (or ``{"undone"}``)."""
    from nomoat.adapt.run import adapt

    return adapt(name, time_budget=time, undo=undo, progress=progress)


def remove_kb(name: str) -> str:
    """``nomoat kb remove``: delete a knowledge base; returns the path removed."""
    from nomoat.kb import catalog

    return catalog.remove_kb(name)


def _model_for(model: str | Path | None, kb: str | None) -> str | Path:
    """The model to answer with: the one given, else the one ``nomoat learn`` recorded for ``kb``, else the
    bundled one (``--model default`` always means the bundled one)."""
    if model is not None:
        return model
    from nomoat.kb import catalog

    return catalog.learned_model(kb) or DEFAULT_MODEL


def _seconds(value: str | float | None, flag: str) -> float | None:
    from nomoat.config import parse_duration
    from nomoat.errors import UserError

    if value is None or not isinstance(value, str):
        return value
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise UserError(f"{flag}: {exc}") from None
