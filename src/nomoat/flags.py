"""The flags of each ``nomoat`` command: one function per command, ``(parser, config module) -> None``.

A flag's ``dest`` is the argument name of the :mod:`nomoat.api` function the command calls, and every default shown
in ``--help`` is read from :mod:`nomoat.config` (passed in as ``c``), so help, CLI and API cannot drift apart.
Nothing is imported here but argparse: ``nomoat --help`` stays fast.
"""

from __future__ import annotations

import argparse
from typing import Any


def _kb_flag(p: argparse.ArgumentParser, c: Any, what: str = "knowledge base name") -> None:
    p.add_argument("--kb", default=c.DEFAULT_KB, help=f"{what} (default: {c.DEFAULT_KB})")


def _add_model_flags(p: argparse.ArgumentParser, c: Any) -> None:
    p.add_argument("--model", "-m", help="'default' (bundled SmolLM2-135M), a .gguf, or a folder (default: the "
                   "model `nomoat learn` made for the knowledge base, else the bundled one)")  # fmt: skip
    p.add_argument("--ctx", type=int, help=f"context window in tokens (default {c.RuntimeConfig.n_ctx}, capped at "
                   "the model's)")  # fmt: skip
    p.add_argument("--threads", type=int, help="CPU threads (default: all this process may use)")


def _policy_flag(p: argparse.ArgumentParser, c: Any) -> None:
    p.add_argument("--policy", metavar="FILE", help="the owner's answer rules, TOML (default: "
                   f"$NOMOAT_HOME/{c.PolicyConfig.file} when it exists; docs/guide.md)")  # fmt: skip


def _add_gen_flags(p: argparse.ArgumentParser, tokens: str, temperature: str) -> None:
    p.add_argument("--max-tokens", type=int, help=f"longest answer in tokens (default {tokens})")
    p.add_argument("--temperature", "-t", type=float, help=f"0 = deterministic, higher = more varied, at most 2 "
                   f"(default {temperature})")  # fmt: skip
    p.add_argument("--seed", type=int, help="sampling seed, for repeatable answers")


def chat(p: argparse.ArgumentParser, c: Any) -> None:
    p.add_argument("--once", dest="message", metavar="MESSAGE",
                   help="answer one message and exit ('-' reads it from stdin)")  # fmt: skip
    p.add_argument("--system", help="system prompt for plain chat (default: the model's own)")
    p.add_argument("--json", action="store_true", help='with --once: print {"answer", "model", ...} as JSON')
    p.add_argument(
        "--kb", help=f"ground every answer in this knowledge base (default: '{c.DEFAULT_KB}' when it exists)"
    )
    p.add_argument("--no-kb", action="store_true", help="plain chat with the model, no knowledge base")
    _policy_flag(p, c)
    _add_model_flags(p, c)
    rag = c.RagConfig()
    _add_gen_flags(p, f"{c.GenerationConfig.max_tokens}; {rag.max_answer_tokens} from a knowledge base",
                   f"{c.GenerationConfig.temperature:g}; {rag.answer_temperature:g} from a knowledge base")  # fmt: skip


def ask(p: argparse.ArgumentParser, c: Any) -> None:
    p.add_argument("question", help="what to ask ('-' reads it from stdin)")
    _kb_flag(p, c)
    p.add_argument("-k", type=int, help=f"sources to retrieve (default {c.RagConfig.k})")
    p.add_argument(
        "--json", action="store_true", help='{"answer","grounded","citations":[{"n","path","location","quote"}],...}'
    )
    _policy_flag(p, c)
    _add_model_flags(p, c)
    _add_gen_flags(p, str(c.RagConfig.max_answer_tokens), f"{c.RagConfig.answer_temperature:g}")


def models(p: argparse.ArgumentParser, c: Any) -> None:

    p.add_argument("paths", nargs="*", help="describe these model files/folders instead of the available ones")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def ingest(p: argparse.ArgumentParser, c: Any) -> None:

    p.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to add; re-run to sync changes")
    _kb_flag(p, c)
    p.add_argument("--ocr", choices=c.OCR_ENGINES, help="how images and scanned pages are read: 'off' skips them "
                   f"(default: {c.OcrConfig.engine})")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the summary as JSON (the progress bar stays on stderr)")


def search(p: argparse.ArgumentParser, c: Any) -> None:
    p.add_argument("query", help="what to look for")
    p.add_argument("-k", type=int, help=f"number of results (default {c.SearchConfig.k})")
    _kb_flag(p, c)
    p.add_argument("--json", action="store_true", help='[{"path","location","score","text","chunk_id"}]')


