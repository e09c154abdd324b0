"""The ``nomoat`` command: a table of commands, each a thin adapter from flags to a stage function.

No logic lives here. Stage modules are imported only when their command runs, so ``nomoat --help`` is fast.
User mistakes (:class:`nomoat.errors.UserError`) print one line and exit 1; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from nomoat.errors import UserError

EPILOG = """examples:
  nomoat chat --once "What is the capital of France?"   one answer from the bundled model
  nomoat chat                                           interactive chat (/exit to quit)
  nomoat models                                         models you can run, with size and format
  nomoat ingest ~/notes                                 build or sync the knowledge base from your files
  nomoat search "how do I undo a commit" -k 3           find the passages that answer it
  nomoat ask "how do I undo a commit?"                  an answer from your files, with checked citations
  nomoat chat --no-kb                                   plain chat, ignoring the knowledge base
  nomoat data build -o mydata.jsonl --time 30m          a curated dataset from the knowledge base
  nomoat tune mydata.jsonl --time 20m                   a LoRA adapter trained on it (Ctrl-C stops cleanly)
  nomoat tune --resume RUN                              continue a stopped run exactly
  nomoat export RUN --format all                        GGUF (checked against torch), HF folder, Modelfile
  nomoat chat --model RUN                               chat with the tuned model (its newest GGUF export)
  nomoat serve                                          OpenAI-compatible API + web UI at http://127.0.0.1:8000/

state lives in $NOMOAT_HOME (default: your user data folder); --model takes 'default', a .gguf file or a folder."""


def _emit(args: argparse.Namespace, result: Any, human: Callable[[Any], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(result, ensure_ascii=False, indent=None if getattr(args, "compact", False) else 2))
    else:
        text = human(result)
        if text:
            print(text)


def _gen_config(args: argparse.Namespace) -> Any:
    """The user's sampling flags, or None when none was given (each stage then uses its own defaults)."""
    from nomoat.config import GenerationConfig

    given = {n: getattr(args, n, None) for n in ("max_tokens", "temperature", "seed")}
    given = {n: v for n, v in given.items() if v is not None}
    if not given:
        return None
    gen = GenerationConfig(**given)
    if gen.max_tokens < 1:
        raise UserError("--max-tokens must be at least 1")
    if not 0 <= gen.temperature <= 5:
        raise UserError("--temperature must be between 0 and 5")
    return gen


def _runtime_config(args: argparse.Namespace) -> Any:
    from nomoat.config import RuntimeConfig

    config = RuntimeConfig()
    if args.ctx is not None:
        if args.ctx < 256:
            raise UserError("--ctx must be at least 256 tokens")
        config.n_ctx = args.ctx
    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be at least 1")
        config.n_threads = args.threads
    return config


# -- commands --------------------------------------------------------------------------------------
def cmd_chat(args: argparse.Namespace) -> None:
    from nomoat import chat
    from nomoat.config import ChatConfig

    gen, runtime = _gen_config(args), _runtime_config(args)
    if args.no_kb and args.kb:
        raise UserError("--kb and --no-kb contradict each other; use one")
    kb = None if args.no_kb else chat.grounding_kb(args.kb or "default", explicit=args.kb is not None)
    if args.once is None:
        if args.json:
            raise UserError("--json needs --once MESSAGE (interactive chat prints text)")
        config = ChatConfig(system=args.system)
        chat.interactive(model=args.model, kb=kb, config=config, gen=gen, runtime=runtime)
        return
    message = sys.stdin.read() if args.once == "-" else args.once
    if kb:
        _ask(args, message, kb, gen, runtime)
        return

    def stream(text: str) -> None:
        print(text, end="", flush=True)

    def notice(text: str) -> None:
        print(f"({text})", file=sys.stderr)

    result = chat.run(
        message,
        model=args.model,
        system=args.system,
        gen=gen,
        runtime=runtime,
        on_text=None if args.json else stream,
        on_notice=notice,
    )
    if args.json:
        _emit(args, result, str)
    else:
        print()


def cmd_ask(args: argparse.Namespace) -> None:
    question = sys.stdin.read() if args.question == "-" else args.question
    _ask(args, question, args.kb, _gen_config(args), _runtime_config(args))


