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

from nomoat import flags
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
  nomoat learn ~/notes --time 2h                        the whole loop: your files -> a tuned model, measured
  nomoat data build -o mydata.jsonl --time 30m          a curated dataset from the knowledge base
  nomoat tune mydata.jsonl --time 20m                   a LoRA adapter trained on it (Ctrl-C stops cleanly)
  nomoat tune --resume RUN                              continue a stopped run exactly
  nomoat export RUN --format all                        GGUF (checked against torch), HF folder, Modelfile
  nomoat chat --model RUN                               chat with the tuned model (its newest GGUF export)
  nomoat serve                                          OpenAI-compatible API + web UI at http://127.0.0.1:8000/

state lives in $NOMOAT_HOME (default: your user data folder); --model takes 'default', a .gguf file or a folder."""

CLI_ONLY = {"json", "command", "handler", "debug", "action", "kb_name"}
"""Parsed flags that are not arguments of the API function: output format, dispatch, ``kb --kb`` (NAME's alias)."""


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


def cmd_learn(args: argparse.Namespace) -> None:
    from nomoat import api
    from nomoat.pipeline.loop import format_learn

    try:
        _emit(args, _call(api.learn, args, progress=True), format_learn)
    except KeyboardInterrupt:
        raise UserError(f"stopped; `nomoat learn --resume --kb {args.kb}` continues where it stopped") from None


def cmd_tune(args: argparse.Namespace) -> None:
    from nomoat import api
    from nomoat.finetune.runs import format_summary

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
        from nomoat.serving.auth import token_path

        base, _, token = url.partition("?token=")
        key = f"the token, also in {token_path()}" if token else "your key"
        print(f"nomoat serve: {url} (API under {base}v1 with {key}; Ctrl-C stops)", flush=True)

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

    args.name = args.name or args.kb_name
    if args.action == "list":
        _emit(args, api.list_kbs(), catalog.format_kbs)
    elif args.action == "adapt":
        from nomoat.adapt.run import format_adapt

        named = {"name": args.name} if args.name else {}
        result = api.adapt_kb(**named, time=args.time, undo=args.undo, progress=True)
        _emit(args, result, format_adapt)
    elif args.action == "info":
        _emit(args, api.kb_info(args.name) if args.name else api.kb_info(), catalog.format_kb_info)
    else:
        if not args.name:
            raise UserError("name the knowledge base to remove: nomoat kb remove NAME")
        removed = api.remove_kb(args.name)
        _emit(args, {"removed": args.name, "path": removed}, lambda r: f"removed knowledge base {r['removed']!r}")


# -- the table -------------------------------------------------------------------------------------
Command = tuple[str, Callable[[argparse.ArgumentParser, Any], None], Callable[[argparse.Namespace], None]]
COMMANDS: dict[str, Command] = {
    "chat": ("chat with a model, interactively or --once", flags.chat, cmd_chat),
    "models": ("list the models you can run (size, architecture, context, quantization)", flags.models, cmd_models),
    "ingest": ("add files and folders to a knowledge base (incremental, resumable)", flags.ingest, cmd_ingest),
    "search": ("search a knowledge base (BM25 + vectors, fused)", flags.search, cmd_search),
    "ask": ("answer a question from a knowledge base, with checked citations", flags.ask, cmd_ask),
    "data": ("build a grounded instruction dataset from a KB; import or describe datasets", flags.data, cmd_data),
    "learn": ("your folder to a tuned model: ingest, data, tune, export, eval in one budget", flags.learn, cmd_learn),
    "tune": ("fine-tune a LoRA adapter on a chat dataset, within a time budget, resumable", flags.tune, cmd_tune),
    "export": ("merge a run's adapter and export GGUF / HF / Ollama files, parity-checked", flags.export, cmd_export),
    "eval": ("compare base, tuned, base+RAG and tuned+RAG on held-out questions", flags.evaluate, cmd_eval),
    "kb": ("list, describe, remove or adapt knowledge bases", flags.kb, cmd_kb),
    "serve": ("OpenAI-compatible API and web UI on 127.0.0.1 (chat, embeddings, KB)", flags.serve, cmd_serve),
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
        from nomoat.settings import SettingError

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