def kb(p: argparse.ArgumentParser, c: Any) -> None:
    p.add_argument("action", choices=["list", "info", "remove", "adapt"],
                   help="list all, describe one, delete one, or adapt one's search to its own files (kb adapt: a "
                   "query encoder tuned on questions made from the KB's chunks, kept only if held-out recall "
                   "improves)")  # fmt: skip
    p.add_argument("name", nargs="?", help=f"knowledge base name (info, adapt: default '{c.DEFAULT_KB}')")
    p.add_argument("--kb", dest="kb_name", metavar="NAME", help="the same as NAME")
    p.add_argument("--time", help=f"adapt: time budget, e.g. 20m or 1h (default {c.AdaptConfig.time})")
    p.add_argument("--undo", action="store_true", help="adapt: go back to the stock query encoder")
    p.add_argument("--json", action="store_true", help="machine-readable output (progress stays on stderr)")


def data(p: argparse.ArgumentParser, c: Any) -> None:
    p.add_argument(
        "action", choices=["build", "import", "stats"], help="build from a KB, import a file, or describe one"
    )
    p.add_argument("file", nargs="?", help="import/stats: a JSONL dataset (OpenAI messages, ShareGPT or Alpaca)")
    p.add_argument("-o", "--output", help=f"build: train JSONL (default {c.CurateConfig.output}); import: converted "
                   "file (default FILE.nomoat.jsonl)")  # fmt: skip
    _kb_flag(p, c, "build: knowledge base")
    p.add_argument("--max", type=int, help="build: at most this many rows, sampled across all documents")
    p.add_argument("--time", help="build: time budget for model-written pairs, e.g. 30m (default: no limit)")
    p.add_argument("--eval-fraction", type=float, help=f"build: share of rows held out, by document (default "
                   f"{c.CurateConfig.eval_fraction:g})")  # fmt: skip
    p.add_argument("--no-model", action="store_true", help="build: only the deterministic extractive pairs")
    p.add_argument("--for", dest="target", choices=["rag", "chat"], help="build: rows in ask's prompt format, with "
                   f"the KB's sources (rag), or bare questions (chat) (default: {c.CurateConfig.target})")  # fmt: skip
    p.add_argument(
        "--model", "-m", default=c.DEFAULT_MODEL, help="build: the model that writes pairs (default bundled)"
    )
    p.add_argument("--json", action="store_true", help="machine-readable summary")


def learn(p: argparse.ArgumentParser, c: Any) -> None:
    p.add_argument("folders", nargs="*", metavar="FOLDER", help="your documents (ingested or synced first)")
    _kb_flag(p, c)
    p.add_argument("--time", help=f"the whole budget, split across the stages, e.g. 30m (default {c.LearnConfig.time})")
    p.add_argument("--model", "-m", default=c.DEFAULT_MODEL, help="the base to tune: 'default' (bundled), a .gguf "
                   "or an HF folder")  # fmt: skip
    p.add_argument("--resume", action="store_true", help="continue the loop that stopped, from the stage it was in")
    p.add_argument("--restart", action="store_true", help="start anew, dropping a stopped loop's data and run")
    p.add_argument("--json", action="store_true", help="print the final state as JSON (progress stays on stderr)")


def tune(p: argparse.ArgumentParser, c: Any) -> None:
    t = c.TuneConfig
    p.add_argument("data", nargs="?", help="chat JSONL to learn from (DATA.eval.jsonl beside it is the eval split)")
    p.add_argument("--model", "-m", default=c.DEFAULT_MODEL, help="base: 'default' (bundled), a .gguf or an HF folder")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--time", help="time budget, e.g. 20m or 3h: steps are planned to fit, with an ETA")
    stop.add_argument("--steps", type=int, help="optimizer steps to take")
    stop.add_argument("--epochs", type=float, help="passes over the data (default 1 when nothing is given)")
    p.add_argument("--rank", type=int, help=f"LoRA rank (default {t.rank})")
    p.add_argument("--lora-layers", type=float, metavar="SHARE", help="share of the layers, from the top, that "
                   f"learn (default {t.lora_layers:g}; 0.33 takes 1.9x the tokens/s)")  # fmt: skip
    p.add_argument("--lr", type=float, help=f"peak learning rate (default {t.lr:g})")
    p.add_argument("--batch-size", type=int, help=f"rows per step (default {t.batch_size})")
    p.add_argument("--max-length", type=int, help=f"longest row in tokens (default {t.max_length})")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                   help=f"default {t.precision}: bf16 where the CPU has it")  # fmt: skip
    p.add_argument("--seed", type=int, help=f"seed for LoRA init and data order (default {t.seed})")
    p.add_argument("--fsdp", action="store_true", default=None, help="under torchrun: shard the base over the "
                   "processes (FSDP), for a base too big for one device (default: each holds it whole)")  # fmt: skip
    p.add_argument("--eval", dest="eval_data", metavar="FILE", help="eval rows (default: DATA.eval.jsonl when it "
                   "exists)")  # fmt: skip
    p.add_argument("-o", "--output", metavar="RUN", help="run folder (default: $NOMOAT_HOME/runs/<time>)")
    p.add_argument("--resume", metavar="RUN", help="continue a stopped run exactly where it stopped")
    p.add_argument("--skip-invalid", action="store_true", help="leave out bad rows instead of stopping")
    p.add_argument("--threads", type=int, help="CPU threads (default: all this process may use)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (the progress bar stays on stderr)")


