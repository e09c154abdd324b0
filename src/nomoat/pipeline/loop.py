"""``nomoat learn FOLDER``: the learning loop in one command, within one time budget.

ingest (or sync) the folder -> adapt the KB's query encoder to it (``kb adapt``; off unless
``LearnConfig.adapt_share`` > 0) -> build RAG-format training data from the KB (:mod:`nomoat.dataset.raft`) -> tune a
LoRA on it -> export the first GGUF type that passes parity -> eval base vs tuned, with and without retrieval ->
record the learned model in the KB, so ``ask``/``chat``/``serve`` on it use that model unless told otherwise.

Ingest takes what it needs (it is incremental); the time left is split by :class:`nomoat.config.LearnConfig`'s
shares into a plan that is printed, with an ETA per stage, before the first long stage starts. State lives in
``$NOMOAT_HOME/learn/<kb>/state.json``, written atomically after every stage; each stage resumes on its own (ingest
is incremental, a killed adapt left the KB as it was and starts over, data build keeps a state file, tune resumes
its checkpoint, eval caches answers), so after Ctrl-C or a kill ``nomoat learn --resume`` goes on from the stage
that was running.
"""

from __future__ import annotations

import shutil
import sys
import time as clock
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from nomoat import paths
from nomoat.config import DEFAULT_KB, DEFAULT_MODEL, LearnConfig, parse_duration
from nomoat.errors import UserError

STAGES = ("ingest", "adapt", "data", "tune", "export", "eval")
State = dict[str, Any]
Stage = Callable[[State, float, LearnConfig, bool], dict[str, Any]]
"""A stage: (state, seconds planned, config, progress) -> what it made (kept in the state)."""


def run(
    folders: Sequence[str | Path] = (),
    *,
    kb: str = DEFAULT_KB,
    time: str | float | None = None,
    model: str | Path = DEFAULT_MODEL,
    resume: bool = False,
    restart: bool = False,
    progress: bool = True,
    config: LearnConfig | None = None,
    stages: dict[str, Stage] | None = None,
) -> dict[str, Any]:
    """Run (or with ``resume``, continue) the loop for knowledge base ``kb``; returns the final state:
    ``{"kb", "folders", "model", "budget_s", "elapsed_s", "plan", "stages": {name: result}, "learned_model",
    "report", "gain"}``. ``stages`` replaces the real stages (tests)."""
    config = config or LearnConfig()
    paths.check_name(kb, "knowledge base name")
    state_file = state_path(kb)
    old = paths.read_json(state_file) if state_file.is_file() else None
    if resume:
        if old is None:
            raise UserError(f"nothing to resume: no `nomoat learn` was started on knowledge base {kb!r}")
        if folders or time is not None:
            raise UserError("--resume continues with the folders and budget it started with; give only --kb")
        state = old
    else:
        if old is not None and not old.get("finished") and not restart:
            raise UserError(f"a `nomoat learn` on {kb!r} stopped during {_current(old)}: continue it with "
                            f"`nomoat learn --resume --kb {kb}`, or start anew with --restart")  # fmt: skip
        state = _new_state(folders, kb, time, model, config)
        paths.write_json(state_file, state)  # from here on, a stop anywhere is resumable
    stages = stages or real_stages()
    for name in STAGES:
        if name in state["stages"]:
            continue
        seconds = 0.0
        if name != "ingest":
            planned = plan(state["budget_s"] - state["elapsed_s"], config, STAGES[STAGES.index(name) :])
            if "plan" not in state:  # the first plan is printed (and kept); later ones adjust to the time left
                state["plan"] = planned
                _print_plan(state, progress)
            seconds = planned[name]
        _say(progress, f"[{STAGES.index(name) + 1}/{len(STAGES)}] {name}" + (f" (~{_minutes(seconds)})" if seconds
             else ""))  # fmt: skip
        started = clock.monotonic()
        result = stages[name](state, seconds, config, progress)
        state["stages"][name] = {**result, "seconds": round(clock.monotonic() - started, 1)}
        state["elapsed_s"] = round(state["elapsed_s"] + clock.monotonic() - started, 1)
        paths.write_json(state_file, state)
    state["finished"] = True
    state["learned_model"] = state["stages"]["export"].get("gguf")
    state["report"] = state["stages"]["eval"].get("report")
    state["gain"] = state["stages"]["eval"].get("gain")
    if state["learned_model"]:
        from nomoat.kb import catalog

        catalog.set_learned_model(kb, state["learned_model"])
    paths.write_json(state_file, state)
    return state


