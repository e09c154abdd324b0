"""The CLI on a tiny model: exit codes, JSON shape, errors as one line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from nomoat import cli
from nomoat.answer import chat
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


# -- grounded: ask and chat over a knowledge base (fake embedder, tiny random model) ----------------------------
OFFICE_MD = (
    "# Office notes\n\nThe office wifi password is hunter42 and the router lives in room 3B.\n\n"
    "## Meetings\n\nWe decided to move the weekly sync to Thursdays at 10:00.\n"
)


@pytest.fixture
def office_kb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from fakes import FakeEmbedder
    from nomoat.kb import ingest, retrieval

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "office.md").write_text(OFFICE_MD)
    ingest.run([docs], "default", embedder=FakeEmbedder(), progress=False)
    monkeypatch.setattr(retrieval, "_load", lambda name: FakeEmbedder())  # the KB records the fake's name
    return docs / "office.md"


def test_ask_json_cites_a_verbatim_quote(office_kb: Path, tiny_gguf_4k: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    rc = cli.main(["ask", "what is the office wifi password?", "--json", "--model", str(tiny_gguf_4k)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"answer", "grounded", "citations", "model"}
    assert out["grounded"] is True and out["model"] == "tiny-4k"
    # a random tiny model cannot pass the fact check, so the answer is the extracted sentence
    assert out["mode"] == "extractive" and "hunter42" in out["answer"]
    (citation,) = out["citations"]
    assert citation["path"] == str(office_kb) and citation["quote"] in office_kb.read_text()


def test_ask_abstains_when_the_files_do_not_say(office_kb: Path, tiny_gguf_4k: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    rc = cli.main(["ask", "what is the capital of France?", "--model", str(tiny_gguf_4k)])
    assert rc == 0
    assert "do not hold an answer" in capsys.readouterr().out


def test_chat_grounds_each_turn_and_prints_sources(office_kb: Path, tiny_gguf_4k: Path) -> None:
    stdout = io.StringIO()
    chat.interactive(
        model=tiny_gguf_4k,
        kb="default",
        runtime=RuntimeConfig(n_ctx=2048, n_threads=1),
        stdin=io.StringIO("what is the office wifi password?\n/exit\n"),
        stdout=stdout,
    )
    text = stdout.getvalue()
    assert "answering from knowledge base 'default'" in text
    assert "Sources:" in text and f"[1] {office_kb}" in text


def test_chat_once_uses_the_default_kb_unless_told_not_to(office_kb: Path, tiny_gguf_4k: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    base = ["chat", "--once", "what is the office wifi password?", "--json", "--model", str(tiny_gguf_4k)]
    assert cli.main(base) == 0
    assert json.loads(capsys.readouterr().out)["grounded"] is True
    assert cli.main([*base, "--no-kb", "--max-tokens", "3"]) == 0
    assert "grounded" not in json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["chat", "--once", "hi", "--kb", "nope"], "no knowledge base 'nope'"),
        (["chat", "--once", "hi", "--kb", "x", "--no-kb"], "contradict"),
        (["ask", "anything", "--kb", "nope"], "no knowledge base 'nope'"),
        (["ask", "  "], "empty"),
        (["ask", "q", "-k", "0"], "k must be at least 1"),
        (["kb", "adapt", "nope"], "no knowledge base 'nope'"),
        (["kb", "adapt", "--kb", "nope", "--undo"], "no knowledge base 'nope'"),
    ],
)
def test_grounding_user_errors(argv: list[str], message: str, capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
