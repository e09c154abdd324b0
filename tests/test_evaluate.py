"""nomoat eval: metrics on answers whose scores are known exactly, the answer cache, the report, a tiny real run."""

from __future__ import annotations

import pytest

from nomoat.answer import rag
from nomoat.errors import UserError
from nomoat.evaluation import evaluate, report, scoring


def test_normalize_drops_case_punctuation_and_articles() -> None:
    assert scoring.normalize("The  `git reset --soft` command, an Option!") == "git reset soft command option"


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
    assert scoring.token_f1(answer, reference) == pytest.approx(f1)


def test_contains_needs_the_whole_reference_on_word_boundaries() -> None:
    assert scoring.contains("It runs in about 7 minutes.", "7 minutes")
    assert not scoring.contains("It runs in about 17 minutes.", "7 minutes")
    assert not scoring.contains("anything", "")


def test_abstention_matches_what_ask_says() -> None:
    assert scoring.abstained(rag._abstained("default", "m")["answer"])
    assert scoring.abstained("I don't know.") and scoring.abstained("The files do not say.")
    assert not scoring.abstained("Paris is the capital of France.")


def test_bootstrap_interval_is_seeded_and_brackets_the_mean() -> None:
    values = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0]
    mean, low, high = scoring.bootstrap_ci(values, seed=3)
    assert mean == pytest.approx(0.7) and low < mean < high and low >= 0 and high <= 1
    assert scoring.bootstrap_ci(values, seed=3) == (mean, low, high)
    assert scoring.bootstrap_ci([0.5] * 5) == (0.5, 0.5, 0.5)


def test_leaked_questions_come_from_training_documents_or_repeat_a_training_question() -> None:
    questions = [{"question": "q1", "source": "a.md"}, {"question": "q2", "source": "b.md"}, {"question": "no source"},
                 {"question": "What is  Git?"}]  # fmt: skip
    assert scoring.leaked(questions, {"b.md", "c.md"}) == [1]
    assert scoring.leaked(questions, {"b.md"}, {scoring.normalize("what is git")}) == [1, 3]


def test_a_chunk_holds_an_answer_when_it_has_most_of_its_words() -> None:
    chunk = "--soft: Does not touch the index file or the working tree at all."
    assert scoring.holds(chunk, "does not touch the index file or the working tree")
    assert scoring.holds(chunk, "Does not touch the index or the tree at all, ever")  # 9 of 10 words
    assert not scoring.holds(chunk, "resets the index but not the working tree")
    assert not scoring.holds(chunk, "")


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
    assert oracle_row["citation_accuracy"] is None  # plain answers cite nothing
    assert [d["question"] for d in result["disagreements"]] == ["Capital of France?", "Deploy time?"]
    assert result["gains"] == {}  # neither "tuned" nor "base" here
    again = evaluate.score(QUESTIONS, {"oracle": oracle, "wrong": wrong}, unanswerable=["Who?", "What?"])
    assert again["table"]["oracle"]["f1"] == oracle_row["f1"]
    table = report.format_table(result)
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
    questions, trained = evaluate.questions_from_run(tmp_path)
    assert [q["question"] for q in questions] == ["q3", "q4"]
    assert trained == {"sources": {"a.md", "b.md"}, "questions": {"q1", "q2"}}
    assert scoring.leaked(questions, trained["sources"]) == [1]  # q4 comes from a training document: flagged


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


CHUNKS = {1: "Paris is the capital of France.", 2: "Deploys take about 7 minutes.", 3: "Unrelated text here."}


def cited(answer: str, *chunk_ids: int) -> dict:
    return {"answer": answer, "citations": [{"n": 1, "chunk_id": c, "quote": CHUNKS[c][:10]} for c in chunk_ids]}


def test_citation_accuracy_counts_answers_whose_cited_chunk_holds_the_reference() -> None:
    answers = {"Capital of France?": cited("Paris [1]", 1), "Deploy time?": cited("7 minutes [1]", 3),
               "Who?": cited("The files do not hold an answer.")}  # fmt: skip
    rag = lambda q: answers.get(q, answers["Who?"])  # noqa: E731
    seen: list[list[int]] = []

    def chunk_texts(ids: list[int]) -> dict[int, str]:
        seen.append(ids)
        return {i: CHUNKS[i] for i in ids}

    result = evaluate.score(QUESTIONS, {"rag": rag}, unanswerable=["Who?"], chunk_texts=chunk_texts)
    row = result["table"]["rag"]
    assert row["citation_accuracy"][0] == 0.5 and row["cited_answers"] == 2  # chunk 3 lacks "7 minutes"
    assert row["abstain_unanswerable"][0] == 1.0 and seen == [[1], [3]]
    # without the chunks, the quote is what is checked: "Paris is t" holds "Paris"
    quotes = evaluate.score(QUESTIONS, {"rag": rag}, unanswerable=["Who?"])["table"]["rag"]
    assert quotes["citation_accuracy"][0] == 0.5


