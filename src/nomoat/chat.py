"""``nomoat chat``: talk to a model, one message (``--once``) or interactively with history.

With a knowledge base (the default one exists, or ``--kb NAME``) every turn is grounded: :func:`nomoat.rag.ask`
retrieves with the conversation in mind, checks the answer against its sources, and the sources are printed under
it. Without one (or with ``--no-kb``) it is plain chat with the model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from nomoat.config import ChatConfig, GenerationConfig, RuntimeConfig
from nomoat.errors import UserError

HELP = "commands: /exit (or Ctrl-D) quits, /reset forgets the conversation, /help shows this"


def run(
    message: str,
    *,
    model: str | Path | None = None,
    system: str | None = None,
    history: list[dict[str, str]] | None = None,
    gen: GenerationConfig | None = None,
    runtime: RuntimeConfig | None = None,
    on_text: Callable[[str], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Answer one message. Returns ``{"answer", "model", "usage", "finish_reason", "notices"}``.

    ``history`` holds earlier turns (``{"role", "content"}``); ``on_text`` receives the answer as it streams.
    """
    from nomoat import runtime as rt

    if not message or not message.strip():
        raise UserError("the message is empty")
    llm = rt.load(model, runtime)
    messages = ([{"role": "system", "content": system}] if system else []) + list(history or [])
    messages.append({"role": "user", "content": message})
    with llm.lock:
        generation = llm.chat(messages, gen, on_notice=on_notice)
        pieces = []
        for piece in generation:
            pieces.append(piece)
            if on_text:
                on_text(piece)
    return {
        "answer": "".join(pieces).strip(),
        "model": llm.name,
        "usage": {"prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens},
        "finish_reason": generation.finish_reason,
        "notices": generation.notices,
    }


def grounding_kb(kb: str | None, *, explicit: bool) -> str | None:
    """The knowledge base to ground in: ``kb`` if it exists. A KB the user named must exist (UserError); the
    implicit ``default`` that does not exist just means plain chat."""
    from nomoat import paths

    if kb is None:
        return None
    if paths.kb_path(kb).exists():
        return kb
    if explicit:
        raise UserError(f"no knowledge base '{kb}': run `nomoat ingest PATH --kb {kb}` first, or chat with --no-kb")
    return None


def interactive(
    *,
    model: str | Path | None = None,
    kb: str | None = None,
    config: ChatConfig | None = None,
    gen: GenerationConfig | None = None,
    runtime: RuntimeConfig | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
) -> None:
    """The chat loop: streams each answer, keeps the history, Ctrl-C stops an answer, Ctrl-D or /exit quits.

    With ``kb`` (an existing knowledge base) each turn is answered by :func:`nomoat.rag.ask` and its sources are
    printed under the answer."""
    from nomoat import runtime as rt

    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    config = config or ChatConfig()
    tty = stdin.isatty()
    if tty:
        import readline  # noqa: F401  (line editing and history for input())
    llm = rt.load(model, runtime)  # load once, before the first prompt, so errors show up at once
    grounding = f", answering from knowledge base '{kb}'" if kb else ""
    print(f"nomoat chat with {llm.name}{grounding} ({HELP})", file=stdout)
    history: list[dict[str, str]] = []
    while True:
        try:
            line = input("you> ") if tty else stdin.readline()
        except EOFError:
            line = ""
        except KeyboardInterrupt:
            print(file=stdout)
            continue
        if not line:  # Ctrl-D / end of piped input
            break
        line = line.strip()
        if not line:
            continue
        if line in {"/exit", "/quit"}:
            break
        if line == "/reset":
            history.clear()
            print("(conversation forgotten)", file=stdout)
            continue
        if line in {"/help", "/?"}:
            print(HELP, file=stdout)
            continue
        print("bot> ", end="", file=stdout, flush=True)
        if kb:
            answer = _answer_grounded(line, history, llm, kb, gen, stdout)
        else:
            answer = _answer_streaming(line, history, model, config, gen, runtime, stdout)
        history += [{"role": "user", "content": line}, {"role": "assistant", "content": answer}]


def _answer_streaming(line, history, model, config, gen, runtime, stdout) -> str:  # type: ignore[no-untyped-def]
    pieces: list[str] = []

    def show(text: str) -> None:
        pieces.append(text)
        print(text, end="", file=stdout, flush=True)

    def notice(text: str) -> None:
        print(f"({text})", file=sys.stderr)

    try:
        run(
            line,
            model=model,
            system=config.system,
            history=history,
            gen=gen,
            runtime=runtime,
            on_text=show,
            on_notice=notice,
        )
    except KeyboardInterrupt:
        print(" [stopped]", end="", file=stdout)
    print(file=stdout)
    return "".join(pieces).strip()


def _answer_grounded(line, history, llm, kb, gen, stdout) -> str:  # type: ignore[no-untyped-def]
    from nomoat import rag

    # rag checks the whole answer against its sources before showing it, so it prints once, not token by token.
    try:
        result = rag.ask(line, kb, model=llm, history=history, gen=gen)
    except KeyboardInterrupt:
        print(" [stopped]", file=stdout)
        return ""
    print(result["answer"], file=stdout)
    sources = rag.format_sources(result)
    if sources:
        print(sources, file=stdout)
    return str(result["answer"])


from nomoat._api import expose  # noqa: E402  (nomoat.chat("message") answers one message)

expose(__name__, run)