def _ask(args: argparse.Namespace, question: str, kb: str, gen: Any, runtime: Any) -> None:
    from nomoat import rag

    k = getattr(args, "k", None)
    result = rag.ask(question, kb, model=args.model, k=k, gen=gen, runtime=runtime)
    _emit(args, result, rag.format_answer)


def cmd_data(args: argparse.Namespace) -> None:
    if args.action == "build":
        from nomoat import curate
        from nomoat.config import parse_duration

        try:
            budget = parse_duration(args.time) if args.time else None
        except ValueError as exc:
            raise UserError(f"--time: {exc}") from None
        summary = curate.build(
            args.kb,
            args.output or "data.jsonl",
            max_pairs=args.max,
            time_budget=budget,
            eval_fraction=args.eval_fraction,
            model=args.model,
            use_model=not args.no_model,
            progress=not args.json,
        )
        _emit(args, summary, _format_data_build)
        return
    from nomoat import datasets

    if not args.file:
        raise UserError(f"name the dataset file: nomoat data {args.action} FILE")
    if args.action == "import":
        output = args.output or str(_imported_name(args.file))
        _emit(args, datasets.import_file(args.file, output), _format_import)
    else:
        _emit(args, datasets.stats(args.file), lambda s: "\n".join(f"{k}: {v}" for k, v in s.items()))


def _imported_name(path: str) -> Any:
    from pathlib import Path

    p = Path(path)
    return p.with_name(p.stem + ".nomoat.jsonl")


def _format_data_build(s: dict[str, Any]) -> str:
    removed = ", ".join(f"{k} {v}" for k, v in s["removed"].items()) or "none"
    pii = ", ".join(f"{k} {v}" for k, v in s["pii"].items()) or "none"
    return (
        f"{s['train']} training rows -> {s['output']}\n{s['eval']} eval rows -> {s['eval_output']}\n"
        f"dataset card -> {s['card']}\nfrom {s['chunks']} chunks of {s['sources']} documents in {s['seconds']} s; "
        f"removed: {removed}; personal data replaced: {pii}"
    )


def _format_import(r: dict[str, Any]) -> str:
    lines = [f"{r['rows']} rows -> {r['output']} (formats: {r['formats']})"]
    lines += [f"  line {b['line']}: {b['error']}" for b in r["bad"]]
    return "\n".join(lines)


def cmd_tune(args: argparse.Namespace) -> None:
    from nomoat import tune

    if args.resume and args.data:
        raise UserError("--resume continues a run on its own data: drop the dataset argument")
    overrides = {n: getattr(args, n) for n in ("rank", "lr", "batch_size", "max_length", "precision", "seed")}
    given = {n: v for n, v in overrides.items() if v is not None}
    summary = tune.run(
        args.data,
        model=args.model,
        time=args.time,
        steps=args.steps,
        epochs=args.epochs,
        output=args.output,
        resume=args.resume,
        eval_data=args.eval,
        threads=args.threads,
        skip_invalid=args.skip_invalid,
        progress=not args.json,
        **given,
    )
    _emit(args, summary, tune.format_summary)


def cmd_export(args: argparse.Namespace) -> None:
    from nomoat import export

    result = export.run(args.run, format=args.format, quant=args.quant, output=args.output)
    _emit(args, result, export.format_export)


def cmd_eval(args: argparse.Namespace) -> None:
    from nomoat import evaluate

    kb = None if args.no_kb else args.kb
    result = evaluate.run(args.run, model=args.model, kb=kb, questions=args.questions, limit=args.limit,
                          seed=args.seed, output=args.output, progress=not args.json)  # fmt: skip
    _emit(args, result, evaluate.format_table)