def test_each_rag_row_counts_how_it_answered_and_why_the_models_words_were_quoted() -> None:
    said = {
        "Capital of France?": {"answer": "Paris [1]", "citations": [], "mode": "generated"},
        "Deploy time?": {"answer": '"7 minutes" [1]', "citations": [], "mode": "extractive",
                         "fallback_reason": "'12' is not in the cited source(s)"},
        "Who?": {"answer": "The files do not say.", "citations": [], "mode": "declined"},
    }  # fmt: skip
    result = evaluate.score(QUESTIONS, {"rag": lambda q: said.get(q, said["Who?"])}, unanswerable=["Who?"])
    row = result["table"]["rag"]
    assert row["modes"] == {"generated": 0.5, "extractive": 0.5, "abstained": 0.0, "declined": 0.0}
    assert row["generated"][0] == 0.5 and row["fact_check_pass"][0] == 0.5
    assert row["fallbacks"] == {"'X' is not in the cited source(s)": 1}
    assert "quoted because 'X' is not in the cited source(s) (1)" in report.format_table(result)


def test_answer_cache_skips_what_was_generated_and_survives_a_torn_line(tmp_path) -> None:
    calls: list[str] = []

    def oracle(q: str) -> str:
        calls.append(q)
        return KNOWN.get(q, "I don't know.")

    path = tmp_path / "cache.jsonl"
    first = evaluate.score(QUESTIONS, {"m": oracle}, unanswerable=["Who?"],
                           cache=evaluate.AnswerCache(path, {"m": "model-1"}))  # fmt: skip
    assert len(calls) == 3 and first["cached"] == 0
    with open(path, "a") as f:
        f.write('{"key": "torn')  # a crash mid-write
    again = evaluate.score(QUESTIONS, {"m": oracle}, unanswerable=["Who?"],
                           cache=evaluate.AnswerCache(path, {"m": "model-1"}))  # fmt: skip
    assert len(calls) == 3 and again["cached"] == 3 and again["table"] == first["table"]
    another_model = evaluate.AnswerCache(path, {"m": "model-2"})
    other = evaluate.score(QUESTIONS, {"m": oracle}, unanswerable=["Who?"], cache=another_model)  # asked again
    assert len(calls) == 6 and other["cached"] == 0
    assert len(evaluate.AnswerCache(path, {}).entries) == 6  # appended after the torn line, not glued to it


def test_the_report_is_one_escaped_html_file_with_the_plots(tmp_path) -> None:
    from nomoat.evaluation import report

    def parrot(q: str) -> str:
        return "<script>alert(1)</script>" if "France" in q else "7 minutes"

    result = evaluate.score(QUESTIONS, {"base": parrot, "tuned": lambda q: KNOWN.get(q, "no")}, unanswerable=["Who?"])
    result |= {"run": str(tmp_path / "run7"), "kb": None, "leaked": 2, "seed": 0, "models": {"base": "/m/a.gguf"}}
    result["table"]["base"]["perplexity"] = 12.5
    metrics = [{"step": 0, "loss": None, "eval_loss": 3.0}, *({"step": i, "loss": 3 - i / 10} for i in range(1, 9)),
               {"step": 8, "loss": 2.2, "eval_loss": 2.5}]  # fmt: skip
    html = report.write(tmp_path / "r.html", result, metrics).read_text()
    assert html.count("<img") == 2 and html.count("data:image/png;base64,") == 2
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "2 questions were left out" in html and "run7" in html and "12.50" in html and "a.gguf" in html
    assert "http" not in html.replace("https://", "").split("<body>")[1]  # nothing fetched from elsewhere
    no_training = report.render(result, [])
    assert no_training.count("<img") == 1


@pytest.fixture(scope="module")
def exported_run(tmp_path_factory: pytest.TempPathFactory):
    """A tiny tuned run exported to GGUF: the real pipeline (llama.cpp answers), random weights."""
    import json

    pytest.importorskip("peft")
    from nomoat.exporting import export
    from nomoat.finetune import tune
    from tiny_gguf import write_tiny_llama

    root = tmp_path_factory.mktemp("eval")
    rows = [{"messages": [{"role": "user", "content": f"Name box {i}."}, {"role": "assistant", "content": f"Box {i}."}],
             "meta": {"source": f"box{i}.md"}} for i in range(8)]  # fmt: skip
    data = root / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = write_tiny_llama(root / "tiny.gguf")
    tune.run(data, model=model, output=root / "run", steps=2, rank=4, batch_size=4, progress=False)
    export.run(root / "run", format="gguf", quant="f16")
    return root / "run"


