"""The Python API is the CLI's: one plain function per command, with the command's flags as arguments, listed by
``help(nomoat)`` and in the README; ``--help`` shows the defaults the code really uses."""

from __future__ import annotations

import argparse
import inspect
import json
import pydoc
import re
from pathlib import Path

import pytest

import nomoat
from fakes import FakeChatModel, FakeEmbedder
from nomoat import api, cli
from nomoat.config import EvalConfig, GenerationConfig, RagConfig, RuntimeConfig, SearchConfig, TuneConfig
from nomoat.errors import UserError

README = Path(__file__).resolve().parents[1] / "README.md"
FUNCTION_OF = {  # command -> the API function its handler calls
    "chat": api.chat, "models": api.models, "ingest": api.ingest, "search": api.search, "ask": api.ask,
    "data": api.build_dataset, "tune": api.tune, "export": api.export, "eval": api.evaluate, "serve": api.serve,
    "kb": (api.kb_info, api.adapt_kb), "learn": api.learn,
}  # fmt: skip
OFFICE_MD = "# Office notes\n\nThe office wifi password is hunter42 and the router lives in room 3B.\n"


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _dests(p: argparse.ArgumentParser) -> set[str]:
    return {a.dest for a in p._actions if a.dest != "help"} - cli.CLI_ONLY


def test_help_lists_the_functions_and_the_readme_lists_the_same() -> None:
    text = pydoc.render_doc(nomoat, renderer=pydoc.plaintext)
    functions = text.split("FUNCTIONS", 1)[1]
    documented = set(re.findall(r"^    ([a-z]\w*)\(", functions, re.M))  # not the lazy __getattr__ / __dir__
    assert documented == set(nomoat.__all__)
    block = README.read_text().split("## Python API", 1)[1].split("```", 2)[1]
    assert set(re.findall(r"nomoat\.(\w+)\(", block)) == set(nomoat.__all__)
    assert all(inspect.isfunction(getattr(nomoat, name)) for name in nomoat.__all__)


def test_every_flag_is_an_argument_of_the_commands_function() -> None:
    assert set(FUNCTION_OF) == set(cli.COMMANDS)
    for command, parser in _subparsers().items():
        functions = FUNCTION_OF[command] if isinstance(FUNCTION_OF[command], tuple) else (FUNCTION_OF[command],)
        params = {p for f in functions for p in inspect.signature(f).parameters}
        flags = _dests(parser) - ({"file"} if command == "data" else set())
        assert flags <= params, f"{command}: flags without an argument: {flags - params}"
    data = _dests(_subparsers()["data"])
    assert {"file", "output"} <= data and {"file", "output"} <= set(inspect.signature(api.import_dataset).parameters)


def _help(command: str) -> str:
    """The options part of ``nomoat COMMAND --help``, whitespace collapsed."""
    return " ".join(_subparsers()[command].format_help().split("options:", 1)[1].split())


def _default(help_text: str, flag: str) -> str:
    found = re.search(rf"(?:^| ){re.escape(flag)} [A-Z_]+(?:, -\w [A-Z_]+)? [^(]*\(default:? ([^)]*)\)", help_text)
    assert found, f"{flag}: no default shown"
    return found.group(1)


def test_help_shows_the_defaults_the_code_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rag, tune, evals = RagConfig(), TuneConfig(), EvalConfig()
    ask = _help("ask")
    assert _default(ask, "--max-tokens") == str(rag.max_answer_tokens)
    assert float(_default(ask, "--temperature")) == rag.answer_temperature
    assert _default(ask, "-k") == str(rag.k)
    assert _default(ask, "--ctx").startswith(str(RuntimeConfig().n_ctx))
    chat = _help("chat")
    plain = GenerationConfig()
    assert _default(chat, "--max-tokens") == f"{plain.max_tokens}; {rag.max_answer_tokens} from a knowledge base"
    assert _default(chat, "--temperature").startswith(f"{plain.temperature:g}; ")
    assert _default(_help("search"), "-k") == str(SearchConfig().k)
    tune_help = _help("tune")
    for flag, value in [("--rank", tune.rank), ("--batch-size", tune.batch_size), ("--max-length", tune.max_length),
                        ("--seed", tune.seed), ("--lr", f"{tune.lr:g}")]:  # fmt: skip
        assert _default(tune_help, flag) == str(value), flag
    eval_help = _help("eval")
    assert (_default(eval_help, "--limit"), _default(eval_help, "--seed")) == (str(evals.limit), str(evals.seed))

    # ... and those are what the code uses when a flag is not given: ask's sampling settings, search's k
    _office_kb(tmp_path, monkeypatch)
    model = FakeChatModel("The office wifi password is hunter42 [1].")
    nomoat.ask("what is the office wifi password?", kb="t", model=model)
    (gen,) = model.gens
    assert (gen.max_tokens, gen.temperature) == (rag.max_answer_tokens, rag.answer_temperature)
    (tmp_path / "docs" / "more.md").write_text("# More\n\nAnother page about the office.\n")
    nomoat.ingest([tmp_path / "docs"], kb="t", embedder=FakeEmbedder())
    assert len(nomoat.search("office", kb="t")) == min(SearchConfig().k, 2)


