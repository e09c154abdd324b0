"""Evaluation metrics on answers whose scores are known exactly."""

from __future__ import annotations

import pytest

from nomoat import evaluate, rag
from nomoat.errors import UserError


def test_normalize_drops_case_punctuation_and_articles() -> None:
    assert evaluate.normalize("The  `git reset --soft` command, an Option!") == "git reset soft command option"


@pytest.mark.parametrize(
    ("answer", "reference", "f1"),
    [
        ("Paris", "Paris", 1.0),
        ("The capital is Paris.", "Paris", 2 * (1 / 3) * 1 / (1 / 3 + 1)),  # precision 1/3, recall 1
        ("London", "Paris", 0.0),
        ("moves HEAD and keeps an index", "keeps the index and moves HEAD", 1.0),  # order, articles do not matter
        ("", "Paris", 0.0),
        ("", "", 1.0),
    ],
)
def test_token_f1(answer: str, reference: str, f1: float) -> None:
    assert evaluate.token_f1(answer, reference) == pytest.approx(f1)


def test_contains_needs_the_whole_reference_on_word_boundaries() -> None:
    assert evaluate.contains("It runs in about 7 minutes.", "7 minutes")
    assert not evaluate.contains("It runs in about 17 minutes.", "7 minutes")
    assert not evaluate.contains("anything", "")


def test_abstention_matches_what_ask_says() -> None:
    assert evaluate.abstained(rag._abstained("default", "m")["answer"])
    assert evaluate.abstained("I don't know.") and evaluate.abstained("The files do not say.")
    assert not evaluate.abstained("Paris is the capital of France.")


def test_bootstrap_interval_is_seeded_and_brackets_the_mean() -> None:
    values = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    mean, low, high = evaluate.bootstrap_ci(values, seed=3)
    assert mean == pytest.approx(0.7) and low < mean < high and low >= 0 and high <= 1
    assert evaluate.bootstrap_ci(values, seed=3) == (mean, low, high)
    assert evaluate.bootstrap_ci([0.5] * 5) == (0.5, 0.5, 0.5)


def test_leaked_questions_are_those_from_training_documents() -> None:
    questions = [{"source": "a.md"}, {"source": "b.md"}, {"question": "no source"}]
    assert evaluate.leaked(questions, {"b.md", "c.md"}) == [1]


QUESTIONS = [
    {"question": "Capital of France?", "answer": "Paris", "source": "geo.md"},
    {"question": "Deploy time?", "answer": "7 minutes", "source": "ops.md"},
]
KNOWN = {"Capital of France?": "Paris", "Deploy time?": "about 7 minutes"}


def test_score_gives_the_expected_table_for_known_answers() -> None:
    oracle = lambda q: KNOWN.get(q, "I don't know.")  # noqa: E731
    wrong = lambda q: "Lyon" if "France" in q else "an hour"  # noqa: E731
    result = evaluate.score(QUESTIONS, {"oracle": oracle, "wrong": wrong}, unanswerable=["Who?", "What?"])
    oracle_row, wrong_row = result["table"]["oracle"], result["table"]["wrong"]
    assert oracle_row["f1"][0] == pytest.approx((1.0 + 0.8) / 2)  # "about 7 minutes": precision 2/3, recall 1
    assert oracle_row["contains"][0] == 1.0 and wrong_row["contains"][0] == 0.0
    assert oracle_row["abstain_unanswerable"][0] == 1.0 and wrong_row["abstain_unanswerable"][0] == 0.0
    assert wrong_row["f1"][0] == 0.0 and oracle_row["abstain_answerable"] == 0.0
    assert [d["question"] for d in result["disagreements"]] == ["Capital of France?", "Deploy time?"]
    again = evaluate.score(QUESTIONS, {"oracle": oracle, "wrong": wrong}, unanswerable=["Who?", "What?"])
    assert again["table"]["oracle"]["f1"] == oracle_row["f1"]
    table = evaluate.format_table(result)
    assert "oracle" in table and "0.90" in table


def test_questions_come_from_the_eval_split_and_training_sources_are_known(tmp_path) -> None:
    import json

    def row(q: str, a: str, source: str) -> str:
        messages = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return json.dumps({"messages": messages, "meta": {"source": source}}) + "\n"

    (tmp_path / "train.jsonl").write_text(row("q1", "a1", "a.md") + row("q2", "a2", "b.md"))
    (tmp_path / "eval.jsonl").write_text(row("q3", "a3", "c.md") + row("q4", "a4", "b.md"))
    config = {"data": str(tmp_path / "train.jsonl"), "eval_data": str(tmp_path / "eval.jsonl")}
    (tmp_path / "config.json").write_text(json.dumps(config))
    questions, sources = evaluate.questions_from_run(tmp_path)
    assert [q["question"] for q in questions] == ["q3", "q4"] and sources == {"a.md", "b.md"}
    assert evaluate.leaked(questions, sources) == [1]  # q4 comes from a training document: flagged


def test_cli_eval_errors_are_one_line(tmp_path, capsys) -> None:
    from nomoat.cli import main

    assert main(["eval", str(tmp_path / "nope")]) == 1
    assert "no run at" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--limit", "0"]) == 1


def test_a_question_file_is_read_and_bad_lines_are_named(tmp_path) -> None:
    good = tmp_path / "q.jsonl"
    good.write_text(
        '{"question": "Capital?", "answer": "Paris", "source": "geo.md"}\n\n{"question": "x", "answer": "y"}\n'
    )
    assert evaluate.read_questions(good) == [
        {"question": "Capital?", "answer": "Paris", "source": "geo.md"},
        {"question": "x", "answer": "y", "source": None},
    ]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok", "answer": "fine"}\nnot json\n{"question": "no answer"}\n')
    with pytest.raises(UserError, match="lines 2, 3"):
        evaluate.read_questions(bad)