def state_path(kb: str) -> Path:
    return paths.home() / "learn" / kb / "state.json"


def _new_state(folders: Sequence[str | Path], kb: str, time: str | float | None, model: str | Path,
               config: LearnConfig) -> State:  # fmt: skip
    if not folders:
        raise UserError("name the folder to learn from: nomoat learn FOLDER")
    missing = [str(f) for f in folders if not Path(f).expanduser().exists()]
    if missing:
        raise UserError(f"no such file or folder: {missing[0]}")
    budget = _seconds(config.time if time is None else time)
    workdir = paths.home() / "learn" / kb
    for leftover in ("data", "run"):  # a --restart: the previous attempt's outputs
        shutil.rmtree(workdir / leftover, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    return {"kb": kb, "folders": [str(Path(f).expanduser().resolve()) for f in folders], "model": str(model),
            "budget_s": budget, "elapsed_s": 0.0, "workdir": str(workdir), "stages": {}}  # fmt: skip


def _seconds(value: str | float) -> float:
    try:
        seconds = parse_duration(value) if isinstance(value, str) else float(value)
    except ValueError as exc:
        raise UserError(f"--time: {exc}") from None
    if seconds < 60:
        raise UserError(f"--time must leave the loop at least a minute (got {seconds:g} s)")
    return seconds


def plan(left_s: float, config: LearnConfig, stages: Sequence[str] = ("adapt", "data", "tune", "export", "eval")
         ) -> dict[str, float]:  # fmt: skip
    """Seconds for each of ``stages`` from the time left: export a fixed estimate, the others by their shares of
    the rest (eval never below a minute: a report with no questions says nothing). The loop plans again before
    every stage, so a stage that ran over takes its time from the ones after it, not from the budget."""
    left = max(0.0, left_s)
    export = min(config.export_s, 0.25 * left) if "export" in stages else 0.0
    weights = {
        "adapt": config.adapt_share,
        "data": config.data_share,
        "tune": config.tune_share,
        "eval": 1 - config.adapt_share - config.data_share - config.tune_share,
    }
    share = {s: weights[s] for s in stages if s in weights}
    out = {s: (left - export) * w / sum(share.values()) for s, w in share.items()} | {"export": export}
    if "eval" in out:
        out["eval"] = max(60.0, out["eval"])
    return {s: float(round(out[s])) for s in stages}


def _print_plan(state: State, progress: bool) -> None:
    now = clock.time()
    lines = [f"nomoat learn: plan for the {_minutes(state['budget_s'] - state['elapsed_s'])} left of "
             f"{_minutes(state['budget_s'])}:"]  # fmt: skip
    for name, seconds in state["plan"].items():
        if not seconds:  # a stage whose share is 0 is off (kb adapt by default)
            continue
        now += seconds
        lines.append(f"  {name:7s} {_minutes(seconds):>8s}   done by {clock.strftime('%H:%M', clock.localtime(now))}")
    _say(progress, "\n".join(lines))


def _current(state: State) -> str:
    return next((s for s in STAGES if s not in state.get("stages", {})), "the last stage")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def real_stages() -> dict[str, Stage]:
    from nomoat.pipeline import stages

    return {"ingest": stages.ingest, "adapt": stages.adapt, "data": stages.data, "tune": stages.tune,
            "export": stages.export, "eval": stages.evaluate}  # fmt: skip


def format_learn(state: State) -> str:
    """What ``nomoat learn`` prints at the end: the model, the report, and the one line of what was gained."""
    lines = [f"learned model: {state.get('learned_model')}  (used by ask/chat/serve on --kb {state['kb']})",
             f"report: {state.get('report') or '-'}"]  # fmt: skip
    gain = state.get("gain")
    if gain:
        lines.append(gain)
    lines.append(f"took {_minutes(state['elapsed_s'])} of the {_minutes(state['budget_s'])} budget")
    return "\n".join(lines)
