"""Run folders: where a tune run keeps its config, metrics, checkpoint, adapter and manifest.

Layout of ``$NOMOAT_HOME/runs/<run-id>/`` (or the folder given with ``-o``)::

    config.json       the resolved settings, base model hash, dataset hash, planned steps
    metrics.jsonl     one JSON object per step: {"step", "loss", "lr", "tokens", ...} (+ "eval_loss" at evals)
    checkpoint/       adapter + optimizer state (safetensors) and trainer state (JSON): what --resume reads
    adapter/          the LoRA adapter in PEFT's format (adapter_model.safetensors + adapter_config.json)
    manifest.json     kb → dataset → base model hash → adapter → exports → eval, with sha256 of each file
    summary.json      eval loss before/after and answers of the base and tuned model side by side

No pickle anywhere: tensors are safetensors, everything else JSON. A checkpoint is written to
``checkpoint.partial/``, fsynced, then swapped in by rename, so a crash, a full disk or an out-of-memory kill
at any moment leaves the previous checkpoint loadable.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from nomoat.errors import UserError
from nomoat.paths import atomic_write, check_name, fsync, fsync_dir, read_json, runs_dir, write_json

CHECKPOINT = "checkpoint"


@dataclass
class RunState:
    """Where a run stands: what a checkpoint saves (as JSON) and ``--resume`` continues from."""

    step: int = 0
    planned_steps: int | None = None
    """Steps the run will take: fixed by --steps/--epochs, planned (and re-planned) from timings with --time."""
    tokens: int = 0
    """Training tokens seen (all processes)."""
    train_s: float = 0.0
    """Seconds spent in optimizer steps."""
    elapsed_s: float = 0.0
    """Wall time of the run so far, over all its sittings."""
    eval_s: float | None = None
    """Seconds the last eval pass took (what each remaining pass is planned to cost)."""
    eval_loss_start: float | None = None
    eval_loss: float | None = None
    eval_step: int | None = None
    """The step of the last eval loss (a run ending there does not measure again)."""
    eval_rows: int | None = None
    """Eval rows kept after a --time budget cut them (a resumed run measures the same ones)."""
    next_eval: int | None = None
    evals_done: int = -1
    """Eval passes during training; the one before the first step is number 0."""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def new_run_dir(output: str | os.PathLike[str] | None) -> Path:
    """The folder for a new run: ``output`` (must not hold a run yet) or runs/<timestamp>."""
    if output is None:
        path = runs_dir() / time.strftime("%Y%m%d-%H%M%S")
        n = 1
        while path.exists():
            n += 1
            path = runs_dir() / f"{time.strftime('%Y%m%d-%H%M%S')}-{n}"
    else:
        path = Path(output).expanduser()
        if (path / "config.json").exists():
            raise UserError(f"{path} already holds a run: continue it with --resume {path}, or choose another -o")
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_run(run: str | os.PathLike[str]) -> Path:
    """A run folder by path or by name under $NOMOAT_HOME/runs."""
    path = Path(run).expanduser()
    if not (path / "config.json").is_file():
        named = runs_dir() / check_name(str(run), "run name") if "/" not in str(run) else path
        if not (named / "config.json").is_file():
            raise UserError(f"no run at {run} (expected a folder with config.json; see {runs_dir()})")
        path = named
    return path


def update_manifest(run_dir: Path, **fields: Any) -> dict[str, Any]:
    path = run_dir / "manifest.json"
    manifest = read_json(path) if path.exists() else {}
    manifest.update(fields)
    write_json(path, manifest)
    return manifest


def is_complete(run_dir: Path) -> bool:
    """The manifest, written last, says complete: a run killed after its last step but before then still has
    its adapter and summary to write, which ``--resume`` does."""
    path = run_dir / "manifest.json"
    return path.exists() and read_json(path).get("status") == "complete"


# -- metrics -------------------------------------------------------------------------------------
def append_metric(run_dir: Path, record: dict[str, Any]) -> None:
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):  # a line torn by a crash is dropped
            records.append(json.loads(line))
    return records


def truncate_metrics(run_dir: Path, step: int) -> None:
    """Forget records past ``step`` (written after the checkpoint a resume starts from)."""
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    atomic_write(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))


# -- checkpoints ----------------------------------------------------------------------------------
def save_checkpoint(run_dir: Path, tensors: dict[str, Any], state: RunState) -> None:
    """Write tensors (safetensors) and state (JSON) as the run's checkpoint, atomically as a whole."""
    from safetensors.torch import save_file

    def write(folder: Path) -> None:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(folder / "state.safetensors"))
        (folder / "state.json").write_text(json.dumps(asdict(state), indent=2), encoding="utf-8")

    replace_dir(run_dir / CHECKPOINT, write)


def replace_dir(final: Path, write: Callable[[Path], None]) -> None:
    """Fill ``<final>.partial/`` with ``write``, fsync it, then swap it in for ``final`` by renames.

    At every instant either ``final`` or ``<final>.old`` holds a complete earlier version."""
    partial, old = final.with_name(final.name + ".partial"), final.with_name(final.name + ".old")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
        write(partial)
        for file in partial.iterdir():
            fsync(file)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        partial.rename(final)
        fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def load_checkpoint(run_dir: Path) -> tuple[dict[str, Any], RunState] | None:
    """(tensors, state) of the last complete checkpoint, or None. A crash between the two renames of
    :func:`save_checkpoint` leaves only ``checkpoint.old``, which is then the last complete one."""
    from safetensors.torch import load_file

    for folder in (run_dir / CHECKPOINT, run_dir / f"{CHECKPOINT}.old"):
        if (folder / "state.json").is_file() and (folder / "state.safetensors").is_file():
            state = RunState.from_json(read_json(folder / "state.json"))
            return load_file(str(folder / "state.safetensors")), state
    return None


def format_summary(s: dict[str, Any]) -> str:
    """The human-readable end of a run: its ``summary.json``."""
    minutes, seconds = divmod(int(s["seconds"]), 60)
    lines = [
        f"run: {s['run']}",
        f"{s['status']} ({s['stop_reason']}): {s['steps']}/{s['planned_steps'] or '?'} steps, "
        f"{s['tokens']:,} tokens at {s['train_tok_s'] or 0:.0f} tok/s ({s['precision']}), {minutes}m {seconds}s",
    ]
    if s["eval_loss_start"] is not None:
        lines.append(f"eval loss: {s['eval_loss_start']:.4f} -> {s['eval_loss_end']:.4f}")
    lines.append(f"adapter: {s['adapter']}")
    if s["status"] != "complete":
        lines.append(f"continue with: nomoat tune --resume {s['run']}")
    for sample in s["samples"]:
        lines += [f"\nQ: {sample['prompt']}", f"  base:  {sample['base']}", f"  tuned: {sample['tuned']}"]
    return "\n".join(lines)