def test_eval_of_a_tuned_run_writes_report_json_and_reuses_its_answers(exported_run, tmp_path, capsys) -> None:
    import json

    from nomoat.cli import main

    questions = tmp_path / "q.jsonl"
    rows = [
        {"question": "What is in box 99?", "answer": "Box 99.", "source": "other.md"},
        {"question": "Name box 3.", "answer": "Box 3."},  # asked word for word in training: left out
        {"question": "What is in box 42?", "answer": "Box 42.", "source": "box1.md"},  # a training document
    ]
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = tmp_path / "out" / "report.html"
    report.parent.mkdir()
    args = ["eval", str(exported_run), "--no-kb", "--questions", str(questions), "-o", str(report), "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["questions"] == 1 and result["leaked"] == 2 and set(result["table"]) == {"base", "tuned"}
    assert result["cached"] == 0 and result["models"]["tuned"].endswith(".f16.gguf")
    assert all(row["perplexity"] > 1 for row in result["table"].values())
    assert json.loads(report.with_suffix(".json").read_text())["table"] == result["table"]
    html = report.read_text()
    assert html.count("data:image/png;base64,") == 2 and "2 questions were left out" in html  # scores + loss
    assert main(args) == 0  # the same seed again: every answer from the cache, the same table
    again = json.loads(capsys.readouterr().out)
    assert again["cached"] == 2 * (1 + len(evaluate.UNANSWERABLE))
    assert again["table"] == result["table"]
    manifest = json.loads((exported_run / "manifest.json").read_text())
    assert manifest["eval"]["report"] == str(report)


def test_eval_refuses_questions_that_are_all_from_training(exported_run, tmp_path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "Name box 1.", "answer": "Box 1."}\n')
    with pytest.raises(UserError, match="all 1 questions come from the run's training data"):
        evaluate.run(exported_run, kb=None, questions=questions, output=tmp_path / "r.html")
    with pytest.raises(UserError, match=r"give -o NAME\.html"):
        evaluate.run(exported_run, kb=None, questions=questions, output=tmp_path / "r.pdf")


def test_gains_are_paired_differences_with_a_verdict() -> None:
    answers = {"base": ["no"] * 20, "tuned": ["yes"] * 15 + ["no"] * 5, "base+RAG": ["no"] * 19 + ["yes"]}
    f1 = {name: [scoring.token_f1(a, "yes") for a in got] for name, got in answers.items()}  # every reference: "yes"
    got = scoring.gains(f1, seed=1)
    assert set(got) == {"tuned vs base", "base+RAG vs base"}
    assert got["tuned vs base"][0] == pytest.approx(0.75) and scoring.verdict(got["tuned vs base"]) == "better"
    assert scoring.verdict(got["base+RAG vs base"]) == "no clear difference"  # one question of 20
    assert scoring.verdict((-0.3, -0.5, -0.1)) == "worse" and scoring.verdict(None) == "no questions"


def test_a_model_alone_is_scored_on_a_question_file(tiny_gguf, tmp_path) -> None:
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "What is in box 5?", "answer": "Box 5."}\n')
    result = evaluate.run(model=tiny_gguf, kb=None, questions=questions, output=tmp_path / "alone.html")
    assert list(result["table"]) == ["base"] and result["run"] is None and result["gains"] == {}
    assert result["models"] == {"base": str(tiny_gguf)} and result["table"]["base"]["perplexity"] > 1
    html = (tmp_path / "alone.html").read_text()
    assert html.count("data:image/png;base64,") == 1 and "Training" not in html  # no run, no loss curve
    with pytest.raises(UserError, match="give a run to evaluate"):
        evaluate.run(model=tiny_gguf, kb=None)


def test_a_deadline_stops_between_questions_with_every_configuration_on_the_same_ones() -> None:
    questions = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(12)]
    asked: dict[str, list[str]] = {"one": [], "two": []}

    def answerer(name: str) -> evaluate.Answerer:
        return lambda q: asked[name].append(q) or "a1"

    result = evaluate.score(questions, {n: answerer(n) for n in asked}, unanswerable=["Who?"], deadline=0.0,
                            min_questions=3)  # fmt: skip
    assert asked["one"] == asked["two"] == ["Who?", "q0", "q1", "q2"]
    assert result["questions"] == 3 and result["table"]["one"]["f1"][0] == pytest.approx(1 / 3)
    everything = evaluate.score(questions, {n: answerer(n) for n in asked}, unanswerable=["Who?"])
    assert everything["questions"] == 12
