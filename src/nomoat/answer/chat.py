"""``nomoat chat``: talk to a model, one message (``--once``) or interactively with history.

With a knowledge base (the default one exists, or ``--kb NAME``) every turn is grounded: :func:`nomoat.rag.ask`
retrieves with the conversation in mind, checks the answer against its sources, and the sources are printed under
it. Without one (or with ``--no-kb``) it is plain chat with the model.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from nomoat.config import DEFAULT_KB, ChatConfig, GenerationConfig, RagConfig, RuntimeConfig
from nomoat.errors import UserError
from nomoat.settings import generation_settings

if TYPE_CHECKING:
    from nomoat.policy.rules import Policy

HELP = "commands: /exit (or Ctrl-D) quits, /reset forgets the conversation, /help shows this"


def run(
    message: str,
    *,
    model: str | Path | None = None,
    kb: str | None = None,
    use_kb: bool = True,
    system: str | None = None,
    history: list[dict[str, str]] | None = None,
    gen: GenerationConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    runtime: RuntimeConfig | None = None,
    on_text: Callable[[str], None] | None = None,
    on_notice: Callable[[str], None] | None = None,
    policy: Policy | None = None,
) -> dict[str, Any]:
    """Answer one message: from knowledge base ``kb`` (or the default one, when it exists) unless ``use_kb`` is
    False, else plainly from the model.

    A grounded answer is :func:`nomoat.answer.rag.ask`'s (checked, with citations); a plain one is
    ``{"answer", "model", "usage", "finish_reason", "notices"}``. ``gen`` is the full sampling settings; without
    it, the mode's defaults (:meth:`RagConfig.generation` or :class:`GenerationConfig`) with ``overrides``
    (``max_tokens``, ``temperature``, ``seed``) applied. ``history`` holds earlier turns; ``on_text`` receives the
    answer as it streams (a grounded one once, after its check). Under a ``policy`` (the owner's rules) the
    message is checked before anything runs and a plain answer streams one screened sentence at a time.
    """
    if not message or not message.strip():
        raise UserError("the message is empty")
    ground = grounding_kb(kb, use_kb)
    gen = gen or generation_settings(RagConfig().generation() if ground else GenerationConfig(), **(overrides or {}))
    if ground:
        from nomoat.answer import rag

        return dict(rag.ask(message, ground, model=model, history=history, gen=gen, runtime=runtime, on_text=on_text,
                            policy=policy))  # fmt: skip
    if policy is not None and (refused := _refused(message, model, history, policy, on_text)) is not None:
        return refused
    return _plain(message, model, system, history, gen, runtime, on_text, on_notice, policy)


def _refused(message, model, history, policy, on_text) -> dict[str, Any] | None:  # type: ignore[no-untyped-def]
    """The refusal of a plain chat message by the policy's input rules (or ``kb_only``), else None."""
    refusal = policy.check_input([message, *(m.get("content", "") for m in history or ())], plain=True)
    if refusal is None:
        return None
    from nomoat.llm.models import resolve

    answer = policy.wording(refusal)
    if on_text:
        on_text(answer)
    return {"answer": answer, "model": resolve(model).name, "usage": {"prompt_tokens": 0, "completion_tokens": 0},
            "finish_reason": "content_filter", "notices": [], "policy": [refusal]}  # fmt: skip


def _plain(message, model, system, history, gen, runtime, on_text, on_notice, policy=None) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    from nomoat.llm import runtime as rt

    guard = policy.stream(on_text) if policy is not None else None
    show = guard.feed if guard is not None else on_text
    llm = rt.load(model, runtime)
    messages = ([{"role": "system", "content": system}] if system else []) + list(history or [])
    messages.append({"role": "user", "content": message})
    with llm.lock:
        generation = llm.chat(messages, gen, on_notice=on_notice)
        pieces = []
        for piece in generation:
            pieces.append(piece)
            if show and show(piece) is False:  # the policy withdrew or cut the answer: stop generating
                break
    result = {
        "answer": guard.close() if guard is not None else "".join(pieces).strip(),
        "model": llm.name,
        "usage": {"prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens},
        "finish_reason": generation.finish_reason,
        "notices": generation.notices,
    }
    if guard is not None and guard.events:
        result["policy"] = guard.events
        result["finish_reason"] = "content_filter" if guard.withdrawn else result["finish_reason"]
    return result


def grounding_kb(kb: str | None, use_kb: bool = True) -> str | None:
    """The knowledge base to answer from: ``kb``, which must exist (UserError), or the default one when it exists;
    None for plain chat (``use_kb`` False, or no default KB yet)."""
    from nomoat import paths

    if not use_kb:
        if kb is not None:
            raise UserError("--kb and --no-kb contradict each other; use one")
        return None
    if kb is not None:
        if not paths.kb_path(kb).exists():
            raise UserError(f"no knowledge base '{kb}': run `nomoat ingest PATH --kb {kb}` first, or chat with --no-kb")
        return kb
    return DEFAULT_KB if paths.kb_path(DEFAULT_KB).exists() else None


def interactive(
    *,
    model: str | Path | None = None,
    kb: str | None = None,
    use_kb: bool = True,
    config: ChatConfig | None = None,
    gen: GenerationConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    runtime: RuntimeConfig | None = None,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    policy: Policy | None = None,
) -> None:
    """The chat loop: streams each answer, keeps the history, Ctrl-C stops an answer, Ctrl-D or /exit quits.

    Grounded as :func:`run` decides (``kb``, else the default KB when it exists, unless ``use_kb`` is False): each
    turn is then answered by :func:`nomoat.answer.rag.ask` and its sources are printed under the answer."""
    from nomoat.llm import runtime as rt

    kb = grounding_kb(kb, use_kb)
    gen = gen or generation_settings(RagConfig().generation() if kb else GenerationConfig(), **(overrides or {}))
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
            answer = _answer_grounded(line, history, llm, kb, gen, stdout, policy)
        else:
            answer = _answer_streaming(line, history, model, config, gen, runtime, stdout, policy)
        if answer is not None:  # a refused question stays out of the history (it would refuse every later turn)
            history += [{"role": "user", "content": line}, {"role": "assistant", "content": answer}]


def _answer_streaming(line, history, model, config, gen, runtime, stdout, policy=None) -> str | None:  # type: ignore[no-untyped-def]
    pieces: list[str] = []

    def show(text: str) -> None:
        pieces.append(text)
        print(text, end="", file=stdout, flush=True)

    def notice(text: str) -> None:
        print(f"({text})", file=sys.stderr)

    result: dict[str, Any] = {}
    try:
        result = run(line, model=model, use_kb=False, system=config.system, history=history, gen=gen,
                     runtime=runtime, on_text=show, on_notice=notice, policy=policy)  # fmt: skip
    except KeyboardInterrupt:
        print(" [stopped]", end="", file=stdout)
    print(file=stdout)
    return None if _was_refused(result) else "".join(pieces).strip()


def _was_refused(result: Mapping[str, Any]) -> bool:
    return any(e.get("action") == "refused" for e in result.get("policy", ()))


def _answer_grounded(line, history, llm, kb, gen, stdout, policy=None) -> str | None:  # type: ignore[no-untyped-def]
    from nomoat.answer import rag

    # rag checks the whole answer against its sources before showing it, so it prints once, not token by token.
    try:
        result = rag.ask(line, kb, model=llm, history=history, gen=gen, policy=policy)
    except KeyboardInterrupt:
        print(" [stopped]", file=stdout)
        return ""
    print(result["answer"], file=stdout)
    if _was_refused(result):
        return None
    sources = rag.format_sources(result)
    if sources:
        print(sources, file=stdout)
    return str(result["answer"])
