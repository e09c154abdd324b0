"""The CLI on a tiny model: exit codes, JSON shape, errors as one line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from nomoat import chat, cli
from nomoat.config import GenerationConfig, RuntimeConfig


def test_no_command_prints_help_and_exits_2(capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli.main([]) == 2
    assert "chat" in capsys.readouterr().out


def test_usage_error_exits_2() -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["chat", "--temperature", "hot"])
    assert info.value.code == 2


def test_chat_once_json(tiny_gguf: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    rc = cli.main(["chat", "--once", "hello", "--json", "--model", str(tiny_gguf), "--max-tokens", "5"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "tiny" and isinstance(out["answer"], str)
    assert out["usage"]["completion_tokens"] <= 5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["chat", "--once", "hi", "--model", "/nonexistent/model.gguf"], "model not found"),
        (["chat", "--once", "   "], "empty"),
        (["chat", "--once", "hi", "--max-tokens", "0"], "--max-tokens"),
        (["chat", "--once", "hi", "--temperature", "-1"], "--temperature"),
        (["chat", "--json"], "--json needs --once"),
        (["chat", "--once", "hi", "--ctx", "10"], "--ctx"),
    ],
)
def test_user_errors_are_one_line_exit_1(argv: list[str], message: str, capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nomoat: error:") and message in err


def test_interactive_chat_keeps_history_and_exits(tiny_gguf: Path) -> None:
    stdin = io.StringIO("hello\n/reset\nsecond\n/exit\nnever read\n")
    stdout = io.StringIO()
    chat.interactive(
        model=tiny_gguf,
        gen=GenerationConfig(max_tokens=3),
        runtime=RuntimeConfig(n_ctx=512, n_threads=1),
        stdin=stdin,
        stdout=stdout,
    )
    text = stdout.getvalue()
    assert text.count("bot> ") == 2
    assert "(conversation forgotten)" in text


def test_chat_run_passes_history(tiny_gguf: Path) -> None:
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with_history = chat.run("c", model=tiny_gguf, history=history, gen=GenerationConfig(max_tokens=1))
    without = chat.run("c", model=tiny_gguf, gen=GenerationConfig(max_tokens=1))
    assert with_history["usage"]["prompt_tokens"] > without["usage"]["prompt_tokens"]
