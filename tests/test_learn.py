"""``nomoat learn``: the loop runs its stages in order within a plan, records the learned model in the KB, and after
Ctrl-C or SIGKILL in any stage ``--resume`` goes on from that stage without redoing the ones before."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fakes import FakeEmbedder
from nomoat import api, cli
from nomoat.config import LearnConfig
from nomoat.errors import UserError
from nomoat.kb import catalog
from nomoat.pipeline import loop

TESTS = Path(__file__).resolve().parent


def fake_stages(log: Path, stop_in: str | None = None, how: str = "interrupt") -> dict[str, loop.Stage]:
    """Stages that append their name to ``log``; the one named ``stop_in`` is interrupted (Ctrl-C) or, with
    ``how="hang"``, writes ``log.hang`` and waits to be killed."""

    def stage(name: str) -> loop.Stage:
        def run(state: dict[str, Any], seconds: float, config: LearnConfig, progress: bool) -> dict[str, Any]:
            with open(log, "a") as f:
                f.write(f"{name} {seconds:.0f}\n")
            if name == stop_in:
                if how == "hang":
                    Path(f"{log}.hang").write_text(name)
                    time.sleep(60)
                raise KeyboardInterrupt
            if name == "ingest":
                api.ingest(state["folders"], kb=state["kb"], embedder=FakeEmbedder())
            if name == "export":
                gguf = Path(state["workdir"]) / "model.gguf"
                gguf.write_bytes(b"GGUF")
                return {"gguf": str(gguf)}
            if name == "eval":
                return {"report": str(Path(state["workdir"]) / "eval.html"), "gain": "tuned+RAG vs base+RAG: +0.10"}
            return {"made": name}

        return run

    return {name: stage(name) for name in loop.STAGES}


def _calls(log: Path) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "office.md").write_text("# Office\n\nThe office wifi password is hunter42.\n")
    return docs


def test_the_loop_runs_every_stage_in_its_plan_and_records_the_model(
    folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "log"
    state = loop.run([folder], kb="t", time="1h", stages=fake_stages(log))
    assert _calls(log) == list(loop.STAGES) and state["finished"]
    planned = {line.split()[0]: float(line.split()[1]) for line in log.read_text().splitlines()}
    assert (
        planned["ingest"] == 0 and planned["tune"] > planned["data"] > 0 == planned["adapt"]
    )  # adapt is off by default
    assert sum(state["plan"].values()) <= 3600 + 1
    err = capsys.readouterr().err
    assert "plan for the" in err and "done by" in err and "[4/6] tune" in err
    assert catalog.learned_model("t") == state["learned_model"] == catalog.kb_info("t")["learned_model"]
    assert api._model_for(None, "t") == state["learned_model"]  # ask/chat/serve use it unless told otherwise
    assert api._model_for("default", "t") == "default" and api._model_for(None, "other") == "default"
    assert "+0.10" in loop.format_learn(state) and state["report"].endswith("eval.html")


@pytest.mark.parametrize("stop_in", loop.STAGES)
def test_resume_goes_on_from_the_stage_that_was_interrupted(folder: Path, tmp_path: Path, stop_in: str) -> None:
    log = tmp_path / "log"
    with pytest.raises(KeyboardInterrupt):
        loop.run([folder], kb="t", time="1h", stages=fake_stages(log, stop_in))
    before = list(loop.STAGES).index(stop_in)
    assert _calls(log) == list(loop.STAGES[: before + 1])
    with pytest.raises(UserError, match="--resume"):  # starting again without --resume would lose the work
        loop.run([folder], kb="t", time="1h", stages=fake_stages(log))
    state = loop.run(kb="t", resume=True, stages=fake_stages(log))
    assert _calls(log) == [*loop.STAGES[: before + 1], *loop.STAGES[before:]] and state["finished"]


def test_sigkill_in_each_stage_then_resume(folder: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    for stop_in in loop.STAGES:
        log = tmp_path / f"log-{stop_in}"
        code = (f"import test_learn as t; from nomoat.pipeline import loop; "
                f"loop.run([{str(folder)!r}], kb={stop_in!r}, time='1h', "
                f"stages=t.fake_stages(__import__('pathlib').Path({str(log)!r}), {stop_in!r}, 'hang'))")  # fmt: skip
        child = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not Path(f"{log}.hang").exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.poll() is None, f"{stop_in}: the child ended before the kill"
        child.send_signal(signal.SIGKILL)
        child.wait()
        state_file = loop.state_path(stop_in)
        json.loads(state_file.read_text())  # never torn: the state is written atomically
        state = loop.run(kb=stop_in, resume=True, stages=fake_stages(log))
        before = list(loop.STAGES).index(stop_in)
        assert _calls(log) == [*loop.STAGES[: before + 1], *loop.STAGES[before:]], stop_in
        assert state["finished"]


def test_user_mistakes_are_one_line_errors(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="nothing to resume"):
        loop.run(kb="t", resume=True)
    with pytest.raises(UserError, match="name the folder"):
        loop.run(kb="t")
    with pytest.raises(UserError, match="no such file"):
        loop.run([tmp_path / "missing"], kb="t")
    with pytest.raises(UserError, match="at least a minute"):
        loop.run([folder], kb="t", time="10s")
    with pytest.raises(UserError, match="--time"):
        loop.run([folder], kb="t", time="soon")
    assert cli.main(["learn", "--resume", "--kb", "t"]) == 1


def test_a_restart_starts_anew(folder: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    with pytest.raises(KeyboardInterrupt):
        loop.run([folder], kb="t", time="1h", stages=fake_stages(log, "tune"))
    loop.run([folder], kb="t", time="1h", restart=True, stages=fake_stages(log))
    assert _calls(log) == ["ingest", "adapt", "data", "tune", *loop.STAGES]


def test_the_plan_splits_the_time_left() -> None:
    config = LearnConfig()
    for left in (600.0, 1800.0, 7200.0):
        planned = loop.plan(left, config)
        assert set(planned) == {"adapt", "data", "tune", "export", "eval"}
        assert abs(sum(planned.values()) - left) <= 2 and planned["tune"] > planned["data"]
    with_adapt = loop.plan(3600, LearnConfig(adapt_share=0.1))
    assert with_adapt["data"] > with_adapt["adapt"] > 0
    assert loop.plan(30, config)["eval"] == 60  # never a report without questions


def test_a_stage_that_runs_over_takes_its_time_from_the_later_ones(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = [1000.0]
    monkeypatch.setattr(loop.clock, "monotonic", lambda: now[0])
    given: dict[str, float] = {}
    stages = fake_stages(tmp_path / "log")

    def slow_data(state: dict[str, Any], seconds: float, config: LearnConfig, progress: bool) -> dict[str, Any]:
        given["data"] = seconds
        now[0] += 3 * seconds  # three times its plan
        return {"made": "data"}

    def recording(name: str) -> loop.Stage:
        def run(state: dict[str, Any], seconds: float, config: LearnConfig, progress: bool) -> dict[str, Any]:
            given[name] = seconds
            return stages[name](state, seconds, config, progress)

        return run

    state = loop.run([folder], kb="t", time="1h", stages={**stages, "data": slow_data, "tune": recording("tune")})
    first = state["plan"]
    assert given["tune"] < first["tune"]
    assert given["tune"] == loop.plan(3600 - 3 * given["data"], LearnConfig(), ("tune", "export", "eval"))["tune"]


def test_the_adapt_stage_says_why_it_skipped_and_the_loop_goes_on(nomoat_home: Path, tmp_path: Path) -> None:
    from nomoat.kb import ingest
    from nomoat.pipeline import stages

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.md").write_text("# A\n\nOne short document about nothing much at all.\n")
    ingest.run([tmp_path / "d"], "t", embedder=FakeEmbedder(), progress=False)
    result = stages.adapt({"kb": "t"}, 60.0, LearnConfig(adapt_share=0.1), False)
    assert result["kept"] is False and "kb adapt tunes" in result["skipped"]
    assert "off in learn" in stages.adapt({"kb": "t"}, 60.0, LearnConfig(adapt_share=0.0), False)["skipped"]


def test_the_data_stage_asks_for_twice_the_rows_the_planned_tune_can_take(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So the model writes pairs only when the files' own are too few (curate's --max bounds its work)."""
    from nomoat.dataset import curate
    from nomoat.pipeline import stages

    asked: dict = {}

    def build(kb: str, output: Path, **kwargs: object) -> dict:
        asked.update(kwargs)
        return {"output": str(output), "train": 3, "eval": 1, "card": str(output.with_suffix(".md"))}

    monkeypatch.setattr(curate, "build", build)
    state = {"kb": "t", "workdir": str(tmp_path), "model": "default", "plan": {"tune": 700.0}}
    stages.data(state, 300.0, LearnConfig(row_seconds=1.4), False)
    assert (asked["max_pairs"], asked["time_budget"]) == (1000, 300.0)
    stages.data(state | {"plan": {"tune": 7000.0}}, 300.0, LearnConfig(row_seconds=1.4), False)
    assert asked["max_pairs"] == 10000