def _office_kb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from nomoat.kb import retrieval

    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "office.md").write_text(OFFICE_MD)
    nomoat.ingest([docs], kb="t", embedder=FakeEmbedder())
    monkeypatch.setattr(retrieval, "_load", lambda name: FakeEmbedder())  # the KB records the fake's name
    return docs


def test_each_function_runs_with_the_cli_arguments(
    tmp_path: Path, tiny_gguf: Path, tiny_gguf_4k: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = _office_kb(tmp_path, monkeypatch)
    assert [m["name"] for m in nomoat.models([tiny_gguf])] == ["tiny"]
    assert nomoat.ingest(docs, kb="t", embedder=FakeEmbedder())["unchanged"] == 1
    (hit,) = nomoat.search("wifi password", kb="t", k=1)
    assert hit["path"].endswith("office.md")

    runtime = {"ctx": 2048, "threads": 1}
    answer = nomoat.ask("what is the office wifi password?", kb="t", model=tiny_gguf_4k, k=2, max_tokens=8,
                        temperature=0.0, seed=1, **runtime)  # fmt: skip
    assert answer["grounded"] and "hunter42" in answer["answer"]
    grounded = nomoat.chat("what is the office wifi password?", kb="t", model=tiny_gguf_4k, **runtime)
    assert grounded is not None and grounded["citations"][0]["path"].endswith("office.md")
    plain = nomoat.chat("hello", model=tiny_gguf, no_kb=True, max_tokens=3, temperature=0.5, seed=3, ctx=512)
    assert plain is not None and plain["usage"]["completion_tokens"] <= 3 and "citations" not in plain
    with pytest.raises(UserError, match="temperature"):
        nomoat.chat("hello", model=tiny_gguf, no_kb=True, temperature=9)

    built = nomoat.build_dataset(
        kb="t", output=tmp_path / "d.jsonl", max=3, no_model=True, eval_fraction=0.0, target="chat"
    )
    assert 1 <= built["train"] <= 3 and Path(built["output"]).is_file()
    assert nomoat.dataset_stats(built["output"])["rows"] == built["train"]
    alpaca = tmp_path / "a.jsonl"
    alpaca.write_text(json.dumps({"instruction": "Say hi", "output": "Hi!"}) + "\n")
    assert nomoat.import_dataset(alpaca, output=tmp_path / "a.nomoat.jsonl")["rows"] == 1

    summary = nomoat.tune(built["output"], model=tiny_gguf, steps=2, rank=2, batch_size=2, max_length=256,
                          output=tmp_path / "run", threads=1, seed=1)  # fmt: skip
    assert summary["steps"] == 2 and json.loads((tmp_path / "run" / "config.json").read_text())["tune"]["rank"] == 2
    exported = nomoat.export(tmp_path / "run", format="hf")
    assert [f["format"] for f in exported["files"]] == ["hf"]

    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"question": "What is the wifi password?", "answer": "hunter42"}) + "\n")
    result = nomoat.evaluate(model=tiny_gguf_4k, kb="t", questions=questions, limit=1, seed=0,
                             output=tmp_path / "report.html")  # fmt: skip
    assert set(result["table"]) == {"base", "base+RAG"} and Path(result["report"]).is_file()
    with pytest.raises(UserError, match="--no-auth is refused"):
        nomoat.serve(host="0.0.0.0", no_auth=True, model=tiny_gguf)  # refused before anything loads
    with pytest.raises(UserError, match="--port"):
        nomoat.serve(port=70000, model=tiny_gguf)

    assert [k["name"] for k in nomoat.list_kbs()] == ["t"] and nomoat.kb_info("t")["documents"] == 1
    nomoat.remove_kb("t")
    assert nomoat.list_kbs() == []
