"""The ``nomoat`` command: a table of commands, each calling the function of :mod:`nomoat.api` of the same name
with its flags (a flag's ``dest`` is the function's argument name, so the two cannot drift apart).

No logic lives here; defaults shown in ``--help`` are read from the dataclasses in :mod:`nomoat.config`. Stages are
imported only when their command runs, so ``nomoat --help`` is fast. User mistakes print one line and exit 1;
``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from nomoat.errors import UserError

# The stages, the API and even config (dataclasses pulls in inspect) are imported inside the functions below, and
# only the chosen command's flags are set up: `nomoat --help` loads nothing but argparse (bench/startup.py).

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

CLI_ONLY = {"json", "command", "handler", "debug", "action"}
"""Parsed flags that are not arguments of the API function: output format and dispatch."""


def _call(fn: Callable[..., Any], args: argparse.Namespace, **extra: Any) -> Any:
    """``fn`` called with the parsed flags named like its parameters (plus ``extra``)."""
    code = fn.__code__  # its argument names, without importing inspect
    names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    return fn(**{n: getattr(args, n) for n in names if hasattr(args, n) and n not in extra}, **extra)


def _emit(args: argparse.Namespace, result: Any, human: Callable[[Any], str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        text = human(result)
        if text:
            print(text)


def _stdin_or(value: str) -> str:
    return sys.stdin.read() if value == "-" else value


def _notice(text: str) -> None:
    print(f"({text})", file=sys.stderr)


# -- commands --------------------------------------------------------------------------------------
def cmd_chat(args: argparse.Namespace) -> None:
    from nomoat import api

    if args.message is None:
        if args.json:
            raise UserError("--json needs --once MESSAGE (interactive chat prints text)")
        _call(api.chat, args)
        return

    def stream(text: str) -> None:
        print(text, end="", flush=True)

    result = _call(api.chat, args, message=_stdin_or(args.message), on_text=None if args.json else stream,
                   on_notice=_notice)  # fmt: skip
    if args.json:
        _emit(args, result, str)
        return
    print()
    if "mode" in result:  # answered from a knowledge base: its sources go under the answer
        from nomoat.answer.rag import format_sources

        if sources := format_sources(result):
            print(sources)


def cmd_ask(args: argparse.Namespace) -> None:
    from nomoat import api
    from nomoat.answer.rag import format_answer

    _emit(args, _call(api.ask, args, question=_stdin_or(args.question)), format_answer)


def cmd_data(args: argparse.Namespace) -> None:
    from nomoat import api

    if args.action == "build":
        from nomoat.dataset.curate import format_summary

        _emit(args, _call(api.build_dataset, args, progress=True), format_summary)
        return
    from nomoat.dataset.formats import format_import, format_stats

    if not args.file:
        raise UserError(f"name the dataset file: nomoat data {args.action} FILE")
    if args.action == "import":
        _emit(args, _call(api.import_dataset, args), format_import)
    else:
        _emit(args, _call(api.dataset_stats, args), format_stats)


def cmd_tune(args: argparse.Namespace) -> None:
    from nomoat import api
    from nomoat.finetune.tune import format_summary

    _emit(args, _call(api.tune, args, progress=True), format_summary)


def cmd_export(args: argparse.Namespace) -> None:
    from nomoat import api
    from nomoat.exporting.export import format_export

    _emit(args, _call(api.export, args), format_export)


def cmd_eval(args: argparse.Namespace) -> None:
    from nomoat import api
    from nomoat.evaluation.report import format_table

    _emit(args, _call(api.evaluate, args, progress=True), format_table)


def cmd_serve(args: argparse.Namespace) -> None:
    from nomoat import api

    def ready(url: str) -> None:
        print(f"nomoat serve: {url} (API under {url}v1; Ctrl-C stops)", flush=True)

    _call(api.serve, args, on_ready=ready)


def cmd_models(args: argparse.Namespace) -> None:
    from nomoat import api
    from nomoat.llm.models import format_models

    _emit(args, _call(api.models, args), format_models)


def cmd_ingest(args: argparse.Namespace) -> None:
    from nomoat import api
    from nomoat.kb.ingest import format_report

    _emit(args, _call(api.ingest, args, progress=True), format_report)


def cmd_search(args: argparse.Namespace) -> None:
    from nomoat import api
    from nomoat.kb.retrieval import format_hits

    _emit(args, _call(api.search, args), format_hits)


def cmd_kb(args: argparse.Namespace) -> None:
    from nomoat import api
    from nomoat.kb import catalog

    if args.action == "list":
        _emit(args, api.list_kbs(), catalog.format_kbs)
    elif args.action == "info":
        _emit(args, api.kb_info(args.name) if args.name else api.kb_info(), catalog.format_kb_info)
    else:
        if not args.name:
            raise UserError("name the knowledge base to remove: nomoat kb remove NAME")
        removed = api.remove_kb(args.name)
        _emit(args, {"removed": args.name, "path": removed}, lambda r: f"removed knowledge base {r['removed']!r}")


# -- the table -------------------------------------------------------------------------------------
def _kb_flag(p: argparse.ArgumentParser, c: Any, what: str = "knowledge base name") -> None:
    p.add_argument("--kb", default=c.DEFAULT_KB, help=f"{what} (default: {c.DEFAULT_KB})")


def _add_model_flags(p: argparse.ArgumentParser, c: Any) -> None:
    p.add_argument(
        "--model", "-m", default=c.DEFAULT_MODEL, help="'default' (bundled SmolLM2-135M), a .gguf, or a folder"
    )
    p.add_argument("--ctx", type=int, help=f"context window in tokens (default {c.RuntimeConfig.n_ctx}, capped at "
                   "the model's)")  # fmt: skip
    p.add_argument("--threads", type=int, help="CPU threads (default: all this process may use)")


def _add_gen_flags(p: argparse.ArgumentParser, tokens: str, temperature: str) -> None:
    p.add_argument("--max-tokens", type=int, help=f"longest answer in tokens (default {tokens})")
    p.add_argument("--temperature", "-t", type=float, help=f"0 = deterministic, higher = more varied, at most 2 "
                   f"(default {temperature})")  # fmt: skip
    p.add_argument("--seed", type=int, help="sampling seed, for repeatable answers")


def _setup_chat(p: argparse.ArgumentParser, c: Any) -> None:
    p.add_argument("--once", dest="message", metavar="MESSAGE",
                   help="answer one message and exit ('-' reads it from stdin)")  # fmt: skip
    p.add_argument("--system", help="system prompt for plain chat (default: the model's own)")
    p.add_argument("--json", action="store_true", help='with --once: print {"answer", "model", ...} as JSON')
    p.add_argument(
        "--kb", help=f"ground every answer in this knowledge base (default: '{c.DEFAULT_KB}' when it exists)"
    )
    p.add_argument("--no-kb", action="store_true", help="plain chat with the model, no knowledge base")
    _add_model_flags(p, c)
    rag = c.RagConfig()
    _add_gen_flags(p, f"{c.GenerationConfig.max_tokens}; {rag.max_answer_tokens} from a knowledge base",
                   f"{c.GenerationConfig.temperature:g}; {rag.answer_temperature:g} from a knowledge base")  # fmt: skip


def _setup_ask(p: argparse.ArgumentParser, c: Any) -> None:
    p.add_argument("question", help="what to ask ('-' reads it from stdin)")
    _kb_flag(p, c)
    p.add_argument("-k", type=int, help=f"sources to retrieve (default {c.RagConfig.k})")
    p.add_argument(
        "--json", action="store_true", help='{"answer","grounded","citations":[{"n","path","location","quote"}],...}'
    )
    _add_model_flags(p, c)
    _add_gen_flags(p, str(c.RagConfig.max_answer_tokens), f"{c.RagConfig.answer_temperature:g}")


def _setup_models(p: argparse.ArgumentParser, c: Any) -> None:

    p.add_argument("paths", nargs="*", help="describe these model files/folders instead of the available ones")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _setup_ingest(p: argparse.ArgumentParser, c: Any) -> None:

    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to add; re-run to sync changes")
    _kb_flag(p, c)
    p.add_argument("--ocr", choices=c.OCR_ENGINES, help="how images and scanned pages are read: 'off' skips them "
                   f"(default: {c.OcrConfig.engine})")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the summary as JSON (the progress bar stays on stderr)")


def _setup_search(p: argparse.ArgumentParser, c: Any) -> None:
    p.add_argument("query", help="what to look for")
    p.add_argument("-k", type=int, help=f"number of results (default {c.SearchConfig.k})")
    _kb_flag(p, c)
    p.add_argument("--json", action="store_true", help='[{"path","location","score","text","chunk_id"}]')


def _setup_kb(p: argparse.ArgumentParser, c: Any) -> None:
    p.add_argument("action", choices=["list", "info", "remove"], help="list all, describe one, or delete one")
    p.add_argument("name", nargs="?", help=f"knowledge base name (info: default '{c.DEFAULT_KB}')")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _setup_data(p: argparse.ArgumentParser, c: Any) -> None:
    p.add_argument(
        "action", choices=["build", "import", "stats"], help="build from a KB, import a file, or describe one"
    )
    p.add_argument("file", nargs="?", help="import/stats: a JSONL dataset (OpenAI messages, ShareGPT or Alpaca)")
    p.add_argument("-o", "--output", help=f"build: train JSONL (default {c.CurateConfig.output}); import: converted "
                   "file (default FILE.nomoat.jsonl)")  # fmt: skip
    _kb_flag(p, c, "build: knowledge base")
    p.add_argument("--max", type=int, help="build: at most this many rows")
    p.add_argument("--time", help="build: time budget for model-written pairs, e.g. 30m (default: no limit)")
    p.add_argument("--eval-fraction", type=float, help=f"build: share of rows held out, by document (default "
                   f"{c.CurateConfig.eval_fraction:g})")  # fmt: skip
    p.add_argument("--no-model", action="store_true", help="build: only the deterministic extractive pairs")
    p.add_argument(
        "--model", "-m", default=c.DEFAULT_MODEL, help="build: the model that writes pairs (default bundled)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable summary")


def _setup_tune(p: argparse.ArgumentParser, c: Any) -> None:
    t = c.TuneConfig
    p.add_argument("data", nargs="?", help="chat JSONL to learn from (DATA.eval.jsonl beside it is the eval split)")
    p.add_argument("--model", "-m", default=c.DEFAULT_MODEL, help="base: 'default' (bundled), a .gguf or an HF folder")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--time", help="time budget, e.g. 20m or 3h: steps are planned to fit, with an ETA")
    stop.add_argument("--steps", type=int, help="optimizer steps to take")
    stop.add_argument("--epochs", type=float, help="passes over the data (default 1 when nothing is given)")
    p.add_argument("--rank", type=int, help=f"LoRA rank (default {t.rank})")
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {t.lr:g})")
    p.add_argument("--batch-size", type=int, help=f"rows per step (default {t.batch_size})")
    p.add_argument("--max-length", type=int, help=f"longest row in tokens (default {t.max_length})")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                   help=f"default {t.precision}: bf16 where the CPU has it")  # fmt: skip
    p.add_argument("--seed", type=int, help=f"seed for LoRA init and data order (default {t.seed})")
    p.add_argument("--eval", dest="eval_data", metavar="FILE", help="eval rows (default: DATA.eval.jsonl when it "
                   "exists)")  # fmt: skip
    p.add_argument("-o", "--output", metavar="RUN", help="run folder (default: $NOMOAT_HOME/runs/<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue a stopped run exactly where it stopped")
    p.add_argument("--skip-invalid", action="store_true", help="leave out bad rows instead of stopping")
    p.add_argument("--threads", type=int, help="CPU threads (default: all this process may use)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (the progress bar stays on stderr)")


def _setup_export(p: argparse.ArgumentParser, c: Any) -> None:
    p.add_argument("run", help="a tune run: its folder, or its name under $NOMOAT_HOME/runs")
    help_text = "gguf (merged, llama.cpp), adapter (LoRA GGUF), hf (safetensors), ollama (+ Modelfile), all"
    p.add_argument("--format", choices=c.EXPORT_FORMATS, help=f"{help_text} (default {c.ExportConfig.format})")
    p.add_argument("--quant", choices=c.GGUF_QUANTS, help=f"GGUF weight type (default {c.ExportConfig.quant})")
    p.add_argument("-o", "--output", metavar="DIR", help="where to write (default: RUN/export)")
    p.add_argument("--json", action="store_true", help="machine-readable result")


def _setup_eval(p: argparse.ArgumentParser, c: Any) -> None:
    p.add_argument("run", nargs="?", help="a tune run with a GGUF export (nomoat export RUN); omit to test --model")
    p.add_argument("--model", help="the tuned model to score (default: the run's newest export); without RUN, the "
                   "one model to score with and without retrieval (default: the bundled one)")  # fmt: skip
    _kb_flag(p, c, "knowledge base for the +RAG rows")
    p.add_argument("--no-kb", action="store_true", help="compare base and tuned only, without retrieval")
    p.add_argument("--questions", metavar="FILE", help='your own JSONL of {"question", "answer"[, "source"]}')
    p.add_argument("--limit", type=int, help=f"held-out questions to ask (default {c.EvalConfig.limit})")
    p.add_argument("--seed", type=int, help=f"which questions, and the bootstrap (default {c.EvalConfig.seed})")
    p.add_argument("-o", "--output", metavar="REPORT.html", help="the HTML report (default: RUN/eval.html); "
                   "REPORT.json and the answer cache REPORT.cache.jsonl go beside it")  # fmt: skip
    p.add_argument("--json", action="store_true", help="the table, intervals and disagreements as JSON")


def _setup_serve(p: argparse.ArgumentParser, c: Any) -> None:
    s = c.ServeConfig
    p.add_argument("--host", help=f"address to listen on (default {s.host}; others need a key)")
    p.add_argument("--port", type=int, help=f"port (default {s.port}; 0 = any free port)")
    p.add_argument("--api-key", help="clients must send 'Authorization: Bearer KEY' (default: $NOMOAT_API_KEY)")
    p.add_argument("--kb", help=f"knowledge base behind the model id nomoat-rag (default: {s.kb})")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer to this Host name (repeatable; localhost and 127.0.0.1 always work)")  # fmt: skip
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from this origin call the API (repeatable; default: none)")  # fmt: skip
    p.add_argument("--max-queue", type=int, help=f"requests that may wait for the busy model (default "
                   f"{s.max_queue}; more get 429)")  # fmt: skip
    _add_model_flags(p, c)


Command = tuple[str, Callable[[argparse.ArgumentParser, Any], None], Callable[[argparse.Namespace], None]]
COMMANDS: dict[str, Command] = {
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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command``, only that command's flags are set up (the others list just their summary)."""
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
        if command in (None, name):
            from nomoat import config

            setup(p, config)
        p.set_defaults(handler=handler)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    named = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(named if named in COMMANDS else "" if named is None else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        args.handler(args)
    except UserError as exc:
        if args.debug:
            raise
        from nomoat.config import SettingError

        message = f"--{exc.param.replace('_', '-')} {exc.rule}" if isinstance(exc, SettingError) else str(exc)
        print(f"nomoat: error: {message}", file=sys.stderr)
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