def export(p: argparse.ArgumentParser, c: Any) -> None:
    p.add_argument("run", help="a tune run: its folder, or its name under $NOMOAT_HOME/runs")
    help_text = "gguf (merged, llama.cpp), adapter (LoRA GGUF), hf (safetensors), ollama (+ Modelfile), all"
    p.add_argument("--format", choices=c.EXPORT_FORMATS, help=f"{help_text} (default {c.ExportConfig.format})")
    p.add_argument("--quant", choices=c.GGUF_QUANTS, help=f"GGUF weight type (default {c.ExportConfig.quant})")
    p.add_argument("-o", "--output", metavar="DIR", help="where to write (default: RUN/export)")
    p.add_argument("--json", action="store_true", help="machine-readable result")


def evaluate(p: argparse.ArgumentParser, c: Any) -> None:
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
    p.add_argument("--policy", metavar="FILE", help="also ask each model the shipped red-team set under these answer "
                   f"rules (default: $NOMOAT_HOME/{c.PolicyConfig.file} when it exists)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="the table, intervals and disagreements as JSON")


def serve(p: argparse.ArgumentParser, c: Any) -> None:
    s = c.ServeConfig
    p.add_argument("--host", help=f"address to listen on (default {s.host}; others need a key)")
    p.add_argument("--port", type=int, help=f"port (default {s.port}; 0 = any free port)")
    p.add_argument("--api-key-file", metavar="FILE", help="clients must send 'Authorization: Bearer KEY' with the "
                   "key in FILE (or set $NOMOAT_API_KEY; default: a random token, printed in the URL)")  # fmt: skip
    p.add_argument("--api-key", help="the key itself (shows in `ps`: prefer --api-key-file or $NOMOAT_API_KEY)")
    p.add_argument("--no-auth", action="store_true", help="no key at all (loopback only: any local user gets in)")
    p.add_argument("--kb", action="append", metavar="NAME", help=f"knowledge base to serve (repeatable; the first "
                   f"is behind the model id nomoat-rag; default: {s.kb}); no other one is reachable")  # fmt: skip
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer to this Host name (repeatable; localhost and 127.0.0.1 always work)")  # fmt: skip
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from this origin call the API (repeatable; default: none)")  # fmt: skip
    p.add_argument("--parallel", type=int, metavar="N", help="generations at once: decoded together by the local "
                   f"model (default {s.local_parallel}; each keeps the full --ctx, so KV memory is N contexts), or "
                   f"sent to --backend-url at once (default {s.backend_parallel})")  # fmt: skip
    p.add_argument("--max-queue", type=int, help=f"requests that may wait while --parallel are generating (default "
                   f"{s.max_queue}; more get 429)")  # fmt: skip
    p.add_argument("--backend-url", metavar="URL", help="generate with this OpenAI-compatible server (vLLM, "
                   "llama.cpp, Ollama: e.g. http://127.0.0.1:8000/v1) instead of the local model; retrieval and "
                   "the answer check stay here; its key from $NOMOAT_BACKEND_KEY")  # fmt: skip
    p.add_argument("--backend-model", metavar="NAME", help="the backend's model id (default: the one it serves)")
    p.add_argument("--backend-timeout", type=float, metavar="SECONDS", help="longest silence from the backend "
                   f"before a request fails with 504 (default {s.backend_timeout:g})")  # fmt: skip
    _policy_flag(p, c)
    _add_model_flags(p, c)
