"""Chat datasets: format detection, conversion to canonical rows, per-line errors, atomic import, stats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nomoat.dataset.formats import detect_format, import_file, read_rows, stats, to_messages, write_rows
from nomoat.errors import UserError


def _jsonl(path: Path, *lines: object) -> Path:
    """Write each line: a str as is (for broken JSON), anything else as JSON."""
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines),
        encoding="utf-8",
    )
    return path


def _msgs(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": r, "content": c} for r, c in pairs]


OPENAI = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "name": "bot"},
    ],
    "meta": {"source": "notes.md"},
    "id": 7,
}
SHAREGPT = {
    "id": "x1",
    "conversations": [
        {"from": "system", "value": "Sys"},
        {"from": "human", "value": "Q1"},
        {"from": "gpt", "value": "A1"},
        {"from": "user", "value": "Q2"},
        {"from": "chatgpt", "value": "A2"},
        {"from": "human", "value": "Q3"},
        {"from": "bard", "value": "A3"},
    ],
}
ALPACA = {"instruction": "Translate to French", "input": "cat", "output": "chat"}
ALPACA_NO_INPUT = {"instruction": "Say hi", "input": "", "output": "hi"}


# -- detection and conversion ----------------------------------------------------------------------
def test_detect_format() -> None:
    assert detect_format(OPENAI) == "messages"
    assert detect_format(SHAREGPT) == "sharegpt"
    assert detect_format(ALPACA) == "alpaca"
    assert detect_format({"instruction": "x"}) == "alpaca"
    assert detect_format({"prompt": "x", "completion": "y"}) is None


def test_openai_messages_keep_role_content_and_meta_only() -> None:
    assert to_messages(OPENAI) == {
        "messages": _msgs(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!")),
        "meta": {"source": "notes.md"},
    }


def test_sharegpt_speakers_map_to_roles() -> None:
    assert to_messages(SHAREGPT) == {
        "messages": _msgs(
            ("system", "Sys"),
            ("user", "Q1"),
            ("assistant", "A1"),
            ("user", "Q2"),
            ("assistant", "A2"),
            ("user", "Q3"),
            ("assistant", "A3"),
        )
    }
    bing = {"conversations": [{"from": "user", "value": "q"}, {"from": "bing", "value": "a"}]}
    assert to_messages(bing) == {"messages": _msgs(("user", "q"), ("assistant", "a"))}
    assistant = {"conversations": [{"from": "human", "value": "q"}, {"from": "assistant", "value": "a"}]}
    assert to_messages(assistant) == {"messages": _msgs(("user", "q"), ("assistant", "a"))}


def test_alpaca_joins_instruction_and_input() -> None:
    assert to_messages(ALPACA) == {"messages": _msgs(("user", "Translate to French\n\ncat"), ("assistant", "chat"))}
    assert to_messages(ALPACA_NO_INPUT) == {"messages": _msgs(("user", "Say hi"), ("assistant", "hi"))}
    no_input_key = {"instruction": "Say hi", "output": "hi", "meta": {"generator": "g"}}
    assert to_messages(no_input_key) == {
        "messages": _msgs(("user", "Say hi"), ("assistant", "hi")),
        "meta": {"generator": "g"},
    }


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"prompt": "x"}, "unknown format: expected messages, conversations, or instruction/output"),
        ({"messages": "hi"}, "messages: expected a list"),
        ({"messages": []}, "messages: empty list"),
        ({"messages": ["hi"]}, "message 1: expected an object"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}]},
            "message 2: role 'bot' is not system/user/assistant",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ["a"]}]},
            "message 2: content: expected a string",
        ),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " \n"}]},
            "message 2: empty content",
        ),
        ({"messages": [{"role": "user", "content": "q"}]}, "last message must be from the assistant"),
        ({"messages": [{"role": "system", "content": "s"}]}, "no user/assistant messages"),
        (
            {"messages": [{"role": "assistant", "content": "a"}]},
            "message 1: the first message after any system message must be from the user",
        ),
        (
            {"messages": _msgs(("user", "q"), ("user", "q2"), ("assistant", "a"))},
            "message 2: roles must alternate user/assistant",
        ),
        (
            {"messages": _msgs(("user", "q"), ("system", "s"), ("assistant", "a"))},
            "message 2: a system message is only allowed first",
        ),
        (
            {"messages": _msgs(("user", "q"), ("assistant", "a")), "meta": "x"},
            "meta: expected an object",
        ),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]},
            "message 2: from 'bot' is not human/user/gpt/assistant/system",
        ),
        ({"instruction": "do", "output": 3}, "output: expected a string"),
        ({"instruction": "do"}, "output: missing"),
        ({"output": "x"}, "instruction: missing"),
        ({"instruction": "do", "input": 1, "output": "x"}, "input: expected a string"),
        ({"instruction": " ", "output": "x"}, "instruction: empty"),
    ],
)
def test_bad_rows_give_specific_reasons(row: dict, reason: str) -> None:
    with pytest.raises(ValueError) as exc:
        to_messages(row)
    assert str(exc.value) == reason


# -- reading and importing files -------------------------------------------------------------------
def test_import_reports_each_bad_line_and_keeps_good_rows(tmp_path: Path) -> None:
    src = _jsonl(
        tmp_path / "mixed.jsonl",
        OPENAI,  # 1
        '{"messages": [',  # 2 invalid JSON
        [1, 2],  # 3 array
        "",  # 4 blank, skipped
        {"text": "hello"},  # 5 unknown format
        SHAREGPT,  # 6
        {"messages": _msgs(("user", "q"), ("bot", "a"))},  # 7 bad role
        {"messages": _msgs(("user", "q"), ("assistant", ""))},  # 8 empty content
        {"messages": _msgs(("user", "q"), ("user", "q"), ("assistant", "a"))},  # 9 non-alternating
        {"messages": _msgs(("user", "q"), ("assistant", "a"), ("user", "q"))},  # 10 last from user
        {"instruction": "i", "output": None},  # 11 non-string output
        {"instruction": "i", "input": ""},  # 12 missing output
        ALPACA,  # 13
        ALPACA_NO_INPUT,  # 14
    )
    dest = tmp_path / "out" / "data.jsonl"
    result = import_file(src, dest)

    assert result["rows"] == 4
    assert result["formats"] == {"messages": 1, "sharegpt": 1, "alpaca": 2}
    assert result["output"] == str(dest)
    bad = {b["line"]: b["error"] for b in result["bad"]}
    assert list(bad) == [2, 3, 5, 7, 8, 9, 10, 11, 12]
    assert bad[2].startswith("invalid JSON: ")
    assert bad[3] == "expected a JSON object, got an array"
    assert bad[5] == "unknown format: expected messages, conversations, or instruction/output"
    assert bad[7] == "message 2: role 'bot' is not system/user/assistant"
    assert bad[8] == "message 2: empty content"
    assert bad[9] == "message 2: roles must alternate user/assistant"
    assert bad[10] == "last message must be from the assistant"
    assert bad[11] == "output: expected a string"
    assert bad[12] == "output: missing"

    written = [json.loads(line) for line in dest.read_text(encoding="utf-8").splitlines()]
    assert written == [to_messages(OPENAI), to_messages(SHAREGPT), to_messages(ALPACA), to_messages(ALPACA_NO_INPUT)]


def test_read_rows_yields_line_numbers_rows_and_errors(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "a.jsonl", ALPACA, "   ", '"just a string"', "null", ALPACA_NO_INPUT)
    assert list(read_rows(src)) == [
        (1, to_messages(ALPACA), None),
        (3, None, "expected a JSON object, got a string"),
        (4, None, "expected a JSON object, got null"),
        (5, to_messages(ALPACA_NO_INPUT), None),
    ]


def test_import_is_atomic_and_round_trips(tmp_path: Path) -> None:
    unicode_row = {"messages": _msgs(("user", "Ça va? 日本語"), ("assistant", "Très bien 🙂\nmerci"))}
    src = _jsonl(tmp_path / "src.jsonl", OPENAI, SHAREGPT, ALPACA, unicode_row)
    dest = tmp_path / "data.jsonl"
    import_file(src, dest)

    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.jsonl", "src.jsonl"]  # no .partial left
    assert "日本語" in dest.read_text(encoding="utf-8")  # UTF-8, not \\u escapes
    expected = [to_messages(r) for r in (OPENAI, SHAREGPT, ALPACA, unicode_row)]
    assert list(read_rows(dest)) == [(i, row, None) for i, row in enumerate(expected, 1)]
    # importing the canonical output again changes nothing
    again = tmp_path / "again.jsonl"
    assert import_file(dest, again)["formats"] == {"messages": 4}
    assert again.read_bytes() == dest.read_bytes()


def test_only_bad_rows_raises_naming_lines_and_leaves_dest_alone(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "bad.jsonl", "{oops", {"x": 1}, "", [1], {"instruction": "i"}, "nope")
    dest = tmp_path / "data.jsonl"
    dest.write_text("previous\n", encoding="utf-8")
    with pytest.raises(UserError) as exc:
        import_file(src, dest)
    message = str(exc.value)
    assert "no valid rows" in message
    assert "line 1: invalid JSON" in message
    assert "line 2: unknown format" in message
    assert "line 4: expected a JSON object" in message
    assert "(and 2 more bad lines)" in message
    assert "\n" not in message
    assert dest.read_text(encoding="utf-8") == "previous\n"
    assert not list(tmp_path.glob("*.partial"))


def test_empty_file_raises(tmp_path: Path) -> None:
    src = tmp_path / "empty.jsonl"
    src.write_text("\n\n", encoding="utf-8")
    with pytest.raises(UserError, match="no rows"):
        import_file(src, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()


def test_missing_file_raises_user_error(tmp_path: Path) -> None:
    dest = tmp_path / "out" / "data.jsonl"
    with pytest.raises(UserError, match="no such file"):
        import_file(tmp_path / "nope.jsonl", dest)
    assert not dest.parent.exists()
    with pytest.raises(UserError, match="no such file"):
        read_rows(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match="no such file"):
        stats(tmp_path / "nope.jsonl")


def test_directory_raises_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read"):
        import_file(tmp_path, tmp_path / "out.jsonl")


def test_non_utf8_raises_user_error(tmp_path: Path) -> None:
    src = tmp_path / "latin1.jsonl"
    good = json.dumps(ALPACA).encode()
    src.write_bytes(good + b"\n" + '{"instruction": "caf\u00e9", "output": "x"}\n'.encode("latin-1"))
    dest = tmp_path / "data.jsonl"
    with pytest.raises(UserError, match=r"line 2 is not UTF-8"):
        import_file(src, dest)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latin1.jsonl"]


def test_utf8_bom_and_crlf_are_accepted(tmp_path: Path) -> None:
    src = tmp_path / "bom.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + json.dumps(ALPACA).encode() + b"\r\n" + json.dumps(ALPACA_NO_INPUT).encode())
    assert [row for _, row, _ in read_rows(src)] == [to_messages(ALPACA), to_messages(ALPACA_NO_INPUT)]


def test_write_rows_is_atomic_jsonl(tmp_path: Path) -> None:
    rows = [to_messages(ALPACA), {"messages": _msgs(("user", "é"), ("assistant", "ü")), "meta": {"source": "s"}}]
    path = tmp_path / "sub" / "rows.jsonl"
    assert write_rows(path, rows) == 2
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") == 2 and "é" in text
    assert [json.loads(line) for line in text.splitlines()] == rows
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]


def test_write_rows_failure_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("old\n", encoding="utf-8")

    def rows():
        yield to_messages(ALPACA)
        raise RuntimeError("generator failed")

    with pytest.raises(RuntimeError):
        write_rows(path, rows())
    assert path.read_text(encoding="utf-8") == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


# -- stats -----------------------------------------------------------------------------------------
@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    return _jsonl(
        tmp_path / "small.jsonl",
        # 3 messages, 2 turns, chars 2 + 6 = 8 (system text not counted), words 1 + 1 = 2
        {
            "messages": _msgs(("system", "be nice"), ("user", "hi"), ("assistant", "hello!")),
            "meta": {"source": "a.md", "generator": "qa-v1"},
        },
        # 4 messages, 4 turns, chars 5 + 3 + 7 + 2 = 17, words 2 + 1 + 2 + 1 = 6
        {
            "messages": _msgs(("user", "a bcd"), ("assistant", "yes"), ("user", "why not"), ("assistant", "ok")),
            "meta": {"source": "a.md"},
        },
        "not json",  # line 3
        # 2 messages, 2 turns, chars 11 + 5 = 16, words 3 + 1 = 4; no meta
        ALPACA_NO_INPUT | {"instruction": "one two thr", "output": "xxxxx"},
        # 2 messages, 2 turns, chars 1 + 1 = 2, words 2; source not a string
        {"messages": _msgs(("user", "q"), ("assistant", "a")), "meta": {"source": 5, "generator": "qa-v1"}},
    )


def test_stats_exact_counts(small_dataset: Path) -> None:
    assert stats(small_dataset) == {
        "rows": 4,
        "bad": [{"line": 3, "error": "invalid JSON: Expecting value at column 1"}],
        "messages": 11,
        "turns_per_row": {"min": 2, "mean": 2.5, "max": 4},
        "chars": {"min": 2, "mean": 10.75, "max": 17},
        "tokens": None,
        "sources": {"a.md": 2, "(unknown)": 2},
        "generators": {"qa-v1": 2},
    }


def test_stats_with_token_counter(small_dataset: Path) -> None:
    seen: list[str] = []

    def count(text: str) -> int:
        seen.append(text)
        return len(text.split())

    result = stats(small_dataset, count_tokens=count)
    assert result["tokens"] == {"min": 2, "mean": 3.5, "max": 6}
    assert "be nice" not in seen  # system prompts are not counted
    assert stats(small_dataset, count_tokens=lambda s: len(s.split()))["tokens"] == result["tokens"]


def test_stats_of_file_with_no_valid_rows(tmp_path: Path) -> None:
    src = _jsonl(tmp_path / "bad.jsonl", [1])
    result = stats(src, count_tokens=len)
    assert result["rows"] == 0
    assert result["bad"] == [{"line": 1, "error": "expected a JSON object, got an array"}]
    assert result["turns_per_row"] == {"min": None, "mean": None, "max": None}
    assert result["tokens"] == {"min": None, "mean": None, "max": None}
    assert result["sources"] == {} and result["generators"] == {}