def cmd_serve(args: argparse.Namespace) -> None:
    from nomoat import serve
    from nomoat.config import ServeConfig

    if not 0 <= args.port <= 65535:
        raise UserError("--port must be between 0 and 65535")
    config = ServeConfig(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        kb=args.kb,
        allow_hosts=tuple(args.allow_host),
        cors_origins=tuple(args.cors_origin),
    )
    if args.max_queue is not None:
        if args.max_queue < 0:
            raise UserError("--max-queue must be 0 or more")
        config.max_queue = args.max_queue

    def ready(url: str) -> None:
        print(f"nomoat serve: {url} (API under {url}v1; Ctrl-C stops)", flush=True)

    serve.run(config, model=args.model, runtime=_runtime_config(args), on_ready=ready)


def cmd_models(args: argparse.Namespace) -> None:
    from nomoat import models

    found = [models.describe(models.resolve(p)) for p in args.paths] if args.paths else models.available()
    _emit(args, found, _format_models)


def _format_models(found: list[dict[str, Any]]) -> str:
    rows = [("NAME", "ARCH", "QUANT", "CONTEXT", "SIZE", "PATH")]
    for m in found:
        if "error" in m:
            rows.append((m["name"], "-", "-", "-", "-", f"unusable: {m['error']}"))
            continue
        size = f"{m['bytes'] / 2**20:.0f} MiB"
        rows.append((m["name"], m["architecture"], m["quantization"], str(m["context_length"]), size, m["path"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows)


def cmd_ingest(args: argparse.Namespace) -> None:
    from nomoat import ingest

    report = ingest.run(args.paths, kb=args.kb, progress=not args.json)
    _emit(args, report, _format_ingest)


def _format_ingest(r: dict[str, Any]) -> str:
    line = (
        f"{r['added']} added, {r['updated']} updated, {r['unchanged']} unchanged, {r['removed']} removed, "
        f"{len(r['failed'])} failed; {r['chunks']} chunks written"
    )
    failed = [f"  failed: {f['path']}: {f['error']}" for f in r["failed"]]
    return "\n".join([line, *failed])


def cmd_search(args: argparse.Namespace) -> None:
    from nomoat import retrieval

    if args.k < 1:
        raise UserError("-k must be at least 1")
    hits = retrieval.search(args.query, kb=args.kb, k=args.k)
    _emit(args, hits, _format_hits)


def _format_hits(hits: list[dict[str, Any]]) -> str:
    if not hits:
        return "no results"
    out = []
    for i, h in enumerate(hits, 1):
        snippet = " ".join(h["text"].split())
        out.append(f"[{i}] {h['path']} ({h['location']})  score {h['score']:.3f}\n    {snippet[:300]}")
    return "\n".join(out)


def cmd_kb(args: argparse.Namespace) -> None:
    from nomoat import store

    if args.action == "list":
        _emit(args, store.list_kbs(), _format_kbs)
    elif args.action == "info":
        _emit(args, store.kb_info(args.name or "default"), _format_kb_info)
    else:
        if not args.name:
            raise UserError("name the knowledge base to remove: nomoat kb remove NAME")
        removed = store.remove_kb(args.name)
        _emit(args, {"removed": args.name, "path": removed}, lambda r: f"removed knowledge base {r['removed']!r}")


def _format_kbs(kbs: list[dict[str, Any]]) -> str:
    if not kbs:
        return "no knowledge bases yet: nomoat ingest PATH"
    return "\n".join(f"{k['name']:20} {k['documents']:7} docs {k['chunks']:8} chunks  {k['path']}" for k in kbs)


def _format_kb_info(info: dict[str, Any]) -> str:
    lines = [f"{k}: {v}" for k, v in info.items() if k != "failed"]
    lines += [f"failed: {f['path']}: {f['error']}" for f in info.get("failed", [])]
    return "\n".join(lines)


# -- the table -------------------------------------------------------------------------------------
def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", default="default", help="'default' (bundled SmolLM2-135M), a .gguf, or a folder")
    p.add_argument("--ctx", type=int, help="context window in tokens (default 4096, capped at the model's)")
    p.add_argument("--threads", type=int, help="CPU threads (default: all this process may use)")


def _add_gen_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, help="longest answer in tokens (default 512)")
    p.add_argument("--temperature", "-t", type=float, help="0 = deterministic, higher = more varied (default 0.2)")
    p.add_argument("--seed", type=int, help="sampling seed, for repeatable answers")


def _setup_chat(p: argparse.ArgumentParser) -> None:
    p.add_argument("--once", metavar="MESSAGE", help="answer one message and exit ('-' reads it from stdin)")
    p.add_argument("--system", help="system prompt for plain chat (default: the model's own)")
    p.add_argument("--json", action="store_true", help='with --once: print {"answer", "model", ...} as JSON')
    p.add_argument("--kb", help="ground every answer in this knowledge base (default: 'default' when it exists)")
    p.add_argument("--no-kb", action="store_true", help="plain chat with the model, no knowledge base")
    _add_model_flags(p)
    _add_gen_flags(p)


def _setup_ask(p: argparse.ArgumentParser) -> None:
    p.add_argument("question", help="what to ask ('-' reads it from stdin)")
    p.add_argument("--kb", default="default", help="knowledge base name (default: default)")
    p.add_argument("-k", type=int, help="sources to retrieve (default 5)")
    p.add_argument(
        "--json", action="store_true", help='{"answer","grounded","citations":[{"n","path","location","quote"}],...}'
    )
    _add_model_flags(p)
    _add_gen_flags(p)


def _setup_models(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", help="describe these model files/folders instead of the available ones")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _setup_ingest(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to add; re-run to sync changes")
    p.add_argument("--kb", default="default", help="knowledge base name (default: default)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (no progress bar)")


def _setup_search(p: argparse.ArgumentParser) -> None:
    p.add_argument("query", help="what to look for")
    p.add_argument("-k", type=int, default=5, help="number of results (default 5)")
    p.add_argument("--kb", default="default", help="knowledge base name (default: default)")
    p.add_argument("--json", action="store_true", help='[{"path","location","score","text","chunk_id"}]')


def _setup_kb(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["list", "info", "remove"], help="list all, describe one, or delete one")
    p.add_argument("name", nargs="?", help="knowledge base name (info: default 'default')")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _setup_data(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "action", choices=["build", "import", "stats"], help="build from a KB, import a file, or describe one"
    )
    p.add_argument("file", nargs="?", help="import/stats: a JSONL dataset (OpenAI messages, ShareGPT or Alpaca)")
    p.add_argument("-o", "--output", help="build: train JSONL (default data.jsonl); import: converted file")
    p.add_argument("--kb", default="default", help="build: knowledge base (default: default)")
    p.add_argument("--max", type=int, help="build: at most this many rows")
    p.add_argument("--time", help="build: time budget for model-written pairs, e.g. 30m (default: no limit)")
    p.add_argument("--eval-fraction", type=float, help="build: share of rows held out, by document (default 0.1)")
    p.add_argument("--no-model", action="store_true", help="build: only the deterministic extractive pairs")
    p.add_argument("--model", "-m", default="default", help="build: the model that writes pairs (default bundled)")
    p.add_argument("--json", action="store_true", help="machine-readable summary")


def _setup_tune(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", nargs="?", help="chat JSONL to learn from (DATA.eval.jsonl beside it is the eval split)")
    p.add_argument("--model", "-m", default="default", help="base: 'default' (bundled), a .gguf or an HF folder")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--time", help="time budget, e.g. 20m or 3h: steps are planned to fit, with an ETA")
    stop.add_argument("--steps", type=int, help="optimizer steps to take")
    stop.add_argument("--epochs", type=float, help="passes over the data (default 1 when nothing is given)")
    p.add_argument("--rank", type=int, help="LoRA rank (default 16)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 2e-4)")
    p.add_argument("--batch-size", type=int, help="rows per step (default 8)")
    p.add_argument("--max-length", type=int, help="longest row in tokens (default 1024)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], help="default auto: bf16 where the CPU has it")
    p.add_argument("--seed", type=int, help="seed for LoRA init and data order (default 0)")
    p.add_argument("--eval", metavar="FILE", help="eval rows (default: DATA.eval.jsonl when it exists)")
    p.add_argument("-o", "--output", metavar="RUN", help="run folder (default: $NOMOAT_HOME/runs/<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue a stopped run exactly where it stopped")
    p.add_argument("--skip-invalid", action="store_true", help="leave out bad rows instead of stopping")
    p.add_argument("--threads", type=int, help="CPU threads (default: all this process may use)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (no progress bar)")


def _setup_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a tune run: its folder, or its name under $NOMOAT_HOME/runs")
    formats = ["gguf", "adapter", "hf", "ollama", "all"]
    help_text = "gguf (merged, llama.cpp), adapter (LoRA GGUF), hf (safetensors), ollama (+ Modelfile), all"
    p.add_argument("--format", default="gguf", choices=formats, help=help_text)
    p.add_argument("--quant", default="q8_0", choices=["f16", "q8_0", "q4_0", "q4_k_m"], help="GGUF type (q8_0)")
    p.add_argument("-o", "--output", metavar="DIR", help="where to write (default: RUN/export)")
    p.add_argument("--json", action="store_true", help="machine-readable result")


def _setup_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", help="a tune run with a GGUF export (nomoat export RUN); omit to test --model")
    p.add_argument("--model", help="the tuned model to score (default: the run's newest export); without RUN, the "
                   "one model to score with and without retrieval (default: the bundled one)")  # fmt: skip
    p.add_argument("--kb", default="default", help="knowledge base for the +RAG rows (default: default)")
    p.add_argument("--no-kb", action="store_true", help="compare base and tuned only, without retrieval")
    p.add_argument("--questions", metavar="FILE", help='your own JSONL of {"question", "answer"[, "source"]}')
    p.add_argument("--limit", type=int, default=30, help="held-out questions to ask (default 30)")
    p.add_argument("--seed", type=int, default=0, help="which questions, and the bootstrap (default 0)")
    p.add_argument("-o", "--output", metavar="REPORT.html", help="the HTML report (default: RUN/eval.html); "
                   "REPORT.json and the answer cache REPORT.cache.jsonl go beside it")  # fmt: skip
    p.add_argument("--json", action="store_true", help="the table, intervals and disagreements as JSON")


def _setup_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; others need a key)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--api-key", help="clients must send 'Authorization: Bearer KEY' (default: $NOMOAT_API_KEY)")
    p.add_argument("--kb", default="default", help="knowledge base behind the model id nomoat-rag (default: default)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer to this Host name (repeatable; localhost and 127.0.0.1 always work)")  # fmt: skip
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from this origin call the API (repeatable; default: none)")  # fmt: skip
    p.add_argument("--max-queue", type=int, help="requests that may wait for the busy model (default 8; more get 429)")
    _add_model_flags(p)


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]] = {
    "chat": ("chat with a model, interactively or --once", _setup_chat, cmd_chat),
    "models": ("list the models you can run (size, architecture, context, quantization)", _setup_models, cmd_models),
    "ingest": ("add files and folders to a knowledge base (incremental, resumable)", _setup_ingest, cmd_ingest),
    "search": ("search a knowledge base (BM25 + vectors, fused)", _setup_search, cmd_search),
    "ask": ("answer a question from a knowledge base, with checked citations", _setup_ask, cmd_ask),
    "data": ("build a grounded instruction dataset from a KB; import or describe datasets", _setup_data, cmd_data),
    "tune": ("fine-tune a LoRA adapter on a chat dataset, within a time budget, resumable", _setup_tune, cmd_tune),
    "export": ("merge a run's adapter and export GGUF / HF / Ollama files, parity-checked", _setup_export, cmd_export),
    "eval": ("compare base, tuned, base+RAG and tuned+RAG on held-out questions", _setup_eval, cmd_eval),
    "kb": ("list, describe or remove knowledge bases", _setup_kb, cmd_kb),
    "serve": ("OpenAI-compatible API and web UI on 127.0.0.1 (chat, embeddings, KB)", _setup_serve, cmd_serve),
}


def build_parser() -> argparse.ArgumentParser:
    from nomoat import __version__

    parser = argparse.ArgumentParser(
        prog="nomoat",
        description="Your own small LLM from your own files, offline.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"nomoat {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, setup, handler) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".")
        setup(p)
        p.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        args.handler(args)
    except UserError as exc:
        if args.debug:
            raise
        print(f"nomoat: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nnomoat: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `nomoat models | head`
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
