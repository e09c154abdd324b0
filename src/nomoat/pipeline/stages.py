"""The real stages of :mod:`nomoat.pipeline.loop`, each the command it stands for, made resumable: a stage that was
killed is simply run again and picks up what its command left (see each function)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nomoat.config import EvalConfig, LearnConfig
from nomoat.errors import UserError

State = dict[str, Any]


def ingest(state: State, seconds: float, config: LearnConfig, progress: bool) -> dict[str, Any]:
    """``nomoat ingest FOLDER``: incremental, so a rerun after a kill only does the files not yet done."""
    from nomoat.kb import ingest as stage

    report = stage.run(state["folders"], state["kb"], progress=progress)
    if not report["chunks"] and not report["unchanged"] and not report["added"] and not report["updated"]:
        raise UserError(f"nothing readable in {', '.join(state['folders'])}: there is nothing to learn from")
    return {k: report[k] if isinstance(report[k], int) else len(report[k]) for k in
            ("added", "updated", "unchanged", "removed", "failed", "chunks")}  # fmt: skip


def adapt(state: State, seconds: float, config: LearnConfig, progress: bool) -> dict[str, Any]:
    """``nomoat kb adapt --time SECONDS``: a killed run left the KB as it was, so a rerun simply starts over. A KB
    too small to adapt (or a budget too short) is no reason to stop the loop: the stage says why and goes on."""
    from nomoat.adapt.run import adapt as stage

    if config.adapt_share <= 0:
        return {"kept": False, "skipped": "off in learn (LearnConfig.adapt_share): run `nomoat kb adapt` yourself"}
    try:
        result = stage(state["kb"], time_budget=seconds, progress=progress)
    except UserError as exc:
        return {"kept": False, "skipped": str(exc)}
    return {"kept": result["kept"], "held_out": result["held_out"], "encoder": result["encoder"]}


def data(state: State, seconds: float, config: LearnConfig, progress: bool) -> dict[str, Any]:
    """``nomoat data build --for rag --time SECONDS --max ROWS``: twice the rows the planned tune can take, so the
    model writes pairs only when the files' own are too few, and the time goes to the tune (PostgreSQL's manual:
    4,779 extractive candidates, 144 from five minutes of the model). Its model phase resumes from its state file."""
    from nomoat.dataset import curate

    output = Path(state["workdir"]) / "data" / "train.jsonl"
    output.parent.mkdir(parents=True, exist_ok=True)
    rows = round(2 * state.get("plan", {}).get("tune", seconds) / config.row_seconds)
    built = curate.build(state["kb"], output, max_pairs=max(rows, 1), time_budget=seconds,
                         model=_writer(state["model"]), target="rag", progress=progress)  # fmt: skip
    if not built["train"]:
        raise UserError(f"knowledge base {state['kb']!r} gave no training rows (see {built['card']})")
    return {"data": built["output"], "train": built["train"], "eval": built["eval"], "card": built["card"]}


def _writer(model: str) -> str:
    """The model that writes training pairs: the base when llama.cpp can run it, else the bundled one."""
    from nomoat.llm import models

    return model if models.resolve(model).kind == "gguf" else "default"


def tune(state: State, seconds: float, config: LearnConfig, progress: bool) -> dict[str, Any]:
    """``nomoat tune DATA --time SECONDS``, or ``--resume`` of the run a kill or Ctrl-C interrupted (a run killed
    before its first checkpoint starts over; a complete one is kept). Ctrl-C stops the loop after tune's own clean
    stop, so ``nomoat learn --resume`` continues the run."""
    import shutil

    from nomoat.finetune import runs
    from nomoat.finetune import tune as stage
    from nomoat.paths import read_json

    run_dir = Path(state["workdir"]) / "run"
    summary_file = run_dir / "summary.json"
    if summary_file.is_file() and read_json(summary_file).get("status") == "complete":
        summary = read_json(summary_file)
    elif (run_dir / "config.json").is_file() and runs.load_checkpoint(run_dir) is not None:
        summary = stage.run(resume=run_dir, progress=progress)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
        # no side-by-side samples at the end: eval compares the models properly, and on RAG rows the samples'
        # generation took a fifth of a 30-minute loop's tune (docs/benchmarks.md)
        summary = stage.run(state["stages"]["data"]["data"], model=state["model"], time=seconds, output=run_dir,
                            progress=progress, sample_prompts=0, lora_layers=config.tune_lora_layers,
                            lr=config.tune_lr)  # fmt: skip
    if summary["status"] != "complete":
        raise KeyboardInterrupt  # tune stopped cleanly on Ctrl-C: so does the loop
    return {"run": str(run_dir), "steps": summary["steps"], "eval_loss": [summary.get("eval_loss_start"),
            summary.get("eval_loss_end")]}  # fmt: skip


def export(state: State, seconds: float, config: LearnConfig, progress: bool) -> dict[str, Any]:
    """``nomoat export RUN --quant Q`` for each of ``config.export_quants`` until one passes its parity check."""
    from nomoat.exporting import export as stage

    failures = []
    for quant in config.export_quants:
        try:
            files = stage.run(state["stages"]["tune"]["run"], format="gguf", quant=quant)["files"]
        except UserError as exc:
            if "parity" not in str(exc):
                raise
            failures.append(f"{quant}: {exc}")
            continue
        gguf = next(f for f in files if f["format"] == "gguf")
        return {"gguf": gguf["path"], "quant": quant, "parity": gguf.get("parity"), "failed": failures}
    raise UserError("no GGUF type passed its parity check: " + "; ".join(failures))


def evaluate(state: State, seconds: float, config: LearnConfig, progress: bool) -> dict[str, Any]:
    """``nomoat eval RUN --kb KB`` with eval's share of the time: questions are asked one at a time across the four
    configurations until it is spent (its answers are cached, so a rerun after a kill asks only what it had not)."""
    from nomoat.evaluation import evaluate as stage
    from nomoat.evaluation.scoring import verdict

    run = state["stages"]["tune"]["run"]
    if not state["stages"]["data"]["eval"]:  # eval on training documents would measure memory, not learning
        gain = (
            "gain not measured: the folder has too few documents to hold some out for eval "
            "(`nomoat eval RUN --questions FILE` measures it on your own questions)"
        )
        return {"report": None, "questions": 0, "gain": gain}
    result = stage.run(run, model=state["stages"]["export"]["gguf"], kb=state["kb"], limit=4 * EvalConfig.limit,
                       time_budget=seconds, progress=progress)  # fmt: skip
    ci = result["gains"].get("tuned+RAG vs base+RAG")
    gain = None
    if ci:
        gain = (f"tuned+RAG vs base+RAG: token F1 {ci[0]:+.2f} [{ci[1]:+.2f} to {ci[2]:+.2f}], {verdict(ci)}, "
                f"on {result['questions']} held-out questions")  # fmt: skip
    return {"report": result["report"], "questions": result["questions"], "gain": gain}
