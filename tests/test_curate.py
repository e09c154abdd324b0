"""curate (nomoat data build) and extract: each filter on hand-made inputs, then whole builds over a real KB."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fakes import FakeChatModel, FakeEmbedder
from nomoat import cli
from nomoat.answer import rag
from nomoat.answer.citations import verify
from nomoat.config import CurateConfig, parse_duration
from nomoat.dataset import curate, filters
from nomoat.dataset.extract import Pair, extract_pairs, unnumbered
from nomoat.errors import UserError
from nomoat.kb import ingest

CFG = CurateConfig()


# -- chunk selection --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, reason",
    [
        ("Home | About us", "near-empty"),
        ("\n".join(f"- [Page {i}](page{i}.html)" for i in range(12)), "navigation"),
        ("\n".join(f"{i}. Chapter number {i} title" for i in range(1, 12)), "table of contents"),
        (
            "```\n" + "\n".join(f"    call_function(argument_{i}, other_value)" for i in range(10)) + "\n```",
            "code or table",
        ),
        ("The router lives in room 3B and the wifi password is changed every month by the office manager.", None),
    ],
)
def test_skip_reason(text: str, reason: str | None) -> None:
    assert filters.skip_reason(text, CFG) == reason


# -- extractive generators --------------------------------------------------------------------------------------
def test_extract_man_name_definition_option_key_value_and_section() -> None:
    text = (
        "## NAME\n\ngit-stash - Stash the changes in a dirty working directory away\n\n"
        "A stash entry is a commit that records the state of the working directory.\n\n"
        "--keep-index::\n\tAll changes already added to the index are left intact.\n\n"
        "-q\n\n--quiet\n\nBe quiet, only report errors.\n\n"
        "Owner: Platform team\n"
    )
    pairs = {p.generator: p for p in extract_pairs(text, "git-stash")}
    assert pairs["extractive:name"] == Pair(
        "What does git-stash do?", "git-stash: Stash the changes in a dirty working directory away.", "extractive:name"
    )
    assert pairs["extractive:definition"].question == "What is a stash entry?"
    options = [p for p in extract_pairs(text, "git-stash") if p.generator == "extractive:option"]
    assert [p.question for p in options] == [
        "What does the --keep-index option of git-stash do?",
        "What does the -q option of git-stash do?",
    ]
    assert options[1].answer == "-q: Be quiet, only report errors."
    assert pairs["extractive:key-value"].answer == "Owner: Platform team"
    section = extract_pairs(
        "## Meetings\n\nThe weekly sync moved to Thursdays at ten in the morning.", "office", "Notes > Meetings"
    )
    assert section == [
        Pair(
            "What does office say about meetings?",
            "The weekly sync moved to Thursdays at ten in the morning.",
            "extractive:section",
        )
    ]


@pytest.mark.parametrize(
    "title, plain",
    [
        ("8.7. Enumerated Types", "Enumerated Types"),
        ("Chapter 46. PL/Python", "PL/Python"),
        ("E.14. Release 15.7", "Release 15.7"),
        ("Appendix A. Error Codes", "Error Codes"),
        ("II. The SQL Language", "The SQL Language"),
        ("1.2 Getting started", "Getting started"),
        ("A Brief History of PostgreSQL", "A Brief History of PostgreSQL"),  # an article, not a number
        ("3.14 is close to pi", "3.14 is close to pi"),
        ("git-stash", "git-stash"),
    ],
)
def test_unnumbered_drops_section_numbers_only(title: str, plain: str) -> None:
    assert unnumbered(title) == plain


def test_pairs_from_numbered_sections_and_options_pass_asks_check() -> None:
    """Questions that name a section number, or option answers that leave out the option, fail ask's check
    (about half of PostgreSQL's candidate rows did): the pairs are worded so that the source's own words pass."""
    section = "## 8.9.2. cidr\n\nThe cidr type holds an IPv4 or IPv6 network specification. Input follows CIDR."
    options = "-e\n\n--echo\n\nEcho the commands that createuser generates and sends to the server.\n"
    pairs = [*extract_pairs(section, unnumbered("8.9. Network Address Types"), "Data Types > 8.9.2. cidr"),
             *extract_pairs(options, "createuser")]  # fmt: skip
    assert [p.question for p in pairs] == [
        "What does Network Address Types say about cidr?",
        "What does the -e option of createuser do?",
    ]
    for pair, text in zip(pairs, (section, options), strict=True):
        source = [{"path": "doc.html", "location": "1", "text": text}]
        assert verify(f"{pair.answer} [1].", pair.question, source).passed, pair
    bare = "Echo the commands that createuser generates and sends to the server [1]."
    assert not verify(bare, pairs[1].question, [{"path": "doc.html", "location": "1", "text": options}]).passed
    page = extract_pairs("## 8.17. Range Types\n\nRange types are data types representing a range of values.",
                         "Range Types", "8.17. Range Types")  # fmt: skip
    assert [p.question for p in page if p.generator == "extractive:section"] == ["What is Range Types about?"]
    admonition = "## Caution\n\nReplication slots persist across crashes and know nothing about their consumers."
    assert [p for p in extract_pairs(admonition, "Logical Decoding", "Concepts > Caution") if p.generator ==
            "extractive:section"] == []  # fmt: skip


def test_extract_rejects_pronoun_subjects_and_rule_lines() -> None:
    text = (
        "This is the default action.\n\n------------------\nA B C D --soft A B D\n\n"
        "Each returned row is a text array of the matches.\n\n"
        "Replaces the substring that is the first match of the pattern.\n"
    )
    assert extract_pairs(text, "git-reset") == []


# -- filters ----------------------------------------------------------------------------------------------------
CHUNK = "The deploy takes about 7 minutes. Run make deploy ENV=prod from the release branch."


@pytest.mark.parametrize(
    "question, answer, problem",
    [
        ("How long does the deploy take?", "The deploy takes about 7 minutes.", None),
        (
            "How long does the deploy take?",
            "The deploy from the release branch takes about 12 minutes.",
            "answer states a fact its source lacks",
        ),
        (
            "How long does the deploy take?",
            "Bananas are rich in potassium and fibre.",
            "answer not supported by its source",
        ),
        (
            "Who painted the Mona Lisa?",
            "Run make deploy ENV=prod from the release branch.",
            "question not about its source",
        ),
    ],
)
def test_grounding(question: str, answer: str, problem: str | None) -> None:
    assert filters.grounding_problem(Pair(question, answer, "t"), CHUNK, CFG) == problem


@pytest.mark.parametrize(
    "question, answer, problem",
    [
        ("How long does the deploy take?", "About seven minutes from start to end.", None),
        ("Deploy?", "About seven minutes from start to end.", "question length"),
        ("How long does the deploy take?", "Seven.", "answer length"),
        ("Tell me how long the deploy takes", "About seven minutes from start to end.", "not a question"),
        ("How long does the deploy take?", "the deploy take", "answer repeats the question"),
        ("What is the deploy like?", "deploy takes time " * 8, "repetitive"),
        ("What is the checksum?", "3f2a 9b1c 77d0 e4a2 0c11 5b6e 9a8f 1d2e", "mostly not words"),
        ("How can I fix the deploy?", "How can I fix this problem?", "answer is a question"),
        (
            "How long does the deploy take?",
            "Развертывание занимает около семи минут.",
            "language differs between question and answer",
        ),
        (
            "How to use git-check-ignore to exclude files?",
            "How to use git-check-ignore to exclude files.",
            "answer repeats the question",
        ),
        (
            "What is the purpose of this passage?",
            "It shows how the deploy works.",
            "refers to the passage, not the subject",
        ),
    ],
)
def test_quality(question: str, answer: str, problem: str | None) -> None:
    assert filters.quality_problem(Pair(question, answer, "t"), CFG) == problem


def _row(q: str, a: str, source: str = "/d/a.md") -> dict:
    return {
        "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
        "meta": {"source": source},
    }


def test_near_duplicates_keep_the_first() -> None:
    rows = [
        _row("How long does the deploy take?", "The deploy takes about seven minutes on the build machine."),
        _row("How long does the deploy take ?", "The deploy takes about seven minutes on the build machine!"),
        _row("Where is the router?", "The router lives in room 3B next to the printer and the plants."),
    ]
    assert filters.near_duplicates(rows, 0.8) == {1}


def test_split_never_shares_a_document_and_holds_out_about_the_fraction() -> None:
    rows = [_row(f"Question {i} about it?", f"Answer number {i} here.", f"/d/doc{i % 10}.md") for i in range(100)]
    train, evals = filters.split_by_document(rows, 0.2)
    assert len(train) + len(evals) == 100 and 10 <= len(evals) <= 20
    assert not {r["meta"]["source"] for r in train} & {r["meta"]["source"] for r in evals}
    single = [_row("Q one here?", "Answer one.", "/d/only.md")] * 3
    assert filters.split_by_document(single, 0.5) == (single, [])


def test_leaking_eval_answers_are_found() -> None:
    shared = "the release branch is cut every second tuesday by the release manager on call"
    train = [_row("When is the release cut?", shared.capitalize() + ".", "/d/a.html")]
    evals = [
        _row("How often is a release branch cut?", shared + "!", "/d/a.txt"),
        _row("Q?", "Something else entirely."),
    ]
    assert filters.leaking(evals, train) == {0}


def test_model_reply_parsing() -> None:
    assert curate.parse_model_reply("Question: What is X?\nAnswer: X is a tool.") == Pair(
        "What is X?", "X is a tool.", "model"
    )
    assert curate.parse_model_reply("I cannot do that.") is None


def test_parse_duration() -> None:
    assert [parse_duration(t) for t in ("90", "90s", "30m", "3h", "1h30m")] == [90, 90, 1800, 10800, 5400]
    with pytest.raises(ValueError):
        parse_duration("soon")


# -- whole builds -----------------------------------------------------------------------------------------------
PLANTED = "alice.smith@example.com", "+1-202-555-0143", "4111 1111 1111 1111"


@pytest.fixture
def kb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from nomoat.kb import retrieval

    monkeypatch.setattr(retrieval, "_load", lambda name: FakeEmbedder())  # RAG rows search the KB as ask does
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"tool{i}.md").write_text(
            f"# tool{i}\n\n## NAME\n\ntool{i} - Rotate the logs of service number {i} every night\n\n"
            f"## DESCRIPTION\n\nA rotation window is the hour in which tool{i} compresses old logs of service {i}. "
            f"Contact {PLANTED[0]} or call {PLANTED[1]} if rotation {i} fails.\n\n"
            f"--dry-run::\n\tShow which log files of service {i} would be compressed, without touching them.\n\n"
            f"Billing card on file: {PLANTED[2]}\n"
        )
    ingest.run([docs], "t", embedder=FakeEmbedder(), progress=False)
    return docs


def test_build_writes_grounded_split_scrubbed_rows_and_a_card(kb: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "data.jsonl"
    out.parent.mkdir()
    reply = (
        "Question: What does tool0 compress in its rotation window?\nAnswer: tool0 compresses old logs of service 0."
    )
    model = FakeChatModel([reply] * 50)
    summary = curate.build("t", out, model=model, eval_fraction=0.34, progress=False)
    train = [json.loads(line) for line in out.read_text().splitlines()]
    evals = [json.loads(line) for line in (tmp_path / "out" / "data.eval.jsonl").read_text().splitlines()]
    assert (summary["train"], summary["eval"]) == (len(train), len(evals)) and train and evals
    assert not {r["meta"]["source"] for r in train} & {r["meta"]["source"] for r in evals}
    everything = out.read_text() + (tmp_path / "out" / "data.eval.jsonl").read_text()
    for planted in PLANTED:
        assert planted not in everything
    assert summary["pii"]["email"] >= 1 and summary["pii"]["phone"] >= 1
    for row in train + evals:  # ask's prompt, then a cited answer (or "the files do not say")
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert set(row["meta"]) >= {"chunk_ids", "source", "generator", "filters", "question", "answer", "golden"}
        reply = row["messages"][-1]["content"]
        assert reply == rag.FILES_DO_NOT_SAY if row["meta"]["golden"] is None else f"[{row['meta']['golden']}]" in reply
    assert {"extractive", "model"} <= set(summary["generators"])
    card = (tmp_path / "out" / "data.md").read_text()
    assert "Removed by filter" in card and "Personal data replaced" in card
    assert not list((tmp_path / "out").glob("*.partial")) and not list((tmp_path / "out").glob("*.state.jsonl"))


class _Interrupting(FakeChatModel):
    def __init__(self, after: int) -> None:
        super().__init__(["Question: What does tool1 rotate?\nAnswer: tool1 rotates logs of service number 1."] * 99)
        self.after = after

    def chat(self, messages, gen=None, *, on_notice=None):  # type: ignore[no-untyped-def]
        if len(self.calls) == self.after:
            raise KeyboardInterrupt
        return super().chat(messages, gen)


def test_an_interrupted_build_resumes_without_asking_the_model_again(kb: Path, tmp_path: Path) -> None:
    out = tmp_path / "data.jsonl"
    first = _Interrupting(after=3)
    with pytest.raises(KeyboardInterrupt):
        curate.build("t", out, model=first, progress=False)
    assert len((tmp_path / "data.jsonl.state.jsonl").read_text().splitlines()) == 3
    second = FakeChatModel(["Question: What is it?\nAnswer: Nothing much at all here."] * 99)
    summary = curate.build("t", out, model=second, progress=False)
    total_chunks = summary["chunks"] - sum(summary["skipped"].values())
    assert len(second.calls) == total_chunks - 3 and summary["model_chunks"] == total_chunks
    assert not (tmp_path / "data.jsonl.state.jsonl").exists()


def test_a_state_line_cut_by_a_crash_is_dropped_not_glued_to_the_next(kb: Path, tmp_path: Path) -> None:
    out = tmp_path / "data.jsonl"
    with pytest.raises(KeyboardInterrupt):
        curate.build("t", out, model=_Interrupting(after=3), progress=False)
    state = tmp_path / "data.jsonl.state.jsonl"
    whole = state.read_text()
    state.write_text(whole + '{"chunk_id": 99')  # a kill in the middle of writing the fourth entry
    again = _Interrupting(after=2)
    with pytest.raises(KeyboardInterrupt):
        curate.build("t", out, model=again, progress=False)
    lines = state.read_text().splitlines()
    assert len(lines) == 5 and all("chunk_id" in json.loads(line) for line in lines)  # 3 + 2, each whole


def test_no_model_and_max(kb: Path, tmp_path: Path) -> None:
    summary = curate.build("t", tmp_path / "d.jsonl", use_model=False, max_pairs=4, eval_fraction=0, target="chat",
                           progress=False)  # fmt: skip
    assert summary["train"] == 4 and summary["eval"] == 0 and set(summary["generators"]) == {"extractive"}
    every = curate.build("t", tmp_path / "all.jsonl", use_model=False, eval_fraction=0, target="chat", progress=False)
    sources = {json.loads(line)["meta"]["source"] for line in (tmp_path / "d.jsonl").read_text().splitlines()}
    first = sorted({json.loads(line)["meta"]["source"] for line in (tmp_path / "all.jsonl").read_text().splitlines()})
    assert every["train"] > 4 and sources != set(first[: len(sources)])  # a sample, not the first documents' rows
    row = json.loads((tmp_path / "d.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in row["messages"]] == ["user", "assistant"] and "format" not in row["meta"]


def test_max_bounds_the_models_work_not_only_the_output(kb: Path, tmp_path: Path) -> None:
    reply = "Question: What does tool1 rotate every night?\nAnswer: tool1 rotates the logs of service number 1."
    model = FakeChatModel([reply] * 99)
    summary = curate.build("t", tmp_path / "d.jsonl", model=model, max_pairs=2, eval_fraction=0, target="chat",
                           progress=False)  # fmt: skip
    usable = summary["chunks"] - sum(summary["skipped"].values())
    assert summary["train"] <= 2 and len(model.calls) < usable  # it stopped asking once it had enough
    unbounded = FakeChatModel([reply] * 99)
    curate.build("t", tmp_path / "e.jsonl", model=unbounded, eval_fraction=0, target="chat", progress=False)
    assert len(unbounded.calls) == usable


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "build", "--kb", "nope", "--no-model"], "no knowledge base 'nope'"),
        (["data", "build", "--kb", "t", "-o", "x.txt", "--no-model"], "must be a .jsonl"),
        (["data", "build", "--kb", "t", "--time", "soon"], "--time"),
        (["data", "build", "--kb", "t", "--eval-fraction", "1.5", "--no-model"], "--eval-fraction"),
        (["data", "stats"], "name the dataset file"),
    ],
)
def test_cli_user_errors(kb: Path, argv: list[str], message: str, capsys) -> None:  # type: ignore[no-untyped-def]
    assert cli.main(argv) == 1
    assert message in capsys.readouterr().err


def test_cli_build_json(kb: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "cli.jsonl"
    assert cli.main(["data", "build", "--kb", "t", "-o", str(out), "--no-model", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train"] + summary["eval"] > 0 and Path(summary["card"]).exists()


def test_an_unknown_target_is_a_user_error(kb: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--for"):
        curate.build("t", tmp_path / "x.jsonl", use_model=False, target="sft")


def test_unknown_kb_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        curate.build("missing", tmp_path / "x.jsonl", use_model=False)
