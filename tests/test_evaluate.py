"""Evaluation metrics on answers whose scores are known exactly."""

from __future__ import annotations

import pytest

from nomoat import evaluate, rag


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
